#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: iam_openid_connect_provider
short_description: Manage an IAM OpenID Connect identity provider
version_added: 0.1.0
description:
  - Creates, updates (audiences, thumbprints) or deletes the IAM OIDC identity provider of
    an issuer URL, for example GitHub Actions' C(https://token.actions.githubusercontent.com),
    so that a role can trust its tokens (C(sts:AssumeRoleWithWebIdentity)).
  - An account has at most one provider per issuer URL; the provider is found by its URL.
author:
  - canary-chat developers (@canary-chat)
options:
  url:
    description: The issuer URL (C(https://...)); the provider's identity.
    type: str
    required: true
  client_ids:
    description: Audiences (C(aud)) accepted; the whole list is set.
    type: list
    elements: str
    default: [sts.amazonaws.com]
  thumbprints:
    description:
      - SHA-1 thumbprints of the issuer's certificate. For issuers whose certificate AWS checks
        against its own trusted CAs (GitHub among them) the thumbprint is kept but not used.
      - The whole list is set when given; an empty list leaves an existing provider's alone.
    type: list
    elements: str
    default: []
  state:
    description: Whether the provider exists.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: GitHub Actions may request AWS credentials
  canarychat.platform.iam_openid_connect_provider:
    url: https://token.actions.githubusercontent.com
    client_ids: [sts.amazonaws.com]
"""

RETURN = r"""
arn:
  description: ARN of the provider (empty when absent).
  returned: always
  type: str
  sample: arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com
client_ids:
  description: The provider's audiences after the run.
  returned: when present
  type: list
  elements: str
thumbprints:
  description: The provider's thumbprints after the run.
  returned: when present
  type: list
  elements: str
"""

try:
    import botocore
except ImportError:
    pass  # handled by AnsibleAWSModule

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry


def host_path(url):
    """The provider's identity as IAM stores it: the URL without its scheme or a final /."""
    return url.split("://", 1)[-1].rstrip("/")


def find(client, url):
    """(arn, description) of the provider of `url`, or (None, None)."""
    want = host_path(url)
    for p in client.list_open_id_connect_providers(aws_retry=True)["OpenIDConnectProviderList"]:
        arn = p["Arn"]
        if arn.split(":oidc-provider/", 1)[-1] == want:
            return arn, client.get_open_id_connect_provider(
                OpenIDConnectProviderArn=arn, aws_retry=True)
    return None, None


def main():
    module = AnsibleAWSModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            client_ids=dict(type="list", elements="str", default=["sts.amazonaws.com"]),
            thumbprints=dict(type="list", elements="str", default=[], no_log=False),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    client = module.client("iam", retry_decorator=AWSRetry.jittered_backoff())
    try:
        arn, have = find(client, p["url"])
        if p["state"] == "absent":
            if arn is None:
                module.exit_json(changed=False, arn="")
            if not module.check_mode:
                client.delete_open_id_connect_provider(OpenIDConnectProviderArn=arn,
                                                       aws_retry=True)
            module.exit_json(changed=True, arn="", diff={"before": {"arn": arn}, "after": {}})

        want_ids = sorted(set(p["client_ids"]))
        if arn is None:
            after = {"url": p["url"], "client_ids": want_ids, "thumbprints": p["thumbprints"]}
            if not module.check_mode:
                kwargs = dict(Url=p["url"], ClientIDList=want_ids)
                if p["thumbprints"]:
                    kwargs["ThumbprintList"] = p["thumbprints"]
                arn = client.create_open_id_connect_provider(
                    aws_retry=True, **kwargs)["OpenIDConnectProviderArn"]
            module.exit_json(changed=True, arn=arn or "", client_ids=want_ids,
                             thumbprints=p["thumbprints"], diff={"before": {}, "after": after})

        have_ids = sorted(have.get("ClientIDList") or [])
        have_prints = list(have.get("ThumbprintList") or [])
        want_prints = p["thumbprints"] or have_prints
        changed = False
        if want_ids != have_ids:
            changed = True
            if not module.check_mode:
                for cid in set(want_ids) - set(have_ids):
                    client.add_client_id_to_open_id_connect_provider(
                        OpenIDConnectProviderArn=arn, ClientID=cid, aws_retry=True)
                for cid in set(have_ids) - set(want_ids):
                    client.remove_client_id_from_open_id_connect_provider(
                        OpenIDConnectProviderArn=arn, ClientID=cid, aws_retry=True)
        if sorted(want_prints) != sorted(have_prints):
            changed = True
            if not module.check_mode:
                client.update_open_id_connect_provider_thumbprint(
                    OpenIDConnectProviderArn=arn, ThumbprintList=want_prints, aws_retry=True)
        diff = {"before": {"client_ids": have_ids, "thumbprints": have_prints},
                "after": {"client_ids": want_ids, "thumbprints": want_prints}}
        module.exit_json(changed=changed, arn=arn, client_ids=want_ids, thumbprints=want_prints,
                         diff=diff)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg="Could not manage the OpenID Connect provider")


if __name__ == "__main__":
    main()

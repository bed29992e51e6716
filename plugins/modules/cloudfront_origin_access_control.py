#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cloudfront_origin_access_control
short_description: Manage a CloudFront origin access control (OAC)
version_added: 0.1.0
description:
  - Create, update or delete a CloudFront origin access control, found by its name.
  - An OAC lets CloudFront sign its requests to a private S3 bucket, whose policy then
    admits only that distribution (the successor of origin access identities).
author:
  - canary-chat developers (@canary-chat)
options:
  name:
    description: Name of the origin access control (unique in the account).
    type: str
    required: true
  state:
    description: Whether the origin access control should exist.
    type: str
    choices: [present, absent]
    default: present
  description:
    description: Its description.
    type: str
    default: ""
  origin_type:
    description: Kind of origin it signs for.
    type: str
    choices: [s3, mediastore, lambda, mediapackagev2]
    default: s3
  signing_behavior:
    description: When CloudFront signs origin requests.
    type: str
    choices: [always, never, no-override]
    default: always
  signing_protocol:
    description: Signing protocol.
    type: str
    choices: [sigv4]
    default: sigv4
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - Supports check mode and diff mode.
  - CloudFront refuses to delete an OAC that a distribution still uses.
"""

EXAMPLES = r"""
- name: OAC for the site bucket
  canarychat.platform.cloudfront_origin_access_control:
    name: canary-chat-site
    description: CloudFront to the canary-chat site bucket
  register: oac

- name: Remove it (after the distribution)
  canarychat.platform.cloudfront_origin_access_control:
    name: canary-chat-site
    state: absent
"""

RETURN = r"""
id:
  description: ID of the origin access control, for an origin's C(origin_access_control_id).
  returned: when state=present
  type: str
  sample: E2QWRUHAPOMQZL
origin_access_control:
  description: Its configuration (snake_case).
  returned: when state=present
  type: dict
"""

try:
    import botocore
except ImportError:
    pass  # handled by AnsibleAWSModule

from ansible.module_utils.common.dict_transformations import camel_dict_to_snake_dict
from ansible_collections.amazon.aws.plugins.module_utils.botocore import is_boto3_error_code
from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry


def build_config(params):
    """OriginAccessControlConfig for the module's options."""
    return {
        "Name": params["name"],
        "Description": params.get("description") or "",
        "SigningProtocol": params.get("signing_protocol") or "sigv4",
        "SigningBehavior": params.get("signing_behavior") or "always",
        "OriginAccessControlOriginType": params.get("origin_type") or "s3",
    }


def config_differs(want, have):
    """Whether the stored config differs from the wanted one (missing Description = "")."""
    for key, value in want.items():
        if (have.get(key) or "") != (value or ""):
            return True
    return False


def find_by_name(client, name):
    """The summary of the OAC with that name, or None."""
    marker = None
    while True:
        kwargs: dict = {"Marker": marker} if marker else {}
        page = client.list_origin_access_controls(aws_retry=True, **kwargs)[
            "OriginAccessControlList"
        ]
        for item in page.get("Items") or []:
            if item.get("Name") == name:
                return item
        marker = page.get("NextMarker")
        if not page.get("IsTruncated") or not marker:
            return None


def get_config(client, oac_id):
    resp = client.get_origin_access_control(Id=oac_id, aws_retry=True)
    return resp["OriginAccessControl"]["OriginAccessControlConfig"], resp["ETag"]


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        description=dict(type="str", default=""),
        origin_type=dict(
            type="str", choices=["s3", "mediastore", "lambda", "mediapackagev2"], default="s3"
        ),
        signing_behavior=dict(
            type="str", choices=["always", "never", "no-override"], default="always"
        ),
        signing_protocol=dict(type="str", choices=["sigv4"], default="sigv4"),
    )
    module = AnsibleAWSModule(argument_spec=argument_spec, supports_check_mode=True)
    name = module.params["name"]
    client = module.client("cloudfront", retry_decorator=AWSRetry.jittered_backoff())
    try:
        found = find_by_name(client, name)
        if module.params["state"] == "absent":
            if found is None:
                module.exit_json(changed=False)
            have, etag = get_config(client, found["Id"])
            if not module.check_mode:
                try:
                    client.delete_origin_access_control(
                        Id=found["Id"], IfMatch=etag, aws_retry=True
                    )
                except is_boto3_error_code("NoSuchOriginAccessControl"):
                    pass
            module.exit_json(changed=True, diff={"before": have, "after": {}})

        want = build_config(module.params)
        if found is None:
            if module.check_mode:
                module.exit_json(changed=True, diff={"before": {}, "after": want})
            created = client.create_origin_access_control(
                OriginAccessControlConfig=want, aws_retry=True
            )
            oac = created["OriginAccessControl"]
            module.exit_json(
                changed=True,
                diff={"before": {}, "after": want},
                id=oac["Id"],
                origin_access_control=camel_dict_to_snake_dict(oac["OriginAccessControlConfig"]),
            )

        have, etag = get_config(client, found["Id"])
        if not config_differs(want, have):
            module.exit_json(
                changed=False, id=found["Id"], origin_access_control=camel_dict_to_snake_dict(have)
            )
        diff = {"before": have, "after": want}
        if not module.check_mode:
            client.update_origin_access_control(
                Id=found["Id"], IfMatch=etag, OriginAccessControlConfig=want, aws_retry=True
            )
        module.exit_json(
            changed=True,
            diff=diff,
            id=found["Id"],
            origin_access_control=camel_dict_to_snake_dict(want),
        )
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg=f"CloudFront origin access control call failed for {name}")


if __name__ == "__main__":
    main()

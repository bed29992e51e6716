#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ec2_managed_prefix_list_info
short_description: Look up EC2 managed prefix lists by name
version_added: 0.1.0
description:
  - Find managed prefix lists (AWS-managed ones such as
    C(com.amazonaws.global.cloudfront.origin-facing), or your own) by name, to use their
    ID in a security group rule's C(ip_prefix).
  - Read only; amazon.aws has no module for DescribeManagedPrefixLists.
author:
  - canary-chat developers (@canary-chat)
options:
  names:
    description: Prefix list names to look up; all lists when empty.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - Supports check mode (it changes nothing).
"""

EXAMPLES = r"""
- name: CloudFront's origin-facing addresses
  canarychat.platform.ec2_managed_prefix_list_info:
    names: [com.amazonaws.global.cloudfront.origin-facing]
  register: cloudfront_pl

- name: Admit only CloudFront on port 80
  amazon.aws.ec2_security_group:
    name: alb
    description: ALB
    rules:
      - proto: tcp
        ports: [80]
        ip_prefix: "{{ cloudfront_pl.prefix_lists[0].prefix_list_id }}"
"""

RETURN = r"""
prefix_lists:
  description: The prefix lists found (snake_case), in the order of O(names) when given.
  returned: always
  type: list
  elements: dict
  contains:
    prefix_list_id:
      description: ID, for C(ip_prefix).
      type: str
      sample: pl-22a6434b
    prefix_list_name:
      description: Name.
      type: str
      sample: com.amazonaws.global.cloudfront.origin-facing
    max_entries:
      description: Its weight against the security group rules quota.
      type: int
      sample: 55
"""

try:
    import botocore
except ImportError:
    pass  # handled by AnsibleAWSModule

from ansible.module_utils.common.dict_transformations import camel_dict_to_snake_dict
from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry


def order_by_names(prefix_lists, names):
    """The prefix lists in the order of names (all, unordered, when names is empty)."""
    if not names:
        return list(prefix_lists)
    by_name = {pl.get("PrefixListName"): pl for pl in prefix_lists}
    return [by_name[n] for n in names if n in by_name]


def main():
    module = AnsibleAWSModule(
        argument_spec=dict(names=dict(type="list", elements="str", default=[])),
        supports_check_mode=True,
    )
    names = module.params["names"]
    client = module.client("ec2", retry_decorator=AWSRetry.jittered_backoff())
    kwargs: dict = {}
    if names:
        kwargs["Filters"] = [{"Name": "prefix-list-name", "Values": names}]
    try:
        found = []
        token = None
        while True:
            page = client.describe_managed_prefix_lists(
                aws_retry=True, **kwargs, **({"NextToken": token} if token else {})
            )
            found.extend(page.get("PrefixLists", []))
            token = page.get("NextToken")
            if not token:
                break
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg="Could not describe managed prefix lists")
    ordered = order_by_names(found, names)
    module.exit_json(
        changed=False,
        prefix_lists=[camel_dict_to_snake_dict(pl, ignore_list=["Tags"]) for pl in ordered],
    )


if __name__ == "__main__":
    main()

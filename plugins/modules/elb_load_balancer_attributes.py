#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: elb_load_balancer_attributes
short_description: Set attributes of an Application/Network Load Balancer by key
version_added: 0.1.0
description:
  - Sets the given attributes (for example C(idle_timeout.timeout_seconds),
    C(access_logs.s3.enabled)) of an elbv2 load balancer, comparing only those keys.
  - C(amazon.aws.elb_application_lb) compares a fixed set of attributes and expects every
    one of them in DescribeLoadBalancerAttributes; this module treats a key that is not
    listed as unset, so it also works against API emulators that list only what was set.
author:
  - canary-chat developers (@canary-chat)
options:
  name:
    description: Name of the load balancer. One of O(name) or O(load_balancer_arn).
    type: str
  load_balancer_arn:
    description: ARN of the load balancer.
    type: str
  attributes:
    description: Attribute keys and their values (values are compared as strings).
    type: dict
    required: true
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: Long idle timeout for WebSockets, access logs on
  canarychat.platform.elb_load_balancer_attributes:
    name: canary-chat
    attributes:
      idle_timeout.timeout_seconds: 300
      access_logs.s3.enabled: true
      access_logs.s3.bucket: canary-chat-alb-logs-123456789012
      access_logs.s3.prefix: alb
"""

RETURN = r"""
attributes:
  description: The load balancer's attributes after the run (key to value).
  returned: always
  type: dict
  sample: {"idle_timeout.timeout_seconds": "300"}
load_balancer_arn:
  description: ARN of the load balancer.
  returned: always
  type: str
"""

try:
    import botocore
except ImportError:
    pass  # handled by AnsibleAWSModule

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry


def as_attribute_value(value):
    """The API's string form: booleans lowercase, everything else str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def attributes_to_change(want, have):
    """[{Key, Value}] for the wanted keys whose value differs (a missing key differs)."""
    changes = []
    for key in sorted(want):
        value = as_attribute_value(want[key])
        if have.get(key) != value:
            changes.append({"Key": key, "Value": value})
    return changes


def main():
    module = AnsibleAWSModule(
        argument_spec=dict(
            name=dict(type="str"),
            load_balancer_arn=dict(type="str"),
            attributes=dict(type="dict", required=True),
        ),
        required_one_of=[("name", "load_balancer_arn")],
        mutually_exclusive=[("name", "load_balancer_arn")],
        supports_check_mode=True,
    )
    client = module.client("elbv2", retry_decorator=AWSRetry.jittered_backoff())
    try:
        arn = module.params["load_balancer_arn"]
        if not arn:
            lbs = client.describe_load_balancers(Names=[module.params["name"]], aws_retry=True)
            arn = lbs["LoadBalancers"][0]["LoadBalancerArn"]
        current = client.describe_load_balancer_attributes(LoadBalancerArn=arn, aws_retry=True)
        have = {a["Key"]: a["Value"] for a in current["Attributes"]}
        changes = attributes_to_change(module.params["attributes"], have)
        if not changes:
            module.exit_json(changed=False, attributes=have, load_balancer_arn=arn)
        after = dict(have)
        after.update({c["Key"]: c["Value"] for c in changes})
        before = {c["Key"]: have.get(c["Key"]) for c in changes}
        diff = {"before": before, "after": {c["Key"]: c["Value"] for c in changes}}
        if not module.check_mode:
            client.modify_load_balancer_attributes(
                LoadBalancerArn=arn, Attributes=changes, aws_retry=True
            )
        module.exit_json(changed=True, diff=diff, attributes=after, load_balancer_arn=arn)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg="Could not set the load balancer's attributes")


if __name__ == "__main__":
    main()

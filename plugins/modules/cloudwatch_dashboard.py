#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cloudwatch_dashboard
short_description: Manage a CloudWatch dashboard
version_added: 0.1.0
description:
  - Create, replace or delete a CloudWatch dashboard from its JSON body.
  - The body is compared as data (key order and whitespace do not matter), so an unchanged
    dashboard reports no change.
author:
  - canary-chat developers (@canary-chat)
options:
  name:
    description: Dashboard name.
    type: str
    required: true
  state:
    description: Whether the dashboard should exist.
    type: str
    choices: [present, absent]
    default: present
  body:
    description:
      - The dashboard body (a dict with C(widgets), or its JSON text).
      - Required when O(state=present).
    type: raw
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: One widget showing the ALB's requests
  canarychat.platform.cloudwatch_dashboard:
    name: canary-chat
    body:
      widgets:
        - type: metric
          x: 0
          y: 0
          width: 12
          height: 6
          properties:
            region: ap-northeast-2
            title: Requests
            metrics:
              - [AWS/ApplicationELB, RequestCount, LoadBalancer, app/canary-chat/0123456789abcdef]

- name: Remove it
  canarychat.platform.cloudwatch_dashboard:
    name: canary-chat
    state: absent
"""

RETURN = r"""
dashboard_arn:
  description: ARN of the dashboard.
  returned: when state=present
  type: str
  sample: arn:aws:cloudwatch::123456789012:dashboard/canary-chat
body:
  description: The dashboard body as stored.
  returned: when state=present
  type: dict
"""

import json

try:
    import botocore
except ImportError:
    pass  # handled by AnsibleAWSModule

from ansible_collections.amazon.aws.plugins.module_utils.botocore import is_boto3_error_code
from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry


def normalize_body(body):
    """The body as a dict, from a dict or its JSON text."""
    if body is None:
        return None
    if isinstance(body, (str, bytes)):
        return json.loads(body)
    if isinstance(body, dict):
        # round-trip so Ansible's lazy/templated types compare as plain data
        return json.loads(json.dumps(body))
    raise ValueError("body must be a dict or a JSON string")


def body_differs(want, have):
    """Whether two bodies differ as data."""
    return normalize_body(want) != normalize_body(have)


def get_dashboard(client, name):
    try:
        dash = client.get_dashboard(DashboardName=name, aws_retry=True)
    except is_boto3_error_code("ResourceNotFound"):
        return None
    return dash


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        body=dict(type="raw"),
    )
    module = AnsibleAWSModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("state", "present", ["body"])],
    )
    name = module.params["name"]
    client = module.client("cloudwatch", retry_decorator=AWSRetry.jittered_backoff())
    try:
        existing = get_dashboard(client, name)
        have = normalize_body(existing["DashboardBody"]) if existing else None
        if module.params["state"] == "absent":
            if existing is None:
                module.exit_json(changed=False)
            if not module.check_mode:
                client.delete_dashboards(DashboardNames=[name], aws_retry=True)
            module.exit_json(changed=True, diff={"before": have, "after": {}})

        try:
            want = normalize_body(module.params["body"])
        except ValueError as e:
            module.fail_json(msg=str(e))
        if have is not None and not body_differs(want, have):
            module.exit_json(changed=False, dashboard_arn=existing["DashboardArn"], body=have)
        diff = {"before": have or {}, "after": want}
        if module.check_mode:
            module.exit_json(changed=True, diff=diff, body=want)
        resp = client.put_dashboard(
            DashboardName=name, DashboardBody=json.dumps(want), aws_retry=True
        )
        problems = resp.get("DashboardValidationMessages") or []
        if problems:
            module.warn(f"CloudWatch reported problems with dashboard {name}: {problems}")
        stored = get_dashboard(client, name)
        module.exit_json(
            changed=True,
            diff=diff,
            dashboard_arn=stored["DashboardArn"] if stored else None,
            body=want,
        )
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg=f"CloudWatch dashboard call failed for {name}")


if __name__ == "__main__":
    main()

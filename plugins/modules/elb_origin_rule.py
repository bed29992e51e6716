#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: elb_origin_rule
short_description: An ALB listener that forwards only requests carrying a secret origin header
version_added: 0.1.0
description:
  - Makes the listener on O(listener_port) of an Application Load Balancer forward, with
    weights, only the requests whose header O(header_name) matches one of O(header_values)
    (a listener rule with an C(http-header) condition), and answer everything else with a
    fixed response (403 by default) as its default action.
  - The weighted forward lives in the rule. Its weights are written only when the rule is
    created (O(target_groups) weights, or, when the listener's default action already is a
    forward over the same target groups, that action's current weights, which migrates a
    listener that forwarded by default). An existing rule's actions are never touched; the
    weights belong to C(canarychat.platform.traffic_shift).
  - The rule is the listener rule whose forward action lists exactly the target groups of
    O(target_groups). Its condition is compared and modified when it differs.
  - A missing listener is created with the fixed-response default and the rule.
author:
  - canary-chat developers (@canary-chat)
options:
  load_balancer_name:
    description: Name of the Application Load Balancer.
    type: str
    required: true
  listener_port:
    description: Port of the listener.
    type: int
    default: 80
  protocol:
    description: Protocol of the listener when it is created.
    type: str
    default: HTTP
    choices: [HTTP, HTTPS]
  header_name:
    description:
      - The HTTP header the rule checks (at most 40 characters; wildcards are not allowed).
    type: str
    required: true
  header_values:
    description:
      - Accepted values of the header (each at most 128 characters; the ALB compares them
        case-insensitively and treats C(*) and C(?) as wildcards, so use letters and digits).
      - More than one value lets a rotated secret and its predecessor both pass while the
        distribution is being updated.
    type: list
    elements: str
    required: true
  priority:
    description: Priority of the rule when it is created.
    type: int
    default: 10
  target_groups:
    description:
      - The target groups of the weighted forward and their weights at creation.
    type: list
    elements: dict
    required: true
    suboptions:
      target_group_arn:
        description: ARN of the target group.
        type: str
        required: true
      weight:
        description: Weight at creation (0-999).
        type: int
        required: true
  deny_default:
    description:
      - Make the listener's default action the fixed response when it is something else.
      - V(false) leaves an existing default action as it is (for example while a CloudFront
        distribution does not send the header yet); a listener created by this module
        always gets the fixed response.
    type: bool
    default: true
  deny_status_code:
    description: Status code of the fixed response.
    type: str
    default: "403"
  deny_message:
    description: Body of the fixed response (text/plain).
    type: str
    default: Forbidden
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - Supports check mode and diff mode. The header values never appear in the diff.
"""

EXAMPLES = r"""
- name: Only requests with the distribution's secret header reach the chat
  canarychat.platform.elb_origin_rule:
    load_balancer_name: canary-chat
    header_name: X-Origin-Verify
    header_values: ["{{ origin_secret }}"]
    target_groups:
      - {target_group_arn: "{{ blue_arn }}", weight: 90}
      - {target_group_arn: "{{ green_arn }}", weight: 10}
"""

RETURN = r"""
listener_arn:
  description: ARN of the listener (absent in check mode when it would be created).
  returned: when the listener exists
  type: str
rule_arn:
  description: ARN of the weighted rule (absent in check mode when it would be created).
  returned: when the rule exists
  type: str
weights:
  description: Target group ARN to weight, as the rule forwards after the run.
  returned: always
  type: dict
actions:
  description: What the run did (or would do in check mode).
  returned: always
  type: list
  elements: str
  sample: ["create rule (weights of the listener's default action)", "deny by default"]
"""

try:
    import botocore
except ImportError:
    pass  # handled by AnsibleAWSModule

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.elbv2 import (
    weighted_rule,
)


def forward_weights(action):
    """{target group ARN: weight} of a forward action, or None for another action."""
    if not action or action.get("Type") != "forward":
        return None
    groups = (action.get("ForwardConfig") or {}).get("TargetGroups")
    if groups:
        return {g["TargetGroupArn"]: int(g.get("Weight", 1)) for g in groups}
    if action.get("TargetGroupArn"):
        return {action["TargetGroupArn"]: 1}
    return None


def find_weighted_rule(rules, arns):
    """The non-default rule whose forward action lists the given target groups: found as
    traffic_shift's driver finds the rule whose weights it moves (one definition for both)."""
    return weighted_rule(rules, {arn: arn for arn in arns})


def header_condition(name, values):
    return {"Field": "http-header",
            "HttpHeaderConfig": {"HttpHeaderName": name, "Values": list(values)}}


def condition_matches(rule, name, values):
    """True when the rule's only condition is the header with exactly these values."""
    conditions = rule.get("Conditions") or []
    if len(conditions) != 1 or conditions[0].get("Field") != "http-header":
        return False
    cfg = conditions[0].get("HttpHeaderConfig") or {}
    return (str(cfg.get("HttpHeaderName", "")).lower() == name.lower()
            and sorted(cfg.get("Values") or []) == sorted(values))


def deny_action(status, message):
    return {"Type": "fixed-response",
            "FixedResponseConfig": {"StatusCode": str(status), "ContentType": "text/plain",
                                    "MessageBody": message}}


def is_deny(actions, status):
    return (len(actions or []) == 1 and actions[0].get("Type") == "fixed-response"
            and str((actions[0].get("FixedResponseConfig") or {}).get("StatusCode")) == str(status))


def forward_action(weights, stickiness=None):
    cfg = {"TargetGroups": [{"TargetGroupArn": arn, "Weight": w} for arn, w in weights.items()]}
    if stickiness:
        cfg["TargetGroupStickinessConfig"] = stickiness
    return {"Type": "forward", "ForwardConfig": cfg}


def plan(listener, rules, params):
    """What to do: a list of (step, detail) and the weights the rule has afterwards.

    listener: the DescribeListeners entry on the port, or None. rules: its DescribeRules.
    """
    initial = {tg["target_group_arn"]: int(tg["weight"]) for tg in params["target_groups"]}
    name, values = params["header_name"], params["header_values"]
    steps: list = []
    if listener is None:
        steps.append(("create listener", None))
        steps.append(("create rule", {"weights": initial, "stickiness": None,
                                      "source": "initial weights"}))
        return steps, initial
    rule = find_weighted_rule(rules, initial)
    default = listener.get("DefaultActions") or []
    if rule is None:
        migrated = forward_weights(default[0]) if len(default) == 1 else None
        if migrated is not None and set(migrated) == set(initial):
            stickiness = (default[0].get("ForwardConfig") or {}).get("TargetGroupStickinessConfig")
            steps.append(("create rule", {"weights": migrated, "stickiness": stickiness,
                                          "source": "weights of the listener's default action"}))
            weights = migrated
        else:
            steps.append(("create rule", {"weights": initial, "stickiness": None,
                                          "source": "initial weights"}))
            weights = initial
    else:
        weights = next(w for w in (forward_weights(a) for a in rule.get("Actions") or [])
                       if w is not None)
        if not condition_matches(rule, name, values):
            steps.append(("modify condition", {"rule": rule}))
    if params["deny_default"] and not is_deny(default, params["deny_status_code"]):
        steps.append(("deny by default", None))
    return steps, weights


def main():
    module = AnsibleAWSModule(
        argument_spec=dict(
            load_balancer_name=dict(type="str", required=True),
            listener_port=dict(type="int", default=80),
            protocol=dict(type="str", default="HTTP", choices=["HTTP", "HTTPS"]),
            header_name=dict(type="str", required=True),
            header_values=dict(type="list", elements="str", required=True, no_log=True),
            priority=dict(type="int", default=10),
            target_groups=dict(
                type="list", elements="dict", required=True,
                options=dict(target_group_arn=dict(type="str", required=True),
                             weight=dict(type="int", required=True)),
            ),
            deny_default=dict(type="bool", default=True),
            deny_status_code=dict(type="str", default="403"),
            deny_message=dict(type="str", default="Forbidden"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not params["header_values"] or any(not v for v in params["header_values"]):
        module.fail_json(msg="header_values must hold at least one non-empty value")
    client = module.client("elbv2", retry_decorator=AWSRetry.jittered_backoff())
    deny = deny_action(params["deny_status_code"], params["deny_message"])
    condition = header_condition(params["header_name"], params["header_values"])
    try:
        lbs = client.describe_load_balancers(Names=[params["load_balancer_name"]], aws_retry=True)
        lb_arn = lbs["LoadBalancers"][0]["LoadBalancerArn"]
        listeners = client.describe_listeners(LoadBalancerArn=lb_arn, aws_retry=True)["Listeners"]
        listener = next((li for li in listeners if li["Port"] == params["listener_port"]), None)
        rules = []
        if listener is not None:
            rules = client.describe_rules(
                ListenerArn=listener["ListenerArn"], aws_retry=True)["Rules"]
        steps, weights = plan(listener, rules, params)
        actions = []
        listener_arn = listener["ListenerArn"] if listener else None
        rule = find_weighted_rule(rules, {tg["target_group_arn"] for tg in params["target_groups"]})
        rule_arn = rule["RuleArn"] if rule else None
        before = {"listener": bool(listener),
                  "default_action": (listener or {}).get("DefaultActions", [{}])[0].get("Type"),
                  "rule": bool(rule),
                  "condition_values": len(((rule or {}).get("Conditions") or [{}])[0]
                                          .get("HttpHeaderConfig", {}).get("Values") or [])}
        for step, detail in steps:
            if step == "create listener":
                actions.append("create listener (fixed response by default)")
                if not module.check_mode:
                    listener_arn = client.create_listener(
                        LoadBalancerArn=lb_arn, Protocol=params["protocol"],
                        Port=params["listener_port"], DefaultActions=[deny],
                        aws_retry=True)["Listeners"][0]["ListenerArn"]
            elif step == "create rule":
                actions.append(f"create rule ({detail['source']})")
                if not module.check_mode:
                    rule_arn = client.create_rule(
                        ListenerArn=listener_arn, Priority=params["priority"],
                        Conditions=[condition],
                        Actions=[forward_action(detail["weights"], detail["stickiness"])],
                        aws_retry=True)["Rules"][0]["RuleArn"]
            elif step == "modify condition":
                actions.append("modify the rule's header condition")
                if not module.check_mode:
                    client.modify_rule(RuleArn=rule_arn, Conditions=[condition], aws_retry=True)
            elif step == "deny by default":
                actions.append("deny by default")
                if not module.check_mode:
                    client.modify_listener(ListenerArn=listener_arn, DefaultActions=[deny],
                                           aws_retry=True)
        after = {"listener": True, "default_action": "fixed-response"
                 if params["deny_default"] or not listener else before["default_action"],
                 "rule": True, "condition_values": len(params["header_values"])}
        out = dict(changed=bool(steps), actions=actions, weights=weights)
        if listener_arn:
            out["listener_arn"] = listener_arn
        if rule_arn:
            out["rule_arn"] = rule_arn
        if steps:
            out["diff"] = {"before": before, "after": after}
        module.exit_json(**out)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg="Could not set the listener's origin rule")


if __name__ == "__main__":
    main()

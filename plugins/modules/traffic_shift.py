#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: traffic_shift
short_description: Shift traffic between blue and green in one health-gated canary step
version_added: 0.1.0
description:
  - Moves the share of new connections between the two colors of a blue/green deployment,
    gated on the health of the color that gets the traffic.
  - "A step: (1) pre-check that the color gaining traffic has at least O(min_healthy) healthy
    targets; (2) apply the weights; (3) read them back until they match (O(verify));
    (4) bake for O(bake_seconds), reading the gates every O(poll_interval) seconds (at least
    once, right after the weights are applied), then check that the watched color reported
    at least O(min_sends) sends during the bake (gate C(sends)); (5) on a breach send
    everyone to blue (O(on_breach), O(auto_rollback)) and fail with a message naming the
    gate, its threshold and the measured value."
  - "Gates watch the color gaining traffic (green in the canary's progression; the watched
    color is green while it gets traffic when no color gains): its error rate and p95
    latency, its healthy targets, its sends, and on AWS its ALB 5xx and the named
    CloudWatch alarms. A rate or percentile without data (no sends yet) is recorded as a
    reading with no value: it neither passes nor breaches; but no data at the end of the
    bake is not a pass: fewer than O(min_sends) sends is a breach (\"insufficient data\")
    unless O(allow_idle)."
  - Two drivers share one gating core. V(haproxy) changes the weights of two servers of one
    HAProxy backend through its runtime API, and reads the chat's C(/metrics) and HAProxy's
    per-server counters. V(elbv2) changes the weights of an ALB listener's weighted
    forward (in the listener rule that forwards to both target groups if there is one,
    else in the default action; keeping everything else of the action), and reads
    DescribeTargetHealth, CloudWatch GetMetricData and DescribeAlarms.
  - The module is built on amazon.aws's AnsibleAWSModule for both drivers, so that one
    argument spec accepts the standard AWS connection options; C(module_defaults) for
    C(group/canarychat.platform.aws) reach it (meta/runtime.yml extends that group with
    amazon.aws's and community.aws's modules), C(group/aws) does not. The V(haproxy) driver
    never creates an AWS client.
  - O(rollback=true) moves the weights at once, with neither pre-check nor bake, because
    a failing gate must never block a rollback.
author:
  - canary-chat developers (@canary-chat)
options:
  driver:
    description: Which load balancer holds the weights.
    type: str
    required: true
    choices: [haproxy, elbv2]
  weight:
    description:
      - Green's share of new connections, in percent. Blue gets the rest.
      - The load balancer's weights are set to V(100 - weight) for blue and O(weight)
        for green.
    type: int
    required: true
  min_healthy:
    description:
      - Gate C(healthy). The color gaining traffic must have at least this many healthy
        targets before the step (pre-check), and the watched color during the bake.
      - With the V(haproxy) driver each color is one server, so a color has 0 or 1.
    type: int
    default: 1
  max_error_rate:
    description:
      - Gate C(error_rate). Highest share of failed sends of the watched color, 0-1.
      - "V(elbv2) (source C(canarychat)): Sum of C(SendErrors) / Sum of C(Sends) of
        CloudWatch namespace C(CanaryChat), dimension C(Color), over the datapoints (of
        O(chat_period) seconds) whose period starts at or after the moment the weights
        were applied."
      - "From O(metrics_urls) (both drivers, source C(metrics)): (increase of
        C(chat_sends_total{outcome=error}) + increase of
        C(chat_http_requests_total{status=5xx})) / (increase of all sends + all requests)
        since the step began."
      - "V(haproxy) also: the share of 5xx among the server's HTTP responses in HAProxy's
        C(show stat), over the same time."
    type: float
    default: 0.05
  max_p95_ms:
    description:
      - Gate C(p95_ms). Highest 95th percentile ack latency of the watched color, in
        milliseconds.
      - V(elbv2) (source C(canarychat)) reads the C(p95) statistic of C(CanaryChat)
        C(AckLatency) per O(chat_period) since the weights were applied, and gates on the
        worst period.
      - From O(metrics_urls) (both drivers), computed from the increase of the
        C(chat_ack_latency_seconds) histogram buckets since the step began.
    type: float
    default: 500
  max_alb_5xx:
    description:
      - "V(elbv2) only. Gate C(alb_5xx). Highest count of 5xx answers, during the bake, of
        C(HTTPCode_Target_5XX_Count) of the watched color's target group plus
        C(HTTPCode_ELB_5XX_Count) of the load balancer (LoadBalancer dimension only: the
        ALB does not attribute its own 5xx, e.g. a 502 from a crashing target, to a target
        group)."
      - Read per minute (ALB's period), only the minutes that start at or after the moment
        the weights were applied; ALB reports these metrics only when they are non-zero, so
        a minute without a datapoint counts 0. A bake shorter than two minutes may see no
        whole minute at all.
    type: int
    default: 0
  min_sends:
    description:
      - Gate C(sends), read once at the end of the bake. The watched color must have
        reported at least this many sends during the bake; fewer is a breach with
        \"insufficient data\" (no data is not a pass), unless O(allow_idle).
      - V(elbv2) (source C(canarychat)) sums C(CanaryChat) C(Sends) of the color over
        the datapoints since the weights were applied. V(haproxy) (source C(metrics))
        takes the increase of the color's C(chat_sends_total) on its O(metrics_urls)
        since the step began; a color without a reachable C(/metrics) counts no sends.
      - V(0) turns the gate off.
    type: int
    default: 20
  allow_idle:
    description:
      - Accept a bake with fewer than O(min_sends) sends (an empty rehearsal, nobody
        chatting); the C(sends) reading is recorded, not judged.
    type: bool
    default: false
  on_breach:
    description:
      - Where the weights go on a breach (with O(auto_rollback)), at once.
      - V(blue) sends everyone to blue (blue 100 / green 0), the design's rollback; the
        release that just failed keeps no share of new users.
      - V(previous) restores the weights that were in place before the step.
    type: str
    choices: [blue, previous]
    default: blue
  alarm_names:
    description:
      - V(elbv2) only. CloudWatch alarms that must not be in state C(ALARM) during the
        bake (gate C(alarm)). They must exist.
    type: list
    elements: str
    default: []
  bake_seconds:
    description:
      - How long to watch the gates after the weights are applied. V(0) reads every gate
        once.
    type: int
    default: 0
  poll_interval:
    description: Seconds between two readings of the gates during the bake.
    type: float
    default: 5
  auto_rollback:
    description: On a breach, move the weights as O(on_breach) says.
    type: bool
    default: true
  verify:
    description: Read the weights back from the load balancer until they match.
    type: bool
    default: true
  verify_timeout:
    description: Seconds to wait for the weights to read back before failing.
    type: float
    default: 30
  rollback:
    description:
      - Move the weights without pre-check and without bake (the gates are not read).
        Used by C(rollback.yml), where a failing gate must never block the rollback.
    type: bool
    default: false
  haproxy_socket:
    description:
      - V(haproxy) only. HAProxy's runtime API, a UNIX socket path or C(host:port). Needs
        C(level admin).
    type: str
  backend:
    description: V(haproxy) only. The backend holding the blue and green servers.
    type: str
    default: chat
  blue_server:
    description: V(haproxy) only. Name of blue's server in O(backend).
    type: str
    default: blue
  green_server:
    description: V(haproxy) only. Name of green's server in O(backend).
    type: str
    default: green
  metrics_urls:
    description:
      - Color (C(blue), C(green)) to the URL of that color's chat C(/metrics)
        (Prometheus text), a source of the C(error_rate) and C(p95_ms) gates (source
        C(metrics)); a color without a URL, or a URL that does not answer, gives readings
        without a value.
      - V(haproxy) driver, the main source (and of the C(sends) gate). V(elbv2) driver,
        optional, read besides CloudWatch (on AWS the tasks' C(/metrics) is not reachable
        from the controller).
    type: dict
    default: {}
  metrics_timeout:
    description: Timeout in seconds of one C(/metrics) request.
    type: float
    default: 3
  listener_arn:
    description:
      - V(elbv2) only. ARN of the listener carrying the weights, in its rule whose forward
        action lists both target groups (the first by priority) if there is one, else in
        its default forward action. Alternatively give O(load_balancer_name) and
        O(listener_port).
    type: str
  load_balancer_name:
    description: V(elbv2) only. Name of the ALB, to look up the listener on O(listener_port).
    type: str
  listener_port:
    description: V(elbv2) only. Port of the listener to look up with O(load_balancer_name).
    type: int
    default: 80
  blue_target_group_arn:
    description: V(elbv2) only. ARN of blue's target group (or give O(blue_target_group_name)).
    type: str
  green_target_group_arn:
    description: V(elbv2) only. ARN of green's target group (or give O(green_target_group_name)).
    type: str
  blue_target_group_name:
    description: V(elbv2) only. Name of blue's target group, looked up when no ARN is given.
    type: str
  green_target_group_name:
    description: V(elbv2) only. Name of green's target group, looked up when no ARN is given.
    type: str
  chat_period:
    description:
      - V(elbv2) only. Period in seconds of the C(CanaryChat) datapoints read (the chat
        publishes high-resolution metrics every 10 s).
      - Every CloudWatch window starts at the moment the weights were applied; a
        datapoint is stamped with the start of its period, and one whose period starts
        before that moment is dropped (it mixes in the old weights). ALB metrics are read
        at their own period, 60 s.
    type: int
    choices: [1, 5, 10, 20, 30, 60]
    default: 10
notes:
  - Check mode reads the weights and runs the pre-check (failing as the real step would
    when it refuses), and writes nothing. With C(--diff) the weights before and after are
    shown.
  - A weight steers only new connections; WebSockets already open stay where they are.
  - When the weights already match, nothing is applied and no gate is read.
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
"""

EXAMPLES = r"""
- name: Move green to 50% on the local HAProxy, watching green for 60 s
  canarychat.platform.traffic_shift:
    driver: haproxy
    weight: 50
    haproxy_socket: /run/canary-chat/haproxy.sock
    metrics_urls:
      blue: http://127.0.0.1:8081/metrics
      green: http://127.0.0.1:8082/metrics
    bake_seconds: 60
    poll_interval: 5
    max_error_rate: 0.05
    max_p95_ms: 500

- name: Move green to 90% on the ALB, gated on CloudWatch and alarms
  canarychat.platform.traffic_shift:
    driver: elbv2
    weight: 90
    region: ap-northeast-2
    load_balancer_name: canary-chat
    listener_port: 80
    blue_target_group_name: chat-blue
    green_target_group_name: chat-green
    alarm_names:
      - canary-chat-green-5xx
      - canary-chat-green-p95
    bake_seconds: 120
    poll_interval: 15
    min_sends: 20
    on_breach: blue

- name: Rehearse a step with nobody chatting (no sends to judge)
  canarychat.platform.traffic_shift:
    driver: elbv2
    weight: 10
    load_balancer_name: canary-chat
    blue_target_group_name: chat-blue
    green_target_group_name: chat-green
    bake_seconds: 60
    allow_idle: true

- name: Roll back to blue now, whatever the gates say
  canarychat.platform.traffic_shift:
    driver: haproxy
    weight: 0
    rollback: true
    haproxy_socket: /run/canary-chat/haproxy.sock
"""

RETURN = r"""
weights_before:
  description: Weights read from the load balancer before the step.
  returned: always
  type: dict
  sample: {"blue": 90, "green": 10}
weights_after:
  description:
    - Weights after the step. On a failure, the weights in place when the module ended
      (blue 100 / green 0 after a breach with O(on_breach=blue)).
  returned: always
  type: dict
  sample: {"blue": 50, "green": 50}
gates:
  description:
    - Every gate reading taken, in order. C(ok) is V(true) (pass), V(false) (breach) or
      V(null) (no data).
  returned: always
  type: list
  elements: dict
  contains:
    ts:
      description: When the reading was taken (seconds since the epoch).
      type: float
    gate:
      description: C(healthy), C(error_rate), C(p95_ms), C(sends), C(alb_5xx) or C(alarm).
      type: str
    source:
      description:
        - C(haproxy), C(metrics) (the chat's /metrics), C(elbv2), C(canarychat) (the
          chat's CloudWatch metrics) or C(cloudwatch) (ALB metrics, alarms).
      type: str
    color:
      description: The color measured.
      type: str
    value:
      description: The measured value (for C(alarm), the alarm's state), or null.
      type: raw
    threshold:
      description: The gate's threshold.
      type: raw
    ok:
      description: Pass, breach or no data (null).
      type: bool
    name:
      description: The alarm's name (gate C(alarm) only).
      type: str
      returned: when gate is alarm
    detail:
      description: Context of the reading (counts, HAProxy status, why there is no value).
      type: str
      returned: when there is something to say
  sample:
    - {"ts": 1764270000.5, "gate": "healthy", "source": "haproxy", "color": "green",
       "value": 1, "threshold": 1, "ok": true, "detail": "status UP, check L7OK"}
    - {"ts": 1764270001.0, "gate": "error_rate", "source": "metrics", "color": "green",
       "value": 0.0, "threshold": 0.05, "ok": true}
timings:
  description: Durations of the step's phases, in seconds.
  returned: always
  type: dict
  contains:
    apply_seconds:
      description: Writing the weights.
      type: float
    verify_seconds:
      description: Reading them back until they matched.
      type: float
    bake_seconds:
      description: Watching the gates.
      type: float
    total_seconds:
      description: The whole step.
      type: float
  sample: {"apply_seconds": 0.004, "verify_seconds": 0.002, "bake_seconds": 60.01,
           "total_seconds": 60.03}
rolled_back:
  description: Whether the weights were moved after a breach (O(on_breach)).
  returned: always
  type: bool
breach:
  description: The reading that breached its gate.
  returned: on a gate failure
  type: dict
"""

import traceback

try:
    import botocore
except ImportError:
    pass  # AnsibleAWSModule reports a missing boto3/botocore

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry
from ansible_collections.canarychat.platform.plugins.module_utils.haproxy_runtime import (
    RuntimeAPI,
    RuntimeAPIError,
)
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.core import (
    Thresholds,
    weights_for,
)
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.elbv2 import (
    ConfigError,
    ELBv2Driver,
    find_listener_arn,
    find_target_group_arn,
)
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.haproxy import (
    HAProxyDriver,
)
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.metrics import (
    ChatMetrics,
)
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.step import (
    StepFailed,
    run_step,
)

ARGUMENT_SPEC = dict(
    driver=dict(type="str", required=True, choices=["haproxy", "elbv2"]),
    weight=dict(type="int", required=True),
    min_healthy=dict(type="int", default=1),
    max_error_rate=dict(type="float", default=0.05),
    max_p95_ms=dict(type="float", default=500),
    alarm_names=dict(type="list", elements="str", default=[]),
    bake_seconds=dict(type="int", default=0),
    poll_interval=dict(type="float", default=5),
    auto_rollback=dict(type="bool", default=True),
    verify=dict(type="bool", default=True),
    verify_timeout=dict(type="float", default=30),
    rollback=dict(type="bool", default=False),
    haproxy_socket=dict(type="str"),
    backend=dict(type="str", default="chat"),
    blue_server=dict(type="str", default="blue"),
    green_server=dict(type="str", default="green"),
    metrics_urls=dict(type="dict", default={}),
    metrics_timeout=dict(type="float", default=3),
    listener_arn=dict(type="str"),
    load_balancer_name=dict(type="str"),
    listener_port=dict(type="int", default=80),
    blue_target_group_arn=dict(type="str"),
    green_target_group_arn=dict(type="str"),
    blue_target_group_name=dict(type="str"),
    green_target_group_name=dict(type="str"),
    chat_period=dict(type="int", default=10, choices=[1, 5, 10, 20, 30, 60]),
    max_alb_5xx=dict(type="int", default=0),
    min_sends=dict(type="int", default=20),
    allow_idle=dict(type="bool", default=False),
    on_breach=dict(type="str", default="blue", choices=["blue", "previous"]),
)


def haproxy_driver(module):
    p = module.params
    if not p["haproxy_socket"]:
        module.fail_json(msg="driver=haproxy needs haproxy_socket")
    urls = metrics_urls(module)
    return HAProxyDriver(RuntimeAPI(p["haproxy_socket"]), backend=p["backend"],
                         servers={"blue": p["blue_server"], "green": p["green_server"]},
                         metrics=ChatMetrics(urls, timeout=p["metrics_timeout"]))


def metrics_urls(module):
    urls = {str(k): str(v) for k, v in (module.params["metrics_urls"] or {}).items()}
    unknown = sorted(set(urls) - {"blue", "green"})
    if unknown:
        module.fail_json(msg="metrics_urls keys must be blue/green, got %s" % ", ".join(unknown))
    return urls


def elbv2_driver(module):
    p = module.params
    retry = AWSRetry.jittered_backoff()
    elbv2 = module.client("elbv2", retry_decorator=retry)
    cloudwatch = module.client("cloudwatch", retry_decorator=retry)
    listener_arn = p["listener_arn"]
    if not listener_arn:
        if not p["load_balancer_name"]:
            module.fail_json(msg="driver=elbv2 needs listener_arn or load_balancer_name")
        listener_arn = find_listener_arn(elbv2, p["load_balancer_name"], p["listener_port"])
    arns = {}
    for color in ("blue", "green"):
        arn = p["%s_target_group_arn" % color]
        name = p["%s_target_group_name" % color]
        if not arn:
            if not name:
                module.fail_json(msg="driver=elbv2 needs %s_target_group_arn or "
                                     "%s_target_group_name" % (color, color))
            arn = find_target_group_arn(elbv2, name)
        arns[color] = arn
    urls = metrics_urls(module)
    return ELBv2Driver(elbv2, cloudwatch, listener_arn, arns, alarm_names=p["alarm_names"],
                       chat_period=p["chat_period"],
                       metrics=ChatMetrics(urls, timeout=p["metrics_timeout"]) if urls else None)


def main():
    module = AnsibleAWSModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
        mutually_exclusive=[
            ("listener_arn", "load_balancer_name"),
            ("blue_target_group_arn", "blue_target_group_name"),
            ("green_target_group_arn", "green_target_group_name"),
        ],
    )
    p = module.params
    # The weight's one range check (weights_for), before any driver connects.
    try:
        target = weights_for(p["weight"])
    except ValueError as e:
        module.fail_json(msg=str(e))
    if (p["min_healthy"] < 0 or p["bake_seconds"] < 0 or p["poll_interval"] <= 0
            or p["min_sends"] < 0 or p["max_alb_5xx"] < 0):
        module.fail_json(msg="min_healthy, bake_seconds, min_sends and max_alb_5xx must be "
                             ">= 0, poll_interval > 0")
    if p["driver"] == "haproxy" and p["alarm_names"]:
        module.fail_json(msg="alarm_names is an elbv2 gate; the haproxy driver has no alarms")

    thresholds = Thresholds(p["min_healthy"], p["max_error_rate"], p["max_p95_ms"],
                            min_sends=p["min_sends"], max_alb_5xx=p["max_alb_5xx"])
    try:
        if p["driver"] == "haproxy":
            driver = haproxy_driver(module)
        else:
            driver = elbv2_driver(module)
            if not p["rollback"]:
                driver.check_alarms_exist()
        result = run_step(
            driver, target, thresholds,
            bake_seconds=p["bake_seconds"], poll_interval=p["poll_interval"],
            auto_rollback=p["auto_rollback"], verify=p["verify"],
            verify_timeout=p["verify_timeout"], rollback=p["rollback"],
            check_mode=module.check_mode, on_breach=p["on_breach"],
            allow_idle=p["allow_idle"])
    except StepFailed as e:
        module.fail_json(msg=e.msg, **e.result)
    except (ConfigError, RuntimeAPIError, ValueError) as e:
        module.fail_json(msg=str(e), exception=traceback.format_exc())
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg="AWS call failed during the traffic shift")

    if module._diff:
        result["diff"] = {
            "before": {"weights": result["weights_before"]},
            "after": {"weights": result["weights_after"]},
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()

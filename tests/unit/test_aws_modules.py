"""Our AWS modules' pure logic (build / compare), called directly, and their registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ansible_collections.canarychat.platform.plugins.filter import (
    cloudfront as cf_filter,
)
from ansible_collections.canarychat.platform.plugins.modules import (
    cloudfront_origin_access_control as oac,
)
from ansible_collections.canarychat.platform.plugins.modules import (
    cloudwatch_dashboard as dashboard,
)
from ansible_collections.canarychat.platform.plugins.modules import (
    ec2_managed_prefix_list_info as prefix_lists,
)
from ansible_collections.canarychat.platform.plugins.modules import (
    elasticache_replication_group as erg,
)
from ansible_collections.canarychat.platform.plugins.modules import (
    elb_load_balancer_attributes as lb_attrs,
)
from ansible_collections.canarychat.platform.plugins.modules import (
    elb_origin_rule as origin_rule,
)

REPO = Path(__file__).resolve().parents[2]

OUR_AWS_MODULES = [
    "elasticache_replication_group",
    "cloudwatch_dashboard",
    "cloudfront_origin_access_control",
    "ec2_managed_prefix_list_info",
    "elb_load_balancer_attributes",
    "iam_openid_connect_provider",
    "elb_origin_rule",
]


# ---- module_defaults reach our modules (DESIGN.md trap: group/aws does not)

def test_runtime_action_group_lists_our_aws_modules_and_extends_both_aws_groups() -> None:
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    group = runtime["action_groups"]["aws"]
    extends = next(e["metadata"]["extend_group"] for e in group if isinstance(e, dict))
    assert set(extends) >= {"amazon.aws.aws", "community.aws.aws"}
    members = [e for e in group if isinstance(e, str)]
    for name in [*OUR_AWS_MODULES, "traffic_shift"]:
        assert name in members, name


def test_every_aws_task_file_sets_module_defaults_for_our_group() -> None:
    files = [*REPO.glob("roles/*/tasks/aws.yml"), *REPO.glob("roles/*/tasks/aws_teardown.yml")]
    assert len(files) >= 12
    for path in files:
        if path.parent.parent.name == "deploy":
            continue  # deploy/tasks/main.yml wraps it
        tasks = yaml.safe_load(path.read_text())
        md = tasks[0].get("module_defaults", {}).get("group/canarychat.platform.aws")
        assert md is not None, path
        assert "aws_endpoint_url" in md["endpoint_url"], path
    main = yaml.safe_load((REPO / "roles/deploy/tasks/main.yml").read_text())
    assert "group/canarychat.platform.aws" in main[0]["module_defaults"]


# ---- elasticache_replication_group

def _params(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(
        ["description", "engine_version", "cache_node_type", "num_cache_clusters",
         "preferred_cache_cluster_azs", "automatic_failover", "multi_az", "at_rest_encryption",
         "transit_encryption", "cache_subnet_group_name", "security_group_ids",
         "snapshot_retention_limit", "port", "tags"])
    base.update(replication_group_id="chat", engine="redis")
    base.update(kw)
    return base


def test_create_params_carry_only_the_set_options() -> None:
    req = erg.build_create_params(_params(
        cache_node_type="cache.t4g.micro", num_cache_clusters=2, automatic_failover=True,
        multi_az=True, at_rest_encryption=True, snapshot_retention_limit=0,
        preferred_cache_cluster_azs=["ap-northeast-2a", "ap-northeast-2c"],
        tags={"Project": "canary-chat"}))
    assert req == {
        "ReplicationGroupId": "chat",
        "ReplicationGroupDescription": "managed by canarychat.platform",
        "Engine": "redis",
        "CacheNodeType": "cache.t4g.micro",
        "NumCacheClusters": 2,
        "PreferredCacheClusterAZs": ["ap-northeast-2a", "ap-northeast-2c"],
        "AutomaticFailoverEnabled": True,
        "MultiAZEnabled": True,
        "AtRestEncryptionEnabled": True,
        "SnapshotRetentionLimit": 0,
        "Tags": [{"Key": "Project", "Value": "canary-chat"}],
    }


GROUP = {
    "Description": "chat bus",
    "CacheNodeType": "cache.t4g.micro",
    "AutomaticFailover": "enabled",
    "MultiAZ": "enabled",
    "AtRestEncryptionEnabled": True,
    "TransitEncryptionEnabled": False,
    "SnapshotRetentionLimit": 0,
    "NodeGroups": [{"PrimaryEndpoint": {"Address": "master.chat.cache", "Port": 6379}}],
}
MEMBER = {"SecurityGroups": [{"SecurityGroupId": "sg-2"}, {"SecurityGroupId": "sg-1"}],
          "CacheSubnetGroupName": "chat", "EngineVersion": "7.1.0"}


def test_current_settings_read_flags_endpoint_and_member_fields() -> None:
    cur = erg.current_settings(GROUP, MEMBER)
    assert cur["automatic_failover"] is True and cur["multi_az"] is True
    assert cur["security_group_ids"] == ["sg-1", "sg-2"]
    assert cur["port"] == 6379 and cur["engine_version"] == "7.1.0"
    assert erg.primary_endpoint(GROUP) == ("master.chat.cache", 6379)
    assert erg.primary_endpoint({"NodeGroups": []}) is None


def test_unchanged_group_needs_no_modification() -> None:
    cur = erg.current_settings(GROUP, MEMBER)
    modify, immutable = erg.compare(_params(
        description="chat bus", cache_node_type="cache.t4g.micro", automatic_failover=True,
        multi_az=True, at_rest_encryption=True, snapshot_retention_limit=0,
        security_group_ids=["sg-2", "sg-1"], engine_version="7.1", port=6379), cur)
    assert modify == {} and immutable == []


def test_unset_options_are_never_compared() -> None:
    cur = erg.current_settings(GROUP, MEMBER)
    assert erg.compare(_params(), cur) == ({}, [])


def test_changed_node_type_and_failover_become_one_modification() -> None:
    cur = erg.current_settings(GROUP, MEMBER)
    modify, immutable = erg.compare(
        _params(cache_node_type="cache.t4g.small", automatic_failover=False, multi_az=False), cur)
    assert modify == {"CacheNodeType": "cache.t4g.small", "AutomaticFailoverEnabled": False,
                      "MultiAZEnabled": False}
    assert immutable == []


def test_creation_only_settings_are_reported_not_modified() -> None:
    cur = erg.current_settings(GROUP, MEMBER)
    modify, immutable = erg.compare(
        _params(at_rest_encryption=False, cache_subnet_group_name="other", port=6380), cur)
    assert modify == {}
    assert sorted(immutable) == ["at_rest_encryption", "cache_subnet_group_name", "port"]


# ---- cloudwatch_dashboard

def test_dashboard_bodies_compare_as_data() -> None:
    text = '{"widgets": [{"type": "metric", "x": 0, "properties": {"title": "t"}}]}'
    same = {"widgets": [{"properties": {"title": "t"}, "x": 0, "type": "metric"}]}
    assert not dashboard.body_differs(same, text)
    assert dashboard.body_differs({"widgets": []}, text)
    assert dashboard.normalize_body(None) is None


# ---- cloudfront_origin_access_control

def test_oac_config_and_comparison() -> None:
    want = oac.build_config({"name": "site", "description": None, "origin_type": "s3",
                             "signing_behavior": "always", "signing_protocol": "sigv4"})
    assert want == {"Name": "site", "Description": "", "SigningProtocol": "sigv4",
                    "SigningBehavior": "always", "OriginAccessControlOriginType": "s3"}
    have = {k: v for k, v in want.items() if k != "Description"}  # API leaves "" out
    assert not oac.config_differs(want, have)
    assert oac.config_differs(want, {**have, "SigningBehavior": "never"})


# ---- ec2_managed_prefix_list_info / elb_load_balancer_attributes

def test_prefix_lists_come_back_in_the_order_asked() -> None:
    found = [{"PrefixListName": "b"}, {"PrefixListName": "a"}]
    assert prefix_lists.order_by_names(found, ["a", "b", "c"]) == [
        {"PrefixListName": "a"}, {"PrefixListName": "b"}]
    assert prefix_lists.order_by_names(found, []) == found


def test_lb_attributes_compare_only_given_keys_and_missing_keys_differ() -> None:
    have = {"idle_timeout.timeout_seconds": "300", "deletion_protection.enabled": "false"}
    assert lb_attrs.attributes_to_change({"idle_timeout.timeout_seconds": 300}, have) == []
    assert lb_attrs.attributes_to_change(
        {"access_logs.s3.enabled": True, "idle_timeout.timeout_seconds": "60"}, have) == [
        {"Key": "access_logs.s3.enabled", "Value": "true"},
        {"Key": "idle_timeout.timeout_seconds", "Value": "60"}]


# ---- cloudfront_drift filter

WANTED = {
    "comment": "chat", "enabled": True, "default_root_object": "index.html",
    "origins": {"site": {"domain_name": "b.s3.amazonaws.com", "origin_access_control_id": "E1"},
                "alb": {"domain_name": "alb.elb.amazonaws.com",
                        "origin_protocol_policy": "http-only", "origin_read_timeout": 60}},
    "behaviors": {"default": {"target_origin_id": "site", "cache_policy_id": "opt",
                              "allowed_methods": ["GET", "HEAD"]},
                  "/ws": {"target_origin_id": "alb", "cache_policy_id": "off",
                          "viewer_protocol_policy": "redirect-to-https"}},
}


def _config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "Comment": "chat", "Enabled": True, "DefaultRootObject": "index.html",
        "Origins": {"Items": [
            {"Id": "site", "DomainName": "b.s3.amazonaws.com", "OriginAccessControlId": "E1"},
            {"Id": "alb", "DomainName": "alb.elb.amazonaws.com",
             "CustomOriginConfig": {"OriginProtocolPolicy": "http-only", "OriginReadTimeout": 60}},
        ]},
        "DefaultCacheBehavior": {"TargetOriginId": "site", "CachePolicyId": "opt",
                                 "AllowedMethods": {"Items": ["HEAD", "GET"]},
                                 "ForwardedValues": {"QueryString": False}},
        "CacheBehaviors": {"Items": [{"PathPattern": "/ws", "TargetOriginId": "alb",
                                      "CachePolicyId": "off",
                                      "ViewerProtocolPolicy": "redirect-to-https"}]},
    }
    cfg.update(over)
    return cfg


def test_matching_distribution_has_no_drift_despite_provider_defaults() -> None:
    assert cf_filter.cloudfront_drift(_config(), WANTED) == []


def test_missing_distribution_and_changed_fields_are_drift() -> None:
    assert cf_filter.cloudfront_drift({}, WANTED) == ["no distribution"]
    cfg = _config(CacheBehaviors={"Items": []}, DefaultRootObject="")
    drift = cf_filter.cloudfront_drift(cfg, WANTED)
    assert "behavior /ws: missing" in drift
    assert any(d.startswith("distribution: default_root_object") for d in drift)


def test_oac_id_is_compared_only_where_the_api_reports_it() -> None:
    cfg = _config()
    cfg["Origins"]["Items"][0].pop("OriginAccessControlId")
    assert cf_filter.cloudfront_drift(cfg, WANTED) == []
    cfg["Origins"]["Items"][0]["OriginAccessControlId"] = "E2"
    assert cf_filter.cloudfront_drift(cfg, WANTED) == [
        "origin site: origin_access_control_id is 'E2', wanted 'E1'"]


def test_origin_header_difference_names_the_header_never_the_value() -> None:
    config = {"Origins": {"Items": [{"Id": "alb", "DomainName": "lb", "CustomHeaders": {
        "Quantity": 1, "Items": [{"HeaderName": "X-Origin-Verify", "HeaderValue": "old"}]}}]}}
    same = cf_filter.cloudfront_drift(config, {"origins": {"alb": {
        "domain_name": "lb", "custom_headers": {"x-origin-verify": "old"}}}})
    assert same == []
    drift = cf_filter.cloudfront_drift(config, {"origins": {"alb": {
        "domain_name": "lb", "custom_headers": {"X-Origin-Verify": "s3cr3tnew"}}}})
    assert drift == ["origin alb: custom_headers differ (x-origin-verify)"]
    assert "s3cr3tnew" not in " ".join(drift) and "old" not in " ".join(drift)
    bare = {"Origins": {"Items": [{"Id": "alb", "DomainName": "lb"}]}}
    want = {"origins": {"alb": {"custom_headers": {"X-A": "v"}}}}
    missing = cf_filter.cloudfront_drift(bare, want)
    assert missing == ["origin alb: custom_headers differ (x-a)"]


# ---- elb_origin_rule: where the weighted forward lives and what a run changes

BLUE, GREEN = "arn:tg/blue", "arn:tg/green"
PARAMS: dict[str, Any] = {
    "header_name": "X-Origin-Verify", "header_values": ["secret"], "deny_default": True,
    "deny_status_code": "403",
    "target_groups": [{"target_group_arn": BLUE, "weight": 90},
                      {"target_group_arn": GREEN, "weight": 10}]}


def _forward(blue: int, green: int) -> dict[str, Any]:
    return {"Type": "forward", "ForwardConfig": {"TargetGroups": [
        {"TargetGroupArn": BLUE, "Weight": blue}, {"TargetGroupArn": GREEN, "Weight": green}]}}


def _rule(values: list[str], blue: int = 50, green: int = 50) -> dict[str, Any]:
    return {"RuleArn": "arn:rule", "IsDefault": False, "Actions": [_forward(blue, green)],
            "Conditions": [origin_rule.header_condition("X-Origin-Verify", values)]}


DENY = [origin_rule.deny_action("403", "Forbidden")]
DEFAULT_RULE = {"RuleArn": "arn:default", "IsDefault": True, "Actions": DENY, "Conditions": []}


def test_new_listener_gets_the_403_default_and_a_rule_with_the_initial_weights() -> None:
    steps, weights = origin_rule.plan(None, [], PARAMS)
    assert [s for s, _ in steps] == ["create listener", "create rule"]
    assert weights == {BLUE: 90, GREEN: 10}


def test_listener_that_forwarded_by_default_moves_its_current_weights_into_the_rule() -> None:
    listener = {"DefaultActions": [_forward(30, 70)]}
    steps, weights = origin_rule.plan(listener, [], PARAMS)
    assert [s for s, _ in steps] == ["create rule", "deny by default"]
    assert steps[0][1]["weights"] == weights == {BLUE: 30, GREEN: 70}
    kept, _ = origin_rule.plan(listener, [], dict(PARAMS, deny_default=False))
    assert [s for s, _ in kept] == ["create rule"]


def test_existing_rule_keeps_its_weights_and_a_matching_one_changes_nothing() -> None:
    listener = {"DefaultActions": DENY}
    steps, weights = origin_rule.plan(listener, [_rule(["secret"]), DEFAULT_RULE], PARAMS)
    assert steps == [] and weights == {BLUE: 50, GREEN: 50}


def test_rotated_secret_modifies_only_the_condition() -> None:
    listener = {"DefaultActions": DENY}
    params = dict(PARAMS, header_values=["new", "secret"])
    steps, weights = origin_rule.plan(listener, [_rule(["secret"]), DEFAULT_RULE], params)
    assert [s for s, _ in steps] == ["modify condition"] and weights == {BLUE: 50, GREEN: 50}
    assert origin_rule.condition_matches(
        _rule(["secret", "new"]), "x-origin-verify", ["new", "secret"])


def test_weighted_rule_is_the_one_forwarding_to_both_target_groups() -> None:
    other = {"RuleArn": "arn:other", "IsDefault": False, "Conditions": [],
             "Actions": [{"Type": "forward", "TargetGroupArn": BLUE}]}
    assert origin_rule.find_weighted_rule([other, _rule(["s"]), DEFAULT_RULE], {BLUE, GREEN})[
        "RuleArn"] == "arn:rule"
    assert origin_rule.find_weighted_rule([other, DEFAULT_RULE], {BLUE, GREEN}) is None


# ---- the 5xx alarm's metric math: CloudWatch's documented function forms only
#
# Documented forms (Amazon CloudWatch User Guide, "Metric math syntax and functions" and
# "Using IF expressions", docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/
# using-metric-math.html), TS = time series, S = scalar, TS[] = array of time series:
#   FILL(TS, S) -> TS             FILL(TS[], S) -> TS[]
#   MAX(TS) -> S                  MAX(TS[]) -> TS   (an array holds time series only)
#   IF(TS, TS|S, TS|S) -> TS      arithmetic and comparison: TS op TS, TS op S, S op TS -> TS
DOCUMENTED = {
    "FILL": [(("TS", "S"), "TS"), (("TS[]", "S"), "TS[]")],
    "MAX": [(("TS",), "S"), (("TS[]",), "TS")],
    "MIN": [(("TS",), "S"), (("TS[]",), "TS")],
    "IF": [((c, t, f), "TS") for c in ("TS",) for t in ("TS", "S") for f in ("TS", "S")],
}


def _metric_math_type(expr: str, ids: set[str]) -> str:
    """The type of a metric-math expression, or AssertionError naming the undocumented form."""
    import re
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|[<>=!]=?|[()\[\],+\-*/]", expr)
    pos = 0

    def peek() -> str:
        return tokens[pos] if pos < len(tokens) else ""

    def take(want: str | None = None) -> str:
        nonlocal pos
        tok = tokens[pos]
        assert want is None or tok == want, (want, tok)
        pos += 1
        return tok

    def combine(a: str, b: str) -> str:
        assert "TS[]" not in (a, b), "arithmetic on an array"
        return "TS" if "TS" in (a, b) else "S"

    def atom() -> str:
        tok = take()
        if tok == "(":
            t = comparison()
            take(")")
            return t
        if tok == "[":
            items = [comparison()]
            while peek() == ",":
                take(",")
                items.append(comparison())
            take("]")
            assert all(i == "TS" for i in items), f"array of {items}: not a documented form"
            return "TS[]"
        if tok[0].isdigit():
            return "S"
        if peek() == "(":
            take("(")
            args = [comparison()]
            while peek() == ",":
                take(",")
                args.append(comparison())
            take(")")
            forms = dict(DOCUMENTED[tok])
            assert tuple(args) in forms, f"{tok}({', '.join(args)}) is not a documented form"
            return forms[tuple(args)]
        assert tok in ids, tok
        return "TS"

    def product() -> str:
        t = atom()
        while peek() in ("*", "/"):
            take()
            t = combine(t, atom())
        return t

    def total() -> str:
        t = product()
        while peek() in ("+", "-"):
            take()
            t = combine(t, product())
        return t

    def comparison() -> str:
        t = total()
        while peek() in (">", "<", ">=", "<=", "==", "!="):
            take()
            t = combine(t, total())
        return t

    result = comparison()
    assert pos == len(tokens), tokens[pos:]
    return result


def test_5xx_alarm_expression_follows_the_documented_if_fill_forms() -> None:
    """IF(TS condition, TS, S) over FILL(TS, S): the documented forms, one time series."""
    expr = yaml.safe_load((REPO / "roles/observability/vars/main.yml").read_text())[
        "observability_green_5xx_expression"]
    tasks = (REPO / "roles/observability/tasks/aws.yml").read_text()
    assert "observability_green_5xx_expression" in tasks
    assert _metric_math_type(expr, {"errors", "requests"}) == "TS"  # an alarm needs one TS
    # the checker refuses the form this expression replaced (a TS and a scalar in one array)
    try:
        _metric_math_type("100 * FILL(errors, 0) / MAX([FILL(requests, 0), 1])",
                          {"errors", "requests"})
    except AssertionError as e:
        assert "array of ['TS', 'S']" in str(e)
    else:
        raise AssertionError("the mixed array was accepted")


# ---- one Redis TLS switch: the chat's scheme follows the replication group

def _render_environment(transit: bool | None,
                        more: dict[str, Any] | None = None) -> dict[str, str]:
    """roles/compute/templates/aws_environment.yml.j2 rendered by Ansible for blue."""
    import json
    import os
    import subprocess
    group: dict[str, Any] = {} if transit is None else {"transit_encryption_enabled": transit}
    extra = {"item": "blue", "compute_container_port": 8000, "compute_blue_version": "v1",
             "compute_green_version": "v2", "aws_region": "ap-northeast-2",
             "compute_aws_table_prefix": "canary-chat-", "compute_green_fault_rate": 0.0,
             "compute_drain_seconds": 10, "compute_aws_cloudwatch": True,
             "compute_aws_name": "canary-chat",
             "__compute_target_groups": [{"target_group_name": "canary-chat-blue",
                                          "target_group_arn": "arn:tg/blue"}],
             "__compute_redis": {"primary_endpoint": "redis.example", "primary_port": 6379,
                                 "replication_group": group}, **(more or {})}
    template = REPO / "roles/compute/templates/aws_environment.yml.j2"
    proc = subprocess.run(
        [str(REPO / ".venv/bin/ansible"), "localhost", "-i", "localhost,", "-c", "local",
         "-m", "ansible.builtin.debug",
         "-a", f"msg={{{{ lookup('ansible.builtin.template', '{template}') | from_yaml }}}}",
         "-e", json.dumps(extra)],
        cwd=REPO, env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
                           ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1"),
        capture_output=True, text=True, timeout=120, check=False)
    out = json.loads(proc.stdout[proc.stdout.find("{"):])
    env = out["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    return {e["name"]: str(e["value"]) for e in env}


def test_redis_scheme_follows_the_groups_transit_encryption() -> None:
    assert _render_environment(True)["REDIS_URL"] == "rediss://redis.example:6379/0"
    assert _render_environment(False)["REDIS_URL"] == "redis://redis.example:6379/0"
    env = _render_environment(None)  # a group that does not report the field: no TLS
    assert env["REDIS_URL"] == "redis://redis.example:6379/0"
    assert env["CHAT_TARGET_GROUP_ARNS"] == "arn:tg/blue"
    assert (env["CHAT_CLOUDWATCH"], env["CHAT_ADMIN_BEARER"]) == ("1", "0")


def test_the_board_reads_its_weights_from_the_listener_when_it_is_known() -> None:
    from chat.config import Config
    groups = [{"target_group_name": f"canary-chat-{c}", "target_group_arn": f"arn:tg/{c}"}
              for c in ("blue", "green")]
    env = _render_environment(None, {"__compute_listener_arn": "arn:listener/80",
                                     "__compute_target_groups": groups})
    assert (env["CHAT_WEIGHTS_LISTENER_ARN"], env["CHAT_WEIGHTS_BLUE_TARGET_GROUP_ARN"],
            env["CHAT_WEIGHTS_GREEN_TARGET_GROUP_ARN"]) == (
        "arn:listener/80", "arn:tg/blue", "arn:tg/green")
    config = Config.from_env(env)  # the chat accepts what the role gives it
    assert (config.weights_listener_arn, config.weights_green_target_group_arn) == (
        "arn:listener/80", "arn:tg/green")
    # no listener found (no ALB yet): no weights source, the chat starts all the same
    bare = _render_environment(None, {"__compute_listener_arn": ""})
    assert not any(k.startswith("CHAT_WEIGHTS_") for k in bare)
    assert Config.from_env(bare).weights_listener_arn is None

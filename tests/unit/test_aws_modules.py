"""Our AWS modules' pure logic (build / compare), called directly, and their registration."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
# Import as Ansible does: through the collections/ansible_collections symlink tree.
_COLLECTIONS = str(REPO / "collections")
if _COLLECTIONS not in sys.path:
    sys.path.insert(0, _COLLECTIONS)

from ansible_collections.canarychat.platform.plugins.filter import (  # noqa: E402
    cloudfront as cf_filter,
)
from ansible_collections.canarychat.platform.plugins.modules import (  # noqa: E402
    cloudfront_origin_access_control as oac,
)
from ansible_collections.canarychat.platform.plugins.modules import (  # noqa: E402
    cloudwatch_dashboard as dashboard,
)
from ansible_collections.canarychat.platform.plugins.modules import (  # noqa: E402
    ec2_managed_prefix_list_info as prefix_lists,
)
from ansible_collections.canarychat.platform.plugins.modules import (  # noqa: E402
    elasticache_replication_group as erg,
)
from ansible_collections.canarychat.platform.plugins.modules import (  # noqa: E402
    elb_load_balancer_attributes as lb_attrs,
)

OUR_AWS_MODULES = [
    "elasticache_replication_group",
    "cloudwatch_dashboard",
    "cloudfront_origin_access_control",
    "ec2_managed_prefix_list_info",
    "elb_load_balancer_attributes",
    "iam_openid_connect_provider",
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

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: elasticache_replication_group
short_description: Manage an ElastiCache (Redis OSS) replication group
version_added: 0.1.0
description:
  - Create, update or delete an ElastiCache replication group with cluster mode disabled
    (one primary plus read replicas), the shape C(community.aws.elasticache) cannot make.
  - Only options that are set are compared and changed. Settings AWS cannot change on an
    existing group (at-rest encryption, subnet group, port) are reported as a failure
    rather than silently ignored.
author:
  - canary-chat developers (@canary-chat)
options:
  replication_group_id:
    description: The replication group identifier (lowercase, 1-40 characters).
    type: str
    required: true
    aliases: [name]
  state:
    description: Whether the replication group should exist.
    type: str
    choices: [present, absent]
    default: present
  description:
    description:
      - Free-text description of the group.
      - AWS requires one on creation; C(managed by canarychat.platform) is used when unset.
    type: str
  engine:
    description: Cache engine.
    type: str
    choices: [redis, valkey]
    default: redis
  engine_version:
    description: Engine version, for example C(7.1). AWS picks the default when unset.
    type: str
  cache_node_type:
    description: Node type of every member, for example C(cache.t4g.micro).
    type: str
  num_cache_clusters:
    description: Number of member clusters (primary plus replicas). Only used on creation.
    type: int
  preferred_cache_cluster_azs:
    description: Availability zones of the members, primary first. Only used on creation.
    type: list
    elements: str
  automatic_failover:
    description: Promote a replica automatically when the primary fails.
    type: bool
  multi_az:
    description: Multi-AZ (requires O(automatic_failover)).
    type: bool
  at_rest_encryption:
    description: Encrypt data at rest. Only settable on creation.
    type: bool
  transit_encryption:
    description: Require TLS between clients and the nodes. Only settable on creation here.
    type: bool
  cache_subnet_group_name:
    description: Cache subnet group the members are placed in. Only settable on creation.
    type: str
  security_group_ids:
    description: VPC security groups of the members.
    type: list
    elements: str
  snapshot_retention_limit:
    description: Days automatic snapshots are kept; C(0) turns snapshots off.
    type: int
  port:
    description: Port the nodes listen on. Only settable on creation.
    type: int
  apply_immediately:
    description: Apply modifications now instead of in the next maintenance window.
    type: bool
    default: true
  wait:
    description:
      - Wait until the group is C(available) (or gone, for O(state=absent)).
      - With O(state=absent) a group whose status is already C(deleting) is not deleted
        again and reports no change.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait.
    type: int
    default: 1800
  tags:
    description: Tags applied on creation.
    type: dict
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: Redis primary and one replica across two AZs
  canarychat.platform.elasticache_replication_group:
    replication_group_id: canary-chat
    description: canary-chat Redis
    cache_node_type: cache.t4g.micro
    num_cache_clusters: 2
    preferred_cache_cluster_azs: [ap-northeast-2a, ap-northeast-2c]
    automatic_failover: true
    multi_az: true
    at_rest_encryption: true
    snapshot_retention_limit: 0
    cache_subnet_group_name: canary-chat-redis
    security_group_ids: [sg-0123456789abcdef0]

- name: Remove it
  canarychat.platform.elasticache_replication_group:
    replication_group_id: canary-chat
    state: absent
"""

RETURN = r"""
replication_group:
  description: The group as DescribeReplicationGroups returns it (snake_case); empty when absent.
  returned: always
  type: dict
primary_endpoint:
  description: Address of the primary endpoint, which follows a failover.
  returned: when the group exists and reports its node groups
  type: str
  sample: canary-chat.abc123.ng.0001.apn2.cache.amazonaws.com
primary_port:
  description: Port of the primary endpoint.
  returned: when the group exists and reports its node groups
  type: int
  sample: 6379
"""

import time

try:
    import botocore
except ImportError:
    pass  # handled by AnsibleAWSModule

from ansible.module_utils.common.dict_transformations import camel_dict_to_snake_dict
from ansible_collections.amazon.aws.plugins.module_utils.botocore import is_boto3_error_code
from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry

# Fields fixed at creation: asking for another value on an existing group is an error.
IMMUTABLE = {
    "at_rest_encryption": "AtRestEncryptionEnabled",
    "transit_encryption": "TransitEncryptionEnabled",
    "cache_subnet_group_name": "CacheSubnetGroupName",
    "port": "Port",
}


def build_create_params(params):
    """CreateReplicationGroup keyword arguments for the set options."""
    req = {
        "ReplicationGroupId": params["replication_group_id"],
        "ReplicationGroupDescription": params.get("description")
        or "managed by canarychat.platform",
        "Engine": params.get("engine") or "redis",
    }
    mapping = {
        "engine_version": "EngineVersion",
        "cache_node_type": "CacheNodeType",
        "num_cache_clusters": "NumCacheClusters",
        "preferred_cache_cluster_azs": "PreferredCacheClusterAZs",
        "automatic_failover": "AutomaticFailoverEnabled",
        "multi_az": "MultiAZEnabled",
        "at_rest_encryption": "AtRestEncryptionEnabled",
        "transit_encryption": "TransitEncryptionEnabled",
        "cache_subnet_group_name": "CacheSubnetGroupName",
        "security_group_ids": "SecurityGroupIds",
        "snapshot_retention_limit": "SnapshotRetentionLimit",
        "port": "Port",
    }
    for opt, key in mapping.items():
        if params.get(opt) is not None:
            req[key] = params[opt]
    if params.get("tags"):
        req["Tags"] = [{"Key": k, "Value": str(v)} for k, v in sorted(params["tags"].items())]
    return req


def current_settings(group, member=None):
    """The comparable settings of a described group (member: one DescribeCacheClusters entry)."""
    failover = group.get("AutomaticFailover")
    multi_az = group.get("MultiAZ")
    settings = {
        "description": group.get("Description"),
        "cache_node_type": group.get("CacheNodeType"),
        "automatic_failover": None if failover is None else failover in ("enabled", "enabling"),
        "multi_az": None if multi_az is None else multi_az == "enabled",
        "at_rest_encryption": group.get("AtRestEncryptionEnabled"),
        "transit_encryption": group.get("TransitEncryptionEnabled"),
        "snapshot_retention_limit": group.get("SnapshotRetentionLimit"),
    }
    if member:
        settings["security_group_ids"] = sorted(
            sg["SecurityGroupId"] for sg in member.get("SecurityGroups", [])
        )
        settings["cache_subnet_group_name"] = member.get("CacheSubnetGroupName")
        settings["engine_version"] = member.get("EngineVersion")
    endpoint = primary_endpoint(group)
    if endpoint:
        settings["port"] = endpoint[1]
    return settings


def compare(params, current):
    """Return (modify kwargs, immutable differences) between the set options and the group."""
    modify = {}
    immutable = []
    mapping = {
        "description": "ReplicationGroupDescription",
        "cache_node_type": "CacheNodeType",
        "automatic_failover": "AutomaticFailoverEnabled",
        "multi_az": "MultiAZEnabled",
        "snapshot_retention_limit": "SnapshotRetentionLimit",
        "security_group_ids": "SecurityGroupIds",
        "engine_version": "EngineVersion",
    }
    for opt, key in mapping.items():
        want = params.get(opt)
        if want is None or opt not in current or current[opt] is None:
            continue
        have = current[opt]
        if opt == "security_group_ids":
            want = sorted(want)
        elif opt == "engine_version":
            # "7.1" matches a running "7.1.0"
            if str(have).startswith(str(want)):
                continue
        if want != have:
            modify[key] = params[opt]
    for opt in IMMUTABLE:
        want = params.get(opt)
        if want is None or current.get(opt) is None:
            continue
        if want != current[opt]:
            immutable.append(opt)
    return modify, immutable


def primary_endpoint(group):
    """(address, port) of the primary endpoint, or None."""
    for node_group in group.get("NodeGroups") or []:
        ep = node_group.get("PrimaryEndpoint")
        if ep and ep.get("Address"):
            return ep["Address"], ep.get("Port")
    return None


def describe(client, group_id):
    try:
        groups = client.describe_replication_groups(ReplicationGroupId=group_id, aws_retry=True)
    except is_boto3_error_code("ReplicationGroupNotFoundFault"):
        return None
    return groups["ReplicationGroups"][0]


def describe_member(client, group):
    members = group.get("MemberClusters") or []
    if not members:
        return None
    try:
        clusters = client.describe_cache_clusters(CacheClusterId=members[0], aws_retry=True)
    except is_boto3_error_code("CacheClusterNotFound"):
        return None
    return clusters["CacheClusters"][0]


def wait_for(module, client, group_id, gone):
    deadline = time.time() + module.params["wait_timeout"]
    while time.time() < deadline:
        group = describe(client, group_id)
        if gone and group is None:
            return None
        if not gone and group is not None and group.get("Status") == "available":
            return group
        time.sleep(15)
    module.fail_json(msg=f"timed out waiting for replication group {group_id}")


def result(module, changed, group, diff):
    out = {"changed": changed, "replication_group": {}, "diff": diff}
    if group:
        out["replication_group"] = camel_dict_to_snake_dict(group, ignore_list=["Tags"])
        ep = primary_endpoint(group)
        if ep:
            out["primary_endpoint"], out["primary_port"] = ep
    module.exit_json(**out)


def main():
    argument_spec = dict(
        replication_group_id=dict(type="str", required=True, aliases=["name"]),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        description=dict(type="str"),
        engine=dict(type="str", choices=["redis", "valkey"], default="redis"),
        engine_version=dict(type="str"),
        cache_node_type=dict(type="str"),
        num_cache_clusters=dict(type="int"),
        preferred_cache_cluster_azs=dict(type="list", elements="str"),
        automatic_failover=dict(type="bool"),
        multi_az=dict(type="bool"),
        at_rest_encryption=dict(type="bool"),
        transit_encryption=dict(type="bool"),
        cache_subnet_group_name=dict(type="str"),
        security_group_ids=dict(type="list", elements="str"),
        snapshot_retention_limit=dict(type="int"),
        port=dict(type="int"),
        apply_immediately=dict(type="bool", default=True),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=1800),
        tags=dict(type="dict"),
    )
    module = AnsibleAWSModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    group_id = params["replication_group_id"]
    client = module.client("elasticache", retry_decorator=AWSRetry.jittered_backoff())

    try:
        group = describe(client, group_id)
        if params["state"] == "absent":
            if group is None:
                result(module, False, None, {"before": {}, "after": {}})
            # A group already being deleted counts as gone: no second delete call.
            deleting = group.get("Status") == "deleting"
            diff = {"before": {"replication_group_id": group_id}, "after": {}}
            if not module.check_mode:
                if not deleting:
                    client.delete_replication_group(ReplicationGroupId=group_id, aws_retry=True)
                if params["wait"]:
                    wait_for(module, client, group_id, gone=True)
            result(module, not deleting, None, {"before": {}, "after": {}} if deleting else diff)

        if group is None:
            req = build_create_params(params)
            diff = {"before": {}, "after": {k: v for k, v in params.items() if v is not None}}
            if module.check_mode:
                result(module, True, None, diff)
            client.create_replication_group(**req, aws_retry=True)
            group = describe(client, group_id)
            if params["wait"]:
                group = wait_for(module, client, group_id, gone=False)
            result(module, True, group, diff)

        current = current_settings(group, describe_member(client, group))
        modify, immutable = compare(params, current)
        if immutable:
            module.fail_json(
                msg="these settings cannot change on an existing replication group: "
                + ", ".join(immutable)
                + " (delete and re-create it)",
                replication_group=camel_dict_to_snake_dict(group, ignore_list=["Tags"]),
            )
        if not modify:
            result(module, False, group, {"before": current, "after": current})
        after = dict(current)
        reverse = {
            "ReplicationGroupDescription": "description",
            "CacheNodeType": "cache_node_type",
            "AutomaticFailoverEnabled": "automatic_failover",
            "MultiAZEnabled": "multi_az",
            "SnapshotRetentionLimit": "snapshot_retention_limit",
            "SecurityGroupIds": "security_group_ids",
            "EngineVersion": "engine_version",
        }
        for key, value in modify.items():
            after[reverse[key]] = value
        diff = {"before": current, "after": after}
        if module.check_mode:
            result(module, True, group, diff)
        client.modify_replication_group(
            ReplicationGroupId=group_id,
            ApplyImmediately=params["apply_immediately"],
            aws_retry=True,
            **modify,
        )
        group = describe(client, group_id)
        if params["wait"]:
            group = wait_for(module, client, group_id, gone=False)
        result(module, True, group, diff)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg=f"ElastiCache call failed for replication group {group_id}")


if __name__ == "__main__":
    main()

# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""cloudfront_drift: which of the settings we manage differ on a CloudFront distribution.

community.aws.cloudfront_distribution compares its whole generated config with the one the
API returns, so provider-filled defaults (ForwardedValues next to a cache policy, SSL
protocol lists, ...) make it report a change on every run. The edge role calls it only when
this filter finds a difference in the fields the role sets.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: cloudfront_drift
short_description: Differences between a CloudFront distribution config and the wanted settings
version_added: 0.1.0
description:
  - Compares a DistributionConfig (as returned by the API, CamelCase) with a small
    description of the wanted origins and behaviours and lists what differs.
  - A field the API does not report at all (for example C(OriginAccessControlId) on an API
    emulator) is not compared.
options:
  _input:
    description: The DistributionConfig, or null when there is no distribution.
    type: dict
    required: true
  wanted:
    description:
      - C(enabled), C(default_root_object), C(price_class), C(comment);
        C(origins) (id to C(domain_name), C(origin_access_control_id),
        C(origin_protocol_policy), C(origin_read_timeout), C(custom_headers) (header name
        to value; a difference is reported by header name only, never with the values));
        C(behaviors) (path pattern, or C(default), to C(target_origin_id),
        C(viewer_protocol_policy), C(cache_policy_id), C(origin_request_policy_id),
        C(allowed_methods)).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Decide whether the distribution needs an update
  ansible.builtin.set_fact:
    drift: "{{ current_config | canarychat.platform.cloudfront_drift(wanted) }}"
"""

RETURN = r"""
_value:
  description: Human-readable differences; empty when everything matches.
  type: list
  elements: str
"""

ORIGIN_FIELDS = {
    "domain_name": ("DomainName",),
    "origin_access_control_id": ("OriginAccessControlId",),
    "origin_protocol_policy": ("CustomOriginConfig", "OriginProtocolPolicy"),
    "origin_read_timeout": ("CustomOriginConfig", "OriginReadTimeout"),
}
BEHAVIOR_FIELDS = {
    "target_origin_id": ("TargetOriginId",),
    "viewer_protocol_policy": ("ViewerProtocolPolicy",),
    "cache_policy_id": ("CachePolicyId",),
    "origin_request_policy_id": ("OriginRequestPolicyId",),
    "allowed_methods": ("AllowedMethods", "Items"),
}
TOP_FIELDS = {
    "enabled": ("Enabled",),
    "default_root_object": ("DefaultRootObject",),
    "price_class": ("PriceClass",),
    "comment": ("Comment",),
}

_MISSING = object()


def _dig(data, path):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _same(want, have):
    if isinstance(want, list) and isinstance(have, list):
        return sorted(str(w) for w in want) == sorted(str(h) for h in have)
    if isinstance(want, bool) or isinstance(have, bool):
        return bool(want) == bool(have)
    if isinstance(want, int) or isinstance(have, int):
        try:
            return int(want) == int(have)
        except (TypeError, ValueError):
            return False
    return (want or "") == (have or "")


def _items(data, path):
    """A list at `path`, or [] when the API left it out."""
    items = _dig(data, path)
    return [] if items is _MISSING or not items else items


def _custom_headers(origin):
    items = _items(origin, ("CustomHeaders", "Items"))
    return {str(h.get("HeaderName", "")).lower(): h.get("HeaderValue") for h in items}


def _compare_headers(label, want, origin):
    """Custom origin headers: names compared case-insensitively, values exactly, and the
    message names only the headers (the values are secrets)."""
    have = _custom_headers(origin)
    want = {str(k).lower(): v for k, v in (want or {}).items()}
    names = sorted(n for n in set(have) | set(want) if have.get(n) != want.get(n))
    return [f"{label}: custom_headers differ ({', '.join(names)})"] if names else []


def _compare(label, wanted, current, fields):
    out = []
    if "custom_headers" in wanted:
        out += _compare_headers(label, wanted["custom_headers"], current)
        wanted = {k: v for k, v in wanted.items() if k != "custom_headers"}
    for name, want in sorted(wanted.items()):
        path = fields.get(name)
        if path is None:
            out.append(f"{label}: unknown setting {name}")
            continue
        have = _dig(current, path)
        if have is _MISSING:
            if path[-1] in ("OriginAccessControlId",):
                continue  # the API does not report the field: nothing to compare
            have = None
        if not _same(want, have):
            out.append(f"{label}: {name} is {have!r}, wanted {want!r}")
    return out


def cloudfront_drift(config, wanted):
    """List the differences between a DistributionConfig and the wanted settings."""
    if not config:
        return ["no distribution"]
    drift = []
    top = {k: v for k, v in wanted.items() if k in TOP_FIELDS}
    drift += _compare("distribution", top, config, TOP_FIELDS)

    origins = {o.get("Id"): o for o in _items(config, ("Origins", "Items")) if o}
    want_origins = wanted.get("origins") or {}
    for origin_id, want in sorted(want_origins.items()):
        if origin_id not in origins:
            drift.append(f"origin {origin_id}: missing")
            continue
        drift += _compare(f"origin {origin_id}", want, origins[origin_id], ORIGIN_FIELDS)
    for origin_id in sorted(set(origins) - set(want_origins)):
        drift.append(f"origin {origin_id}: not wanted")

    behaviors = {"default": config.get("DefaultCacheBehavior") or {}}
    for b in _items(config, ("CacheBehaviors", "Items")):
        behaviors[b.get("PathPattern")] = b
    want_behaviors = wanted.get("behaviors") or {}
    for path, want in sorted(want_behaviors.items()):
        if path not in behaviors:
            drift.append(f"behavior {path}: missing")
            continue
        drift += _compare(f"behavior {path}", want, behaviors[path], BEHAVIOR_FIELDS)
    for path in sorted(set(behaviors) - set(want_behaviors) - {"default"}):
        drift.append(f"behavior {path}: not wanted")
    return drift


class FilterModule(object):
    def filters(self):
        return {"cloudfront_drift": cloudfront_drift}

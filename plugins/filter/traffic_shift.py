# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""traffic_shift_range: the allowed range of a traffic_shift option, from the module's own
definition, so a playbook's input check and the module agree on one source."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: traffic_shift_range
short_description: The allowed range of a traffic_shift option
version_added: 0.1.0
description:
  - Returns C([lowest, highest]) of a numeric option of M(canarychat.platform.traffic_shift)
    as the module itself checks it, so an input check before the module runs (the deploy
    role's C(tasks/validate.yml)) uses the same numbers.
  - Known options are C(weight) (green's weight, a percentage).
options:
  _input:
    description: The option's name.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Refuse a weight outside what traffic_shift accepts
  vars:
    weight_range: "{{ 'weight' | canarychat.platform.traffic_shift_range }}"
  ansible.builtin.assert:
    that: weight | int >= weight_range[0] and weight | int <= weight_range[1]
"""

RETURN = r"""
_value:
  description: The lowest and the highest allowed value.
  type: list
  elements: int
  sample: [0, 100]
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.canarychat.platform.plugins.module_utils.traffic_shift.core import (
    WEIGHT_RANGE,
)

RANGES = {"weight": WEIGHT_RANGE}


def traffic_shift_range(option):
    if option not in RANGES:
        raise AnsibleFilterError("traffic_shift_range: no range for %r (known: %s)"
                                 % (option, ", ".join(sorted(RANGES))))
    return list(RANGES[option])


class FilterModule(object):
    def filters(self):
        return {"traffic_shift_range": traffic_shift_range}

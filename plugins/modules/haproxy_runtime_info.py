#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: haproxy_runtime_info
short_description: Ask HAProxy's runtime API a read-only question
version_added: 0.1.0
description:
  - Sends read-only commands (C(show ...), C(get ...)) to HAProxy's runtime API (its stats
    socket) and returns the answer, with the answers of C(get weight) and
    C(show servers state) parsed.
  - The same client as M(canarychat.platform.traffic_shift)'s haproxy driver uses; that
    module is the one that changes weights.
author:
  - canary-chat developers (@canary-chat)
options:
  socket:
    description:
      - HAProxy's runtime API, a UNIX socket path or C(host:port).
    type: str
    required: true
  command:
    description:
      - One runtime API command, or several separated by C(;) (HAProxy runs them in order
        on one connection).
      - Each must start with C(show ) or C(get ); anything else is refused before
        connecting.
    type: str
    required: true
  timeout:
    description: Seconds to wait for the connection and for each read.
    type: float
    default: 5.0
notes:
  - Supports check mode (it changes nothing).
  - Fails when the socket does not answer; with C(failed_when) set to false a caller can turn
    that into its own message (the result's C(msg) says what went wrong).
"""

EXAMPLES = r"""
- name: The live weights of chat/blue and chat/green
  canarychat.platform.haproxy_runtime_info:
    socket: /run/canary-chat/haproxy.sock
    command: get weight chat/blue; get weight chat/green
  register: lb

- name: Show them
  ansible.builtin.debug:
    msg: "blue {{ lb.weights['chat/blue'] }}, green {{ lb.weights['chat/green'] }}"

- name: Wait until chat/green runs (operational state 2)
  canarychat.platform.haproxy_runtime_info:
    socket: /run/canary-chat/haproxy.sock
    command: show servers state chat
  register: state
  until: >-
    (state.servers | selectattr('srv_name', 'eq', 'green')
     | map(attribute='srv_op_state') | first | default('0')) == '2'
  retries: 30
  delay: 1
"""

RETURN = r"""
output:
  description: HAProxy's whole answer, as it sent it.
  returned: success
  type: str
  sample: "10 (initial 10)\n\n90 (initial 90)\n\n"
output_lines:
  description: RV(output) split into lines.
  returned: success
  type: list
  elements: str
  sample: ["10 (initial 10)", "", "90 (initial 90)", ""]
weights:
  description:
    - The current weight of each server, keyed C(backend/server).
    - Only when every command is C(get weight <backend>/<server>).
  returned: when every command is get weight
  type: dict
  sample: {"chat/blue": 90, "chat/green": 10}
servers:
  description:
    - The rows of C(show servers state), each a dict keyed by HAProxy's header field
      names (C(be_name), C(srv_name), C(srv_op_state), C(srv_uweight), ...), values
      as strings.
  returned: when the command is show servers state
  type: list
  elements: dict
  sample: [{"be_name": "chat", "srv_name": "green", "srv_op_state": "2", "srv_uweight": "10"}]
"""

import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.canarychat.platform.plugins.module_utils.haproxy_runtime import (
    RuntimeAPI,
    RuntimeAPIError,
    parse_servers_state,
    parse_weights,
)

READ_ONLY = re.compile(r"^(show|get)\s")
GET_WEIGHT = re.compile(r"^get\s+weight\s+(\S+/\S+)$")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="str", required=True),
            command=dict(type="str", required=True),
            timeout=dict(type="float", default=5.0),
        ),
        supports_check_mode=True,
    )
    commands = [c.strip() for c in module.params["command"].split(";") if c.strip()]
    if not commands:
        module.fail_json(msg="no runtime API command given")
    refused = [c for c in commands if not READ_ONLY.match(c)]
    if refused:
        module.fail_json(msg="only read-only runtime API commands (show ..., get ...) are "
                             "allowed; refused: %s" % "; ".join(refused))

    api = RuntimeAPI(module.params["socket"], timeout=module.params["timeout"])
    result: dict[str, Any] = {"changed": False}
    try:
        output = api.run(";".join(commands))
        names = [m.group(1) for m in (GET_WEIGHT.match(c) for c in commands) if m]
        if len(names) == len(commands):
            values = parse_weights(names, output, ";".join(commands))
            result["weights"] = dict(zip(names, values))  # noqa: B905 - one per name
        elif len(commands) == 1 and re.match(r"^show\s+servers\s+state\b", commands[0]):
            try:
                result["servers"] = parse_servers_state(output)
            except ValueError as e:
                module.fail_json(msg="HAProxy at %s: %s" % (module.params["socket"], e),
                                 output=output)
    except RuntimeAPIError as e:
        module.fail_json(msg=str(e))
    result["output"] = output
    result["output_lines"] = output.splitlines()
    module.exit_json(**result)


if __name__ == "__main__":
    main()

"""HAProxy configuration for tests and the benchmark: the loadbalancer role's own template
(roles/loadbalancer/templates/haproxy.cfg.j2) rendered with Jinja2, the role's defaults and
the local inventory's values, with ports, paths and chosen knobs overridden. A test thus
runs HAProxy on the configuration the local stack runs, not on a copy written in Python.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from typing import Any

import jinja2
import yaml

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "roles/loadbalancer/templates/haproxy.cfg.j2"
ROLE_DEFAULTS = REPO / "roles/loadbalancer/defaults/main.yml"
LOCAL_VARS = REPO / "inventories/local/group_vars/all.yml"


def render_haproxy_cfg(*, lb_port: int, admin_port: int, blue_port: int, green_port: int,
                       run_dir: str | Path, state_dir: str | Path,
                       weights: tuple[int, int] = (90, 10), runtime_api_tcp_port: int | None = None,
                       **knobs: Any) -> str:
    """The role's haproxy.cfg for a stack on these ports. HAProxy's runtime API socket is
    <run_dir>/haproxy.sock, its server-state file <state_dir>/haproxy.state; it runs as the
    current user (the role's unprivileged user exists only on a provisioned machine).
    `knobs` override role or inventory variables by name (loadbalancer_local_check_inter_ms,
    local_allowed_hosts, ...). `runtime_api_tcp_port` adds a second runtime API socket on
    127.0.0.1 (traffic_shift accepts host:port; the role itself only opens the UNIX one)."""
    defaults = yaml.safe_load(ROLE_DEFAULTS.read_text())
    local = yaml.safe_load(LOCAL_VARS.read_text())
    me = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    context: dict[str, Any] = {
        **defaults,
        "ansible_managed": "rendered for a test by tests/haproxy_config.py",
        "local_bind_address": "127.0.0.1",
        "local_lb_port": lb_port,
        "local_admin_port": admin_port,
        "local_blue_port": blue_port,
        "local_green_port": green_port,
        "local_run_dir": str(run_dir),
        "local_state_dir": str(state_dir),
        "local_haproxy_stats_uri": local["local_haproxy_stats_uri"],
        # what the inventory's expression gives for the loopback bind address
        "local_allowed_hosts": [f"127.0.0.1:{lb_port}", f"localhost:{lb_port}"],
        "local_users": {**local["local_users"], "haproxy": me},
        "loadbalancer_initial_weights": {"blue": weights[0], "green": weights[1]},
        **knobs,
    }
    # trim_blocks as ansible.builtin.template renders it
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True)
    text = env.from_string(TEMPLATE.read_text()).render(context)
    # HAProxy's `group` is the user's own group here, not one named after the user
    text = text.replace(f"    group {me}\n", f"    group {group}\n")
    if runtime_api_tcp_port is not None:
        unix = f"    stats socket {run_dir}/haproxy.sock mode 600 level admin\n"
        assert unix in text, "the role's template no longer opens the runtime API socket"
        text = text.replace(unix, unix + f"    stats socket ipv4@127.0.0.1:{runtime_api_tcp_port}"
                                          " level admin\n")
    return text

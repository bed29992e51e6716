# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see galaxy.yml)
"""The one client of HAProxy's runtime API (the stats socket) in this collection, and
parsers of its answers.

Used by traffic_shift's haproxy driver, by the haproxy_runtime_info module (what the roles
ask HAProxy) and by the tests. No Ansible imports: plain sockets and text.
"""

from __future__ import annotations

import csv
import io
import re
import socket


class RuntimeAPIError(Exception):
    """HAProxy's runtime API could not be reached or gave an answer we cannot read."""


class RuntimeAPI(object):
    """A minimal client of HAProxy's runtime API: one command line per connection
    (commands separated by ';' run in order on that connection)."""

    def __init__(self, address, timeout=5.0):
        self.address = address
        self.timeout = timeout

    def _connect(self):
        if "/" in self.address or ":" not in self.address:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = self.address
        else:
            host, port = self.address.rsplit(":", 1)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = (host.strip("[]") or "127.0.0.1", int(port))
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except OSError as e:
            sock.close()
            raise RuntimeAPIError("cannot connect to the HAProxy runtime API at %s: %s"
                                  % (self.address, e)) from e
        return sock

    def run(self, command):
        sock = self._connect()
        try:
            sock.sendall(command.encode("utf-8") + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            raise RuntimeAPIError("HAProxy runtime API %s: %s" % (self.address, e)) from e
        finally:
            sock.close()
        return b"".join(chunks).decode("utf-8", "replace")

    def get_weights(self, servers):
        """The current weight of each "backend/server" in `servers`, in one connection."""
        cmd = weights_command(servers)
        return parse_weights(servers, self.run(cmd), cmd)


def weights_command(servers):
    """The command line reading the weight of each "backend/server" in `servers`."""
    return ";".join("get weight %s" % name for name in servers)


def parse_weights(servers, out, cmd):
    """The weights in `out`, HAProxy's answer to `cmd` = weights_command(servers): one
    "10 (initial 10)" per server, in order."""
    parts = [p for p in out.split("\n") if p.strip()]
    if len(parts) != len(servers):
        raise RuntimeAPIError("unexpected answer to %r: %r" % (cmd, out.strip()))
    weights = []
    for name, answer in zip(servers, parts):  # noqa: B905 - same length, checked above
        try:
            weights.append(parse_get_weight(answer))
        except ValueError:
            raise RuntimeAPIError("HAProxy cannot read the weight of %s: %s"
                                  % (name, answer.strip())) from None
    return weights


def parse_show_stat(text):
    """Parse the CSV of the runtime API's `show stat` into a list of dicts."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise ValueError("not a `show stat` answer: %r" % (text[:200],))
    header = lines[0][2:]
    rows = []
    for row in csv.DictReader(io.StringIO("\n".join([header, *lines[1:]]))):
        rows.append({k: v for k, v in row.items() if k and k != "-"})
    return rows


def stat_row(rows, backend, server):
    for row in rows:
        if row.get("pxname") == backend and row.get("svname") == server:
            return row
    return None


def parse_get_weight(text):
    """`get weight chat/green` answers "10 (initial 10)"."""
    m = re.match(r"\s*(\d+)", text)
    if not m:
        raise ValueError("unexpected `get weight` answer: %r" % (text.strip(),))
    return int(m.group(1))


def parse_servers_state(text):
    """Parse `show servers state [<backend>]` into a list of dicts keyed by the header's
    field names (be_name, srv_name, srv_op_state, srv_uweight, ...).

    The answer is a format version line ("1"), a "# "-prefixed header of space-separated
    field names, then one space-separated row per server."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = next((ln for ln in lines if ln.startswith("# ")), None)
    if header is None:
        raise ValueError("not a `show servers state` answer: %r" % (text[:200],))
    names = header[2:].split()
    rows = []
    for line in lines[lines.index(header) + 1:]:
        if line.startswith("#"):
            continue
        values = line.split()
        rows.append({name: values[i] for i, name in enumerate(names) if i < len(values)})
    return rows

# -*- coding: utf-8 -*-
# Copyright: canary-chat developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""admin_signature: the Authorization header of a signed call to the chat's admin API.

The chat's verifier is chat/adminauth.py; both build the same string to sign (the scheme is
in docs/protocol.md). This file does not import the chat: the collection ships without it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: admin_signature
short_description: Authorization header for a signed, single-use call to the chat's admin API
version_added: 0.1.0
description:
  - Returns C(Canary-HMAC-SHA256 t=<unix seconds>,n=<nonce>,s=<signature>), where the
    signature is the hex HMAC-SHA256, keyed with the admin token, of the method (upper case),
    the path, t, n and the hex SHA-256 of the body, joined by newlines.
  - The chat accepts it within C(CHAT_ADMIN_SKEW_SECONDS) (60 by default) of its clock, and
    only once, so the header is no replayable credential, unlike C(Bearer <token>).
  - Send the body byte for byte as signed, that is as the same string with
    C(body_format=raw); a body that Ansible serialises itself may differ.
options:
  _input:
    description: The admin token (the HMAC key, UTF-8).
    type: str
    required: true
  method:
    description: The HTTP method, for example C(POST).
    type: str
    required: true
  path:
    description: The request path exactly as sent, without scheme, host or query string.
    type: str
    required: true
  body:
    description: The request body exactly as sent (a string is encoded as UTF-8).
    type: str
    default: ''
  timestamp:
    description: Unix seconds to sign; the controller's clock when omitted.
    type: int
  nonce:
    description:
      - 16 to 64 of C(A-Z a-z 0-9 _ -); 32 random hex digits when omitted.
      - Each nonce is accepted once; give one only to reproduce a known signature.
    type: str
"""

EXAMPLES = r"""
- name: Drain green through the public URL with a signed request
  vars:
    drain_body: "{{ {'color': 'green'} | to_json }}"
  ansible.builtin.uri:
    url: "{{ chat_url }}/api/admin/drain"
    method: POST
    headers:
      Authorization: >-
        {{ admin_token | canarychat.platform.admin_signature('POST', '/api/admin/drain',
                                                              drain_body) }}
      Content-Type: application/json
    body_format: raw
    body: "{{ drain_body }}"
    status_code: 202
  no_log: true
"""

RETURN = r"""
_value:
  description: The value of the Authorization header.
  type: str
  sample: Canary-HMAC-SHA256 t=1796572800,n=0f1e2d3c4b5a69788796a5b4c3d2e1f0,s=5d41...
"""

import hashlib
import hmac
import re
import secrets
import time

from ansible.errors import AnsibleFilterError

SCHEME = "Canary-HMAC-SHA256"
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _bytes(value, what):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise AnsibleFilterError(
        "admin_signature: %s must be a string (serialise the body first, for example with "
        "to_json, and send that same string), got %s" % (what, type(value).__name__))


def admin_signature(token, method, path, body="", timestamp=None, nonce=None):
    """The Authorization header value of one signed admin request."""
    key = _bytes(token, "the token")
    if not key:
        raise AnsibleFilterError("admin_signature: the token is empty")
    if not isinstance(method, str) or not method.strip():
        raise AnsibleFilterError("admin_signature: method must be an HTTP method")
    if not isinstance(path, str) or not path.startswith("/") or "?" in path:
        raise AnsibleFilterError("admin_signature: path must start with / and hold no query")
    payload = _bytes("" if body is None else body, "body")
    t = int(time.time()) if timestamp is None else int(timestamp)
    n = secrets.token_hex(16) if nonce is None else str(nonce)
    if not _NONCE.fullmatch(n):
        raise AnsibleFilterError("admin_signature: nonce must be 16-64 of A-Z a-z 0-9 _ -")
    to_sign = "\n".join((method.strip().upper(), path, str(t), n,
                         hashlib.sha256(payload).hexdigest())).encode("utf-8")
    sig = hmac.new(key, to_sign, hashlib.sha256).hexdigest()
    return "%s t=%d,n=%s,s=%s" % (SCHEME, t, n, sig)


class FilterModule(object):
    def filters(self):
        return {"admin_signature": admin_signature}

"""A kept-alive DynamoDB call straight to moto's DynamoHandler.

On a kept-alive DynamoDB request (keep_alive) the server calls moto's DynamoHandler itself
(`dynamodb_call`), without werkzeug's WSGI round, Flask and moto's per-request backend lookup
under a process-wide lock, and writes no access-log line; `speed_up_server` caches what moto
recomputes per request and parses plain request headers without the email package. The
emulator's CPU per call is about half or less of the full path's (docs/benchmarks.md); what
moto computes is the same. EMULATOR_FAST_PATH=0 sends every request through werkzeug and
Flask, as moto_server answers it (tests compare the two paths' answers).

Tests: tests/integration/test_dynamodb_emulator_fastpath.py (same answers as the full path),
tests/unit/test_dynamodb_emulator.py (the header parser).
"""

from __future__ import annotations

import email.parser
import http.client
import os
import sys
from io import BytesIO
from typing import Any

from botocore.exceptions import ClientError
from moto.core.request import Request
from moto.dynamodb.responses import DynamoHandler

# EMULATOR_FAST_PATH=0: every request through werkzeug and Flask, as moto_server answers it
# (tests compare the two paths' answers)
FAST_PATH = os.environ.get("EMULATOR_FAST_PATH", "1") != "0"


def dynamodb_call(method: str, path: str, headers: Any, body: bytes,
                  server: tuple[Any, ...]) -> tuple[int, dict[str, Any], Any]:
    """moto's answer to one DynamoDB JSON-protocol request: (status, headers, body).

    What moto's server does between the socket and `DynamoHandler.dispatch`, minus the
    parts that serve other services: werkzeug's WSGI round, Flask's request context and
    dispatch, and moto's DomainDispatcherApplication, which looks up the backend under a
    process-wide lock on every request. Those were about two thirds of the emulator's CPU
    per call (py-spy): the same request object (moto's `Request`, as its Flask app builds
    it), the same handler, the same answer."""
    target, _, query = path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": target or "/",
        "QUERY_STRING": query, "RAW_URI": path, "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]), "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "wsgi.input": BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for name, value in headers:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        elif "_" not in name:  # as werkzeug: a header spelled with "_" is dropped
            environ["HTTP_" + key] = value
    request = Request(environ)
    request.from_wsgi_server = True  # type: ignore[misc]  # the server adds Date
    try:
        result = DynamoHandler.dispatch(request, request.raw_url, dict(request.headers))
    except ClientError as exc:  # as moto's convert_to_flask_response
        result = 400, {}, exc.response["Error"]["Message"]
    if len(result) == 3:
        status, out, content = result
    else:
        status, out, content = 200, {}, result
    return int(status), dict(out), content


def _fast_parse_headers(fp: Any, _class: Any = None) -> Any:
    """http.client.parse_headers without the email package's feed parser for the plain
    case (one `Name: value` per line): the same HTTPMessage, a sixth of the emulator's CPU
    per call less. Folded or malformed lines go to the email parser as before."""
    cls = _class or http.client.HTTPMessage
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]
    msg = cls()
    for raw in lines:
        if raw in (b"\r\n", b"\n", b""):
            break
        name, sep, value = raw.decode("iso-8859-1").partition(":")
        if not sep or not name or name != name.strip() or raw[:1] in (b" ", b"\t"):
            return email.parser.Parser(_class=cls).parsestr(
                b"".join(lines).decode("iso-8859-1"))
        msg[name] = value.lstrip(" \t").rstrip("\r\n")
    return msg


def speed_up_server() -> None:
    """What the server spends per request that moto recomputes needlessly."""
    import functools

    import moto.core.responses

    # The method names of a handler class, from inspect.getmembers on every call.
    moto.core.responses.method_names_from_class = functools.lru_cache(maxsize=None)(
        moto.core.responses.method_names_from_class)
    http.client.parse_headers = _fast_parse_headers  # type: ignore[assignment]

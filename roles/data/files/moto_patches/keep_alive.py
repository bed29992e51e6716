"""HTTP/1.1 keep-alive for DynamoDB's connections.

moto's server (werkzeug's) closes the connection after every response, so every DynamoDB
call would pay a new TCP connection and a new server thread: a cost real DynamoDB
(keep-alive HTTPS) does not have, and the largest part of a send's latency on the emulator.
`handler()` is moto's request handler keeping DynamoDB's connections open: only for requests
of the DynamoDB JSON protocol with a Content-Length body, which moto always reads whole; every
other request (other services, the moto API) is answered by moto's handler and its connection
closed. It is also where the other server-side pieces act on a request: the key check
(sigv4_key) and the fast path (fast_path).

Test: tests/integration/test_dynamodb_emulator_keepalive.py.
"""

from __future__ import annotations

import threading
from typing import Any

from .fast_path import FAST_PATH, dynamodb_call
from .sigv4_key import REQUIRED_KEY, check_signature


class _NoDrainSelectors:
    """werkzeug's `selectors` as seen by its request handler: after each response it reads
    whatever else is on the socket (10 ms wait, then a blocking read of up to 10 MB) to
    discard an unread body before closing. On a kept-alive connection that is the next
    request: a connection this handler keeps open is not drained."""

    keeping = threading.local()
    EVENT_READ = 1  # selectors.EVENT_READ


    def DefaultSelector(self) -> Any:  # the name werkzeug calls
        import selectors

        sel = selectors.DefaultSelector()
        if getattr(self.keeping, "on", False):
            sel.select = lambda timeout=None: []  # type: ignore[method-assign]
        return sel


def handler() -> Any:
    """moto's request handler, keeping DynamoDB JSON-protocol connections open."""
    import werkzeug.serving
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    werkzeug.serving.selectors = _NoDrainSelectors()  # type: ignore[assignment]

    class KeepAliveHandler(MotoRequestHandler):
        protocol_version = "HTTP/1.1"
        # werkzeug writes the headers and the body apart: with Nagle on, the body waits
        # for the client's delayed ACK of the headers (~40 ms) once connections stay open
        disable_nagle_algorithm = True

        def run_wsgi(self) -> None:
            if REQUIRED_KEY is not None:
                self._signed_only(REQUIRED_KEY)
                return
            keep = self._keep_alive()
            if keep and FAST_PATH:
                self._dynamodb()
                return
            _NoDrainSelectors.keeping.on = keep
            try:
                super().run_wsgi()
            finally:
                _NoDrainSelectors.keeping.on = False

        def _signed_only(self, key: tuple[str, str]) -> None:
            """Only DynamoDB JSON requests signed with `key` reach moto (sigv4_key)."""
            h = self.headers
            length = h.get("Content-Length") or ""
            if (not h.get("X-Amz-Target", "").startswith("DynamoDB_")
                    or not length.isdigit() or h.get("Transfer-Encoding") is not None):
                self.close_connection = True
                self._refuse(403, "AccessDeniedException",
                             "this emulator answers signed DynamoDB requests only")
                return
            body = self.rfile.read(int(length))
            error = check_signature(self.command, self.path, h, body, key)
            if error is not None:
                self._refuse(400, *error)
                return
            self._dynamodb(body)

        def _refuse(self, status: int, kind: str, message: str) -> None:
            import json

            data = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{kind}",
                               "message": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dynamodb(self, body: bytes | None = None) -> None:
            """A DynamoDB JSON call straight to moto's DynamoHandler (fast_path)."""
            if body is None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                status, headers, content = dynamodb_call(self.command, self.path,
                                                         self.headers.items(), body,
                                                         self.server.server_address)
            except Exception:  # as Flask: logged, answered 500 with werkzeug's page
                import traceback

                from werkzeug.exceptions import InternalServerError

                self.log_error("%s", traceback.format_exc())
                status, content = 500, InternalServerError().get_body()
                headers = {"Content-Type": "text/html; charset=utf-8"}
            data = content if isinstance(content, bytes) else str(content).encode("utf-8")
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in ("content-length", "connection",
                                       "transfer-encoding", "server", "date"):
                    self.send_header(key, str(value))
            if status != 500 and not any(k.lower() == "access-control-allow-origin"
                                         for k in headers):
                self.send_header("Access-Control-Allow-Origin", "*")  # moto's Flask CORS
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() == "connection" and value.lower() == "close" \
                    and self._keep_alive():
                return  # werkzeug's unconditional close; the response is framed
            super().send_header(keyword, value)

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            """No access log line per request: at a few hundred calls per second the
            logging lock and the write were a fifth of the emulator's time (py-spy).
            Errors are still logged (log_error)."""

        def _keep_alive(self) -> bool:
            h = self.headers
            return (h.get("X-Amz-Target", "").startswith("DynamoDB_")
                    and h.get("Content-Length") is not None
                    and h.get("Transfer-Encoding") is None
                    and h.get("Connection", "").lower() != "close")

    return KeepAliveHandler

"""The WebSocket seam: Sanic's connection made lean, frame bytes, the Transport interface.

- `lean.py`: `LeanWebsocket` (frames to a callback, no per-connection tasks) and the one
  `Pinger` per process; `install()` makes Sanic's handshake create LeanWebsockets and is
  called by the server factory (`chat.app.create_app`); `LeanWebSocketProtocol` is the
  server protocol class `chat.cli` runs Sanic with.
- `frame.py`: `text_frame`, a server text frame's bytes.
- `transport.py`: `Transport`, the methods client logic (`chat.rooms.Client`) uses.

Only this package touches Sanic's and websockets' connection internals.
"""

from .frame import text_frame
from .lean import LeanWebsocket, LeanWebSocketProtocol, Pinger, install
from .transport import Transport

__all__ = ["LeanWebSocketProtocol", "LeanWebsocket", "Pinger", "Transport", "install",
           "text_frame"]

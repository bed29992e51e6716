"""Server-to-client WebSocket frame bytes, built once per message and shared."""

from __future__ import annotations

import struct


def text_frame(text: str) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (server to client, RFC 6455 5.2).

    Built once per message and written as is to every recipient's transport. No extension
    is ever negotiated with our clients (no permessage-deflate), so the bytes are the same
    for all of them.
    """
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload

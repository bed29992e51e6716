"""A chat message as the store returns it and clients receive it (no I/O, no wire code).

`Message` is the decoded record: `{"type": "message", "room", "seq", "user_id", "name",
"text", "ts", "color"}`. `chat.store` builds it from DynamoDB items; `chat.protocol`
encodes it into the `message` frame (the same keys); `chat.rooms` and `chat.sends` pass it
on. A sequence number with no message (void, skipped) is `None` where a `Message` may be.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


def message(*, room: str, seq: int, user_id: int, name: str, text: str, ts: int,
            color: str) -> Message:
    return {"type": "message", "room": room, "seq": seq, "user_id": user_id, "name": name,
            "text": text, "ts": ts, "color": color}

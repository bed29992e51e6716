"""The wire protocol, pure: validate queries and frames, encode frames. No I/O here.

docs/protocol.md is the prose version of this module.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .message import message

MAX_TEXT = 2000  # characters of message text
MAX_FRAME = 16 * 1024  # bytes; larger frames close the connection with 1009
MAX_CLIENT_ID = 64
HISTORY_DEFAULT = 50  # messages in the history frame without `since`
HISTORY_SINCE_MAX = 1000  # messages in the history frame with `since`
API_LIMIT_MAX = 1000

# Close codes the server uses.
CLOSE_POLICY = 1008  # repeated rate-limit violations (Config.rate_strikes)
CLOSE_TOO_BIG = 1009  # sent by the WebSocket layer (WEBSOCKET_MAX_SIZE)
CLOSE_GOING_AWAY = 1012  # "service restart": drained instance closing the rest
CLOSE_TRY_LATER = 1013  # too slow to keep up, or storage down at join

# Room and nickname: 1-32 of letters (any script, Hangul included), digits, space, _ - .
_NAME_RE = re.compile(r"^[^\W_]|[ _.\-]")
_SINCE_RE = re.compile(r"^[0-9]{1,15}$")
_COLOR_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
_SPACES_RE = re.compile(r" {2,}")
# Invisible in a name: Unicode's Default_Ignorable_Code_Point set (soft hyphen, ZWSP/ZWNJ/
# ZWJ, bidi controls, word joiners, variation selectors, BOM, tags...) and the Hangul
# fillers, which are letters (Lo) and so pass the charset rule while showing nothing.
_INVISIBLE_RE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID = "invalid"
    TOO_LONG = "too_long"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


class ProtocolError(Exception):
    """A client frame the server answers with an error frame (the connection stays open)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def valid_name(value: str) -> bool:
    """Room or nickname: 1-32 allowed characters, not only spaces, nothing invisible."""
    if not 1 <= len(value) <= 32 or not value.strip() or _INVISIBLE_RE.search(value):
        return False
    return all(_NAME_RE.match(ch) for ch in value)


def normalise_name(value: str) -> str:
    """A nickname as shown: NFKC (fullwidth and compatibility forms folded to their plain
    letters, the Unicode spaces to U+0020), runs of spaces made one, trimmed. Control
    characters (a newline, a tab) are left for `valid_name` to refuse.

    Look-alikes from other scripts (Cyrillic `а` for Latin `a`) stay: they are letters of
    their script; the web client tells equal-looking names apart by a per-user mark.
    """
    return _SPACES_RE.sub(" ", unicodedata.normalize("NFKC", value)).strip(" ")


def valid_color(value: str) -> bool:
    return bool(_COLOR_RE.match(value))


@dataclass(frozen=True)
class JoinQuery:
    room: str
    name: str
    since: int | None


def parse_join_query(args: Mapping[str, list[str]]) -> JoinQuery:
    """Validate the `/ws` query (`room`, `name`, optional `since`); ValueError says why."""
    room = _single(args, "room")
    name = _single(args, "name")
    if name is not None:
        name = normalise_name(name)
    if room is None or not valid_name(room):
        raise ValueError("room must be 1-32 letters, digits, spaces or _-.")
    if name is None or not valid_name(name):
        raise ValueError("name must be 1-32 letters, digits, spaces or _-.")
    return JoinQuery(room, name, parse_since(_single(args, "since")))


def parse_since(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not _SINCE_RE.match(raw):
        raise ValueError("since must be a non-negative integer")
    return int(raw)


def parse_limit(raw: str | None, default: int = HISTORY_DEFAULT) -> int:
    if raw is None or raw == "":
        return default
    if not _SINCE_RE.match(raw) or not 1 <= int(raw) <= API_LIMIT_MAX:
        raise ValueError(f"limit must be an integer from 1 to {API_LIMIT_MAX}")
    return int(raw)


def _single(args: Mapping[str, list[str]], key: str) -> str | None:
    values = args.get(key)
    if not values:
        return None
    if len(values) != 1:
        raise ValueError(f"{key} given more than once")
    return values[0]


@dataclass(frozen=True)
class SendFrame:
    text: str
    client_id: str


@dataclass(frozen=True)
class PingFrame:
    pass


ClientFrame = SendFrame | PingFrame


def parse_client_frame(data: str | bytes) -> ClientFrame:
    """Parse one frame from a client; raises ProtocolError with the code to answer."""
    if isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(ErrorCode.INVALID, "binary frames are not supported")
    try:
        obj = json.loads(data)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is not valid JSON") from None
    except RecursionError:  # a few thousand nested brackets fit in one 16 KiB frame
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID, "frame must be a JSON object")
    kind = obj.get("type")
    if kind == "send":
        return _parse_send(obj)
    if kind == "ping":
        return PingFrame()
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "type must be one of: send, ping")


def _parse_send(obj: dict[str, Any]) -> SendFrame:
    text = obj.get("text")
    client_id = obj.get("client_id")
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= MAX_CLIENT_ID \
            or not client_id.isprintable():
        raise ProtocolError(ErrorCode.INVALID,
                            f"client_id must be a string of 1-{MAX_CLIENT_ID} characters")
    if not isinstance(text, str):
        raise ProtocolError(ErrorCode.INVALID, "text must be a string")
    if not _encodable(text):
        raise ProtocolError(ErrorCode.INVALID, "text holds a lone surrogate (not Unicode text)")
    if len(text) > MAX_TEXT:
        raise ProtocolError(ErrorCode.TOO_LONG, f"text is over {MAX_TEXT} characters")
    if not text.strip():
        raise ProtocolError(ErrorCode.INVALID, "text is empty")
    return SendFrame(text=text, client_id=client_id)


def _encodable(text: str) -> bool:
    """False for text with a lone surrogate (`"\\udc80"` in JSON): no UTF-8 exists for it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- encoding (server -> client) ---

def encode(frame: Mapping[str, Any]) -> str:
    """One canonical JSON text per frame: the same message always encodes to the same str."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


message_frame = message  # the `message` frame is the stored record (chat/message.py)


def message_order(frame: str) -> tuple[int, int]:
    """(seq, ts) of a `message` frame this protocol encoded, for ordering it.

    Instances pass messages to each other through Redis as the client's own frame text,
    so every version in a canary reads the others' messages (docs/architecture.md)."""
    msg = json.loads(frame)
    return int(msg["seq"]), int(msg["ts"])


def error_frame(code: ErrorCode, message: str) -> str:
    return encode({"type": "error", "code": code.value, "message": message})


def ack_frame(client_id: str, seq: int) -> str:
    return encode({"type": "ack", "client_id": client_id, "seq": seq})


def welcome_frame(*, user_id: int, name: str, room: str, color: str, version: str,
                  server: str, seq: int) -> str:
    return encode({"type": "welcome", "user_id": user_id, "name": name, "room": room,
                   "color": color, "version": version, "server": server, "seq": seq})


def history_frame(messages: list[dict[str, Any]], more: bool = False) -> str:
    return encode({"type": "history", "messages": messages, "more": more})


def history_frame_of(frames: list[str], more: bool = False) -> str:
    """history_frame() of messages already encoded (each `encode(message)`): the same text,
    without decoding and encoding them again."""
    tail = '],"more":true}' if more else '],"more":false}'
    return '{"type":"history","messages":[' + ",".join(frames) + tail


def presence_frame(by_color: Mapping[str, int]) -> str:
    return encode({"type": "presence", "online": sum(by_color.values()),
                   "by_color": dict(sorted(by_color.items()))})


MIGRATE_FRAME = encode({"type": "migrate"})
PONG_FRAME = encode({"type": "pong"})

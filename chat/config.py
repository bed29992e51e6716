"""Service configuration: environment variables first, command-line options over them."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "")
    return float(raw) if raw.strip() else default


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "")
    return int(raw) if raw.strip() else default


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{key} must be 1 or 0")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in raw.split(",") if x.strip())


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def _hosts(raw: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in raw.split(",") if h.strip())


@dataclass(frozen=True)
class Config:
    """Everything the chat service reads from its environment (defaults in brackets).

    CHAT_HOST [127.0.0.1], CHAT_PORT [8000], CHAT_COLOR [blue], CHAT_VERSION [v1],
    CHAT_INSTANCE_ID [<color>-<hostname>-<pid>], REDIS_URL [redis://127.0.0.1:6379/0],
    AWS_REGION [ap-northeast-2], AWS_ENDPOINT_URL_DYNAMODB [unset: real DynamoDB],
    CHAT_TABLE_MESSAGES [messages], CHAT_TABLE_CONNECTIONS [connections],
    CHAT_TABLE_USER_COUNTER [user-counter], CHAT_ADMIN_TOKEN [unset: admin API off],
    CHAT_ADMIN_BEARER [1: `Bearer <token>` accepted besides signed calls; 0: signed only],
    CHAT_ADMIN_SKEW_SECONDS [60: a signed admin call's timestamp may differ this much from
    the clock] (chat/adminauth.py),
    CHAT_FAULT_RATE [0], CHAT_DRAIN_SECONDS [10], CHAT_STATIC_DIR [unset],
    CHAT_ALLOWED_ORIGINS [unset: same origin only; `*` allows any; else a comma list],
    CHAT_ALLOWED_HOSTS [unset: any Host; else a comma list of `name` (any port) or
    `name:port`: every other Host, the /ws handshake included, gets 421 (DNS rebinding);
    /healthz, /readyz and /metrics are exempt],
    CHAT_REQUEST_TIMEOUT [10 s from accepting a connection to the whole request: 408 after],
    CHAT_RATE_STRIKES [50 `rate_limited` answers within CHAT_RATE_STRIKE_WINDOW [10 s]
    close the WebSocket with 1008; 0: never],
    CHAT_SEND_QUEUE [1000 frames per connection],
    CHAT_SLOW_SECONDS [5: a send stuck this long while frames wait closes with 1013],
    CHAT_PING_INTERVAL [20 s], CHAT_PING_TIMEOUT [20 s of silence after a ping: close 1011],
    CHAT_GAP_WAIT [0.3 s], CHAT_GAP_SKIP [5 s], CHAT_RATE_PER_S [5], CHAT_RATE_BURST [10],
    CHAT_SOCKET_SNDBUF [65536 bytes of kernel send buffer per WebSocket; 0: OS default],
    CHAT_LOG_LEVEL [INFO],
    CHAT_DYNAMODB_CLIENT [ddb: the hot calls through chat/ddb.py, a keep-alive JSON-protocol
    client; `botocore`: every call through aioboto3, kept to compare the two],
    CHAT_SEQ_BATCH [50: concurrent sends of one room (and joins) share one counter ADD of up
    to this many numbers; 0 or 1: one ADD per send, no batching],
    CHAT_HISTORY_MEMORY [1000: numbers (messages and voids) each room keeps in memory to
    answer joins' history without a Query; 0: off; 0-100000],
    CHAT_USER_ID_BLOCK [100: user ids leased per counter ADD, handed to joins without a
    round trip; 1: one ADD per join, concurrent joins sharing it (CHAT_SEQ_BATCH); 1-10000],
    CHAT_GC_FULL_EVERY [100: collections of Python's cyclic GC's middle generation between
    two full collections (gc.set_threshold's threshold2; Python's own is 10); 1-100000],
    CHAT_FLUSH_INTERVAL [0.1 s: the longest a message of a room with CHAT_FLUSH_MEMBERS
    or more clients on this instance waits to be written with others; 0: every message at
    once], CHAT_FLUSH_MEMBERS [200], CHAT_FLUSH_DUTY [0.5: such a room's writes take at
    most this share of the event loop: after a flush that took c seconds, the next waits
    until c / duty (at most the interval) has passed since it began; 0: always the whole
    interval], CHAT_FLUSH_BATCH [8: a waiting flush goes early once this many messages
    wait],
    CHAT_CLOUDWATCH [0: publish nothing; 1: per-color metrics to CloudWatch, chat/cloudwatch.py],
    CHAT_CLOUDWATCH_NAMESPACE [CanaryChat; with CHAT_CLOUDWATCH unset, setting it turns
    publishing on],
    CHAT_CLOUDWATCH_INTERVAL [10 s between PutMetricData batches; 1-60],
    CHAT_TARGET_GROUP_ARNS [unset: no watcher; a comma list: drain when this task's target
    turns draining in one of them, chat/targetwatch.py], CHAT_TARGET_ID [unset: the task's IP
    from ECS_CONTAINER_METADATA_URI_V4], CHAT_TARGET_PORT [CHAT_PORT],
    CHAT_TARGET_POLL_SECONDS [5],
    CHAT_WEIGHTS_HAPROXY_URL [unset; else HAProxy's stats CSV URL, e.g.
    http://127.0.0.1:8079/_haproxy/stats;csv: the board's weights read from there],
    CHAT_WEIGHTS_HAPROXY_BACKEND [chat: the backend whose servers blue and green carry them],
    CHAT_WEIGHTS_LISTENER_ARN [unset; else the ALB listener whose weighted forward the board
    shows, with CHAT_WEIGHTS_BLUE_TARGET_GROUP_ARN and CHAT_WEIGHTS_GREEN_TARGET_GROUP_ARN],
    CHAT_WEIGHTS_POLL_SECONDS [2] (chat/lbweights.py; neither source set: the weights of the
    last canary event only).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    color: str = "blue"
    version: str = "v1"
    instance_id: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    aws_region: str = "ap-northeast-2"
    dynamodb_endpoint: str | None = None
    table_messages: str = "messages"
    table_connections: str = "connections"
    table_user_counter: str = "user-counter"
    admin_token: str | None = None
    # `Authorization: Bearer <token>` accepted (besides Canary-HMAC-SHA256 signed calls)
    admin_bearer: bool = True
    # seconds a signed admin call's timestamp may be off the server clock either way
    admin_skew: float = 60.0
    fault_rate: float = 0.0
    drain_seconds: float = 10.0
    static_dir: str | None = None
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    request_timeout: float = 10.0
    rate_strikes: int = 50
    rate_strike_window: float = 10.0
    send_queue: int = 1000
    slow_seconds: float = 5.0
    socket_sndbuf: int = 65536
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    gap_wait: float = 0.3
    gap_skip: float = 5.0
    rate_per_s: float = 5.0
    rate_burst: int = 10
    log_level: str = "INFO"
    # which client makes the hot DynamoDB calls: "ddb" (chat/ddb.py) or "botocore" (aioboto3)
    dynamodb_client: str = "ddb"
    # most sequence numbers (or user ids) one counter ADD takes at once; <= 1: no batching
    seq_batch: int = 50
    # user ids one counter ADD leases to this instance (store.next_user_id); 1: one per join
    user_id_block: int = 100
    # the last numbers a room passed, kept to answer joins' history (rooms.Room.tail); 0: off
    history_memory: int = 1000
    # the cyclic GC's full collections: at most one per this many middle-generation ones
    # (app.settle_gc); a full one walks every connection's objects while the loop waits
    gc_full_every: int = 100
    # large rooms: messages wait for the next flush while the room's writes would take
    # more than flush_duty of the loop, at most flush_interval seconds (rooms.Room)
    flush_interval: float = 0.1
    flush_members: int = 200
    flush_duty: float = 0.5
    flush_batch: int = 8
    # per-color CloudWatch metrics (chat/cloudwatch.py): off unless asked for
    cloudwatch: bool = False
    cloudwatch_namespace: str = "CanaryChat"
    cloudwatch_interval: float = 10.0
    # drain when the own ALB target deregisters (chat/targetwatch.py): off without ARNs
    target_group_arns: tuple[str, ...] = field(default_factory=tuple)
    target_id: str | None = None
    target_port: int = 0  # 0: the listen port
    target_poll: float = 5.0
    # the load balancer's live weights for /api/stats (chat/lbweights.py): off unless a
    # source is set (HAProxy's stats CSV, or an ALB listener and the two target groups)
    weights_haproxy_url: str | None = None
    weights_haproxy_backend: str = "chat"
    weights_listener_arn: str | None = None
    weights_blue_target_group_arn: str | None = None
    weights_green_target_group_arn: str | None = None
    weights_poll: float = 2.0

    def __post_init__(self) -> None:
        if not self.instance_id:
            object.__setattr__(
                self, "instance_id", f"{self.color}-{socket.gethostname()}-{os.getpid()}")
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,15}", self.color):
            raise ValueError("CHAT_COLOR must be 1-16 of a-z, 0-9, - (e.g. blue, green)")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("CHAT_FAULT_RATE must be between 0 and 1")
        if not 1.0 <= self.admin_skew <= 3600.0:
            raise ValueError("CHAT_ADMIN_SKEW_SECONDS must be between 1 and 3600")
        if self.dynamodb_client not in ("ddb", "botocore"):
            raise ValueError("CHAT_DYNAMODB_CLIENT must be ddb or botocore")
        if self.seq_batch < 0:
            raise ValueError("CHAT_SEQ_BATCH must be 0 (off) or more")
        if not 0.0 <= self.flush_interval <= 1.0:
            raise ValueError("CHAT_FLUSH_INTERVAL must be between 0 (off) and 1 second")
        if not 0 <= self.history_memory <= 100000:
            raise ValueError("CHAT_HISTORY_MEMORY must be between 0 (off) and 100000")
        if not 1 <= self.user_id_block <= 10000:
            raise ValueError("CHAT_USER_ID_BLOCK must be between 1 and 10000")
        if not 1 <= self.gc_full_every <= 100000:
            raise ValueError("CHAT_GC_FULL_EVERY must be between 1 and 100000")
        if self.flush_members < 1:
            raise ValueError("CHAT_FLUSH_MEMBERS must be 1 or more")
        if not 0.0 <= self.flush_duty <= 1.0:
            raise ValueError("CHAT_FLUSH_DUTY must be between 0 (fixed interval) and 1")
        if self.request_timeout <= 0:
            raise ValueError("CHAT_REQUEST_TIMEOUT must be above 0 seconds")
        if self.rate_strikes < 0 or self.rate_strike_window <= 0:
            raise ValueError("CHAT_RATE_STRIKES must be 0 (off) or more, "
                             "CHAT_RATE_STRIKE_WINDOW above 0")
        if self.flush_batch < 2:
            raise ValueError("CHAT_FLUSH_BATCH must be 2 or more")
        if not 1.0 <= self.cloudwatch_interval <= 60.0:
            raise ValueError("CHAT_CLOUDWATCH_INTERVAL must be between 1 and 60 seconds")
        if not self.cloudwatch_namespace or self.cloudwatch_namespace.startswith("AWS/"):
            raise ValueError("CHAT_CLOUDWATCH_NAMESPACE must be set and not start with AWS/")
        if self.target_poll <= 0:
            raise ValueError("CHAT_TARGET_POLL_SECONDS must be more than 0")
        if self.weights_poll <= 0:
            raise ValueError("CHAT_WEIGHTS_POLL_SECONDS must be more than 0")
        if self.weights_haproxy_url and self.weights_listener_arn:
            raise ValueError("set CHAT_WEIGHTS_HAPROXY_URL or CHAT_WEIGHTS_LISTENER_ARN, not both")
        if self.weights_listener_arn and not (self.weights_blue_target_group_arn
                                              and self.weights_green_target_group_arn):
            raise ValueError("CHAT_WEIGHTS_LISTENER_ARN needs CHAT_WEIGHTS_BLUE_TARGET_GROUP_ARN "
                             "and CHAT_WEIGHTS_GREEN_TARGET_GROUP_ARN")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build from `env` (default os.environ); keyword overrides that are not None win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = dict(
            host=env.get("CHAT_HOST", "127.0.0.1"),
            port=_int(env, "CHAT_PORT", 8000),
            color=env.get("CHAT_COLOR", "blue"),
            version=env.get("CHAT_VERSION", "v1"),
            instance_id=env.get("CHAT_INSTANCE_ID", ""),
            redis_url=env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "ap-northeast-2",
            dynamodb_endpoint=env.get("AWS_ENDPOINT_URL_DYNAMODB") or None,
            table_messages=env.get("CHAT_TABLE_MESSAGES", "messages"),
            table_connections=env.get("CHAT_TABLE_CONNECTIONS", "connections"),
            table_user_counter=env.get("CHAT_TABLE_USER_COUNTER", "user-counter"),
            admin_token=env.get("CHAT_ADMIN_TOKEN") or None,
            admin_bearer=_flag(env, "CHAT_ADMIN_BEARER", True),
            admin_skew=_float(env, "CHAT_ADMIN_SKEW_SECONDS", 60.0),
            fault_rate=_float(env, "CHAT_FAULT_RATE", 0.0),
            drain_seconds=_float(env, "CHAT_DRAIN_SECONDS", 10.0),
            static_dir=env.get("CHAT_STATIC_DIR") or None,
            allowed_origins=_origins(env.get("CHAT_ALLOWED_ORIGINS", "")),
            allowed_hosts=_hosts(env.get("CHAT_ALLOWED_HOSTS", "")),
            request_timeout=_float(env, "CHAT_REQUEST_TIMEOUT", 10.0),
            rate_strikes=_int(env, "CHAT_RATE_STRIKES", 50),
            rate_strike_window=_float(env, "CHAT_RATE_STRIKE_WINDOW", 10.0),
            send_queue=_int(env, "CHAT_SEND_QUEUE", 1000),
            slow_seconds=_float(env, "CHAT_SLOW_SECONDS", 5.0),
            socket_sndbuf=_int(env, "CHAT_SOCKET_SNDBUF", 65536),
            ping_interval=_float(env, "CHAT_PING_INTERVAL", 20.0),
            ping_timeout=_float(env, "CHAT_PING_TIMEOUT", 20.0),
            gap_wait=_float(env, "CHAT_GAP_WAIT", 0.3),
            gap_skip=_float(env, "CHAT_GAP_SKIP", 5.0),
            rate_per_s=_float(env, "CHAT_RATE_PER_S", 5.0),
            rate_burst=_int(env, "CHAT_RATE_BURST", 10),
            log_level=env.get("CHAT_LOG_LEVEL", "INFO"),
            dynamodb_client=env.get("CHAT_DYNAMODB_CLIENT", "").strip().lower() or "ddb",
            seq_batch=_int(env, "CHAT_SEQ_BATCH", 50),
            user_id_block=_int(env, "CHAT_USER_ID_BLOCK", 100),
            history_memory=_int(env, "CHAT_HISTORY_MEMORY", 1000),
            gc_full_every=_int(env, "CHAT_GC_FULL_EVERY", 100),
            flush_interval=_float(env, "CHAT_FLUSH_INTERVAL", 0.1),
            flush_members=_int(env, "CHAT_FLUSH_MEMBERS", 200),
            flush_duty=_float(env, "CHAT_FLUSH_DUTY", 0.5),
            flush_batch=_int(env, "CHAT_FLUSH_BATCH", 8),
            # CHAT_CLOUDWATCH decides when set; unset, a namespace alone turns it on
            cloudwatch=_flag(env, "CHAT_CLOUDWATCH",
                             bool(env.get("CHAT_CLOUDWATCH_NAMESPACE", "").strip())),
            cloudwatch_namespace=env.get("CHAT_CLOUDWATCH_NAMESPACE", "").strip() or "CanaryChat",
            cloudwatch_interval=_float(env, "CHAT_CLOUDWATCH_INTERVAL", 10.0),
            target_group_arns=_list(env.get("CHAT_TARGET_GROUP_ARNS", "")),
            target_id=env.get("CHAT_TARGET_ID", "").strip() or None,
            target_port=_int(env, "CHAT_TARGET_PORT", 0),
            target_poll=_float(env, "CHAT_TARGET_POLL_SECONDS", 5.0),
            weights_haproxy_url=env.get("CHAT_WEIGHTS_HAPROXY_URL", "").strip() or None,
            weights_haproxy_backend=env.get("CHAT_WEIGHTS_HAPROXY_BACKEND", "").strip() or "chat",
            weights_listener_arn=env.get("CHAT_WEIGHTS_LISTENER_ARN", "").strip() or None,
            weights_blue_target_group_arn=(
                env.get("CHAT_WEIGHTS_BLUE_TARGET_GROUP_ARN", "").strip() or None),
            weights_green_target_group_arn=(
                env.get("CHAT_WEIGHTS_GREEN_TARGET_GROUP_ARN", "").strip() or None),
            weights_poll=_float(env, "CHAT_WEIGHTS_POLL_SECONDS", 2.0),
        )
        for key, value in overrides.items():
            if value is not None:
                if key == "allowed_origins" and isinstance(value, str):
                    value = _origins(value)
                elif key == "allowed_hosts" and isinstance(value, str):
                    value = _hosts(value)
                values[key] = value
        return cls(**values)

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes)

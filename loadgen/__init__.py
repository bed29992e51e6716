"""Load generator: N simulated chat users in one asyncio process, checking every delivery.

``python -m chat loadgen --url ws://127.0.0.1:8080/ws --users 100 --rate 20 --duration 60``

Each simulated user behaves like the web client (docs/protocol.md): it joins a room, sends
messages with a unique ``client_id`` and waits for the ``ack`` (one send in flight per user,
so an ``unavailable`` error, which carries no ``client_id``, always names the send to retry
with the same ``client_id``), follows ``migrate`` make-before-break (new connection with
``since`` first, then close the old one) and reconnects with exponential backoff and full
jitter after an unexpected close, resuming with ``since``.

A new connection (join, reconnect, churn, migration) becomes the user's connection only once
its ``history`` frame has arrived, not at its ``welcome``: until then the old connection (if
still open) stays the one the user sends on and keeps receiving, and the user counts as
connected / recovered only from that history on. A user's next churn is timed from that
moment, so a slow join is never abandoned for another one that would resume from the same
``since``. A candidate that closes before its history, is told to ``migrate`` before it, or
gets none within ``history_timeout``, is closed and retried with backoff
(``closed_before_history``, ``migrated_before_history``, ``history_timeouts`` in the
report); ``history_wait_ms`` is welcome-to-history time.

Accounting (what "lost", "duplicated" and "out of order" mean):

* every ``ack`` adds its ``seq`` to the room's set of acknowledged sequence numbers, whoever
  sent it;
* a user is *expected* to receive every acknowledged ``seq`` of its room greater than the
  room's ``seq`` in its first ``welcome``; only users still connected when sending stops
  are held to that (a user that gave up reconnecting is reported, not counted);
* ``lost``: expected but never received on any of the user's connections after the drain;
* ``duplicated`` / ``out of order``: judged per connection, because the server promises
  exactly-once, in-order delivery on each connection. The overlap of two connections of one
  user during a migration is normal; the user drops those copies by ``seq`` (reported as
  ``overlap_dropped``, not as an error).

Delivery latency is ``receive wall clock - message ts`` (the accepting instance's clock, in
ms; one machine locally, NTP-synced hosts on AWS), for each first receipt of an expected
message. Ack latency is measured on the local clock from the first send to the ``ack``.

The core is importable: ``await run_loadgen(LoadGenConfig(...))`` returns the report dict;
``LoadGen.stop()`` (or SIGINT/SIGTERM under ``main``) ends sending, drains and reports.

Modules: ``accounting`` (what counts as lost, duplicated, out of order; latency histograms),
``users`` (one simulated user), ``scheduler`` (a run: config, ramp, rate, drain, report
dict), ``report`` (the table), ``cli`` (options and signals). This package is not in the
service image; run it from a checkout of the repository.
"""

from .accounting import (
    ConnTrack,
    LatencyHistogram,
    SeqSet,
    UserTrack,
    account,
    exit_code,
)
from .cli import build_parser, main
from .report import format_report
from .scheduler import LoadGen, LoadGenConfig, Stats, run_loadgen
from .users import SimUser, api_messages_url, backoff_delay

__all__ = [
    "ConnTrack", "LatencyHistogram", "LoadGen", "LoadGenConfig", "SeqSet", "SimUser", "Stats",
    "UserTrack", "account", "api_messages_url", "backoff_delay", "build_parser", "exit_code",
    "format_report", "main", "run_loadgen",
]

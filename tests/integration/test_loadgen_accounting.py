"""The load generator's accounting, fed with synthetic frames (no server needed).

These prove the load generator *can* see loss, duplication and disorder: the integration
tests that report zero of each would be meaningless otherwise.
"""

from __future__ import annotations

import random

from loadgen import (
    ConnTrack,
    LatencyHistogram,
    SeqSet,
    UserTrack,
    account,
    backoff_delay,
    exit_code,
    format_report,
)


def msg(seq: int, ts: float = 1000.0) -> dict[str, object]:
    return {"type": "message", "room": "r", "seq": seq, "user_id": 1, "name": "a",
            "text": "x", "ts": ts, "color": "blue"}


def joined(seq: int) -> tuple[UserTrack, ConnTrack]:
    u = UserTrack("r")
    u.on_welcome({"type": "welcome", "seq": seq})
    return u, ConnTrack(None)


def report_for(users: list[UserTrack], acked: set[int]) -> dict[str, object]:
    return {"connected": len(users), **account(users, {"r": acked})}


def test_clean_stream_counts_every_delivery_and_exits_zero() -> None:
    u, c = joined(10)
    for s in range(8, 11):          # history up to the join seq: not expected
        u.on_message(c, msg(s), 0)
    for s in range(11, 16):
        u.on_message(c, msg(s), 0)
    r = report_for([u], {11, 12, 13, 14, 15})
    assert r["expected_deliveries"] == 5 and r["delivered"] == 5
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0
    assert exit_code(r) == 0


def test_gap_in_acked_messages_is_lost_and_fails_the_run() -> None:
    u, c = joined(0)
    for s in (1, 2, 4):
        u.on_message(c, msg(s), 0)
    r = report_for([u], {1, 2, 3, 4})
    assert r["lost"] == 1 and r["delivered"] == 3 and r["expected_deliveries"] == 4
    assert exit_code(r) == 1


def test_skipped_number_that_was_never_acked_is_not_lost() -> None:
    u, c = joined(0)
    for s in (1, 2, 4):               # seq 3's write failed: nobody got an ack for it
        u.on_message(c, msg(s), 0)
    assert report_for([u], {1, 2, 4})["lost"] == 0


def test_same_seq_twice_on_one_connection_is_a_duplicate() -> None:
    u, c = joined(0)
    for s in (1, 2, 2, 3):
        u.on_message(c, msg(s), 0)
    r = report_for([u], {1, 2, 3})
    assert r["duplicated"] == 1 and r["lost"] == 0 and r["out_of_order"] == 0
    assert exit_code(r) == 1


def test_lower_seq_after_higher_on_one_connection_is_out_of_order() -> None:
    u, c = joined(0)
    for s in (1, 3, 2):
        u.on_message(c, msg(s), 0)
    r = report_for([u], {1, 2, 3})
    assert r["out_of_order"] == 1 and r["duplicated"] == 0 and r["lost"] == 0
    assert exit_code(r) == 1


def test_overlap_of_two_connections_during_a_migration_is_not_an_error() -> None:
    u, old = joined(0)
    for s in (1, 2, 3):
        u.on_message(old, msg(s), 0)
    new = ConnTrack(since=u.last_seq)    # opened with since=3 before the old one closes
    u.on_message(old, msg(4), 0)         # the old one still delivers 4 ...
    u.on_message(new, msg(4), 0)         # ... and the new one too: the user drops one
    u.on_message(new, msg(5), 0)
    r = report_for([u], {1, 2, 3, 4, 5})
    assert r["delivered"] == 5 and r["overlap_dropped"] == 1
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0
    assert exit_code(r) == 0


def test_a_live_repeat_of_the_last_history_message_is_a_duplicate() -> None:
    """The join race (history then live) must neither repeat nor skip."""
    u, c = joined(5)
    for s in (4, 5):                      # history frame
        u.on_message(c, msg(s), 0)
    u.on_message(c, msg(5), 0)            # live repeat of 5
    assert report_for([u], {5})["duplicated"] == 1


def test_resume_since_fills_what_a_dropped_connection_missed() -> None:
    u, first = joined(0)
    u.on_message(first, msg(1), 0)
    second = ConnTrack(since=u.last_seq)  # reconnect with since=1; 2 and 3 come as history
    for s in (2, 3, 4):
        u.on_message(second, msg(s), 0)
    assert report_for([u], {1, 2, 3, 4})["lost"] == 0


def test_every_member_is_held_to_the_whole_room() -> None:
    a, ca = joined(0)
    b, cb = joined(0)
    for s in (1, 2, 3):
        a.on_message(ca, msg(s), 0)
    b.on_message(cb, msg(1), 0)
    b.on_message(cb, msg(3), 0)
    r = report_for([a, b], {1, 2, 3})
    assert r["expected_deliveries"] == 6 and r["lost"] == 1


def test_nobody_connected_is_a_failure_too() -> None:
    assert exit_code({"connected": 0, "lost": 0, "duplicated": 0, "out_of_order": 0}) == 2


def test_latency_is_measured_against_the_message_ts() -> None:
    u, c = joined(0)
    h = LatencyHistogram()
    for s in range(1, 101):
        u.on_message(c, msg(s, ts=1000.0), 1000.0 + s, h)   # 1..100 ms late
    p = h.summary()
    assert p["p50"] is not None and 49 <= p["p50"] <= 51.5
    assert p["p99"] is not None and 98 <= p["p99"] <= 100
    u.on_message(c, msg(1, ts=1000.0), 5000.0, h)            # a repeat adds no sample
    assert h.n == 100


def test_seqset_handles_seqs_below_and_far_above_its_base() -> None:
    s = SeqSet(100)
    assert s.add(5) and not s.add(5) and 5 in s
    assert s.add(100_000) and 100_000 in s and 99_999 not in s
    assert 7 not in s


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(a, 0.5, 8.0, rng) for a in range(10) for _ in range(50)]
    assert all(0 <= d <= 8.0 for d in delays)
    first = [backoff_delay(0, 0.5, 8.0, rng) for _ in range(200)]
    assert max(first) <= 0.5 and min(first) < 0.1       # jitter reaches down to zero


def test_report_table_names_the_failures() -> None:
    u, c = joined(0)
    u.on_message(c, msg(2), 0)
    totals = account([u], {"r": {1, 2}})
    r = {"users": 1, "connected": 1, "held_to_delivery": 1, "handshakes": 1,
         "failed_handshakes": 0, "unexpected_closes": 0, "migrations": 0, "churns": 0,
         "sent": 2, "acked": 2, "retries": 0, **totals,
         "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0},
         "ack_latency_ms": {"p50": None, "p95": None, "p99": None},
         "connections_by_color": {"blue": 1}, "new_connections_by_color": {"blue": 1},
         "errors": {}, "close_codes": {}}
    table = format_report(r)
    assert "LOST" in table and "blue=1" in table
    assert exit_code(r) == 1


def test_old_connection_delivering_while_the_new_waits_for_its_history() -> None:
    """The switch waits for the new history: meanwhile the old connection delivers 4-6
    live, then the new one's history (since=3) repeats them, then live 7 on the new one.
    Each seq counts once for the user (and once for latency), nothing is an error."""
    u, old = joined(0)
    h = LatencyHistogram()
    for s in (1, 2, 3):
        u.on_message(old, msg(s), 0, h)
    new = ConnTrack(since=u.last_seq)           # opened; its history is slow
    for s in (4, 5, 6):
        u.on_message(old, msg(s), 0, h)         # the old one is still the user's
    for s in (4, 5, 6):
        u.on_message(new, msg(s), 0, h)         # the history frame
    u.on_message(new, msg(7), 0, h)             # switched: live on the new one
    r = report_for([u], {1, 2, 3, 4, 5, 6, 7})
    assert r["delivered"] == 7 and r["overlap_dropped"] == 3 and h.n == 7
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0
    assert u.last_seq == 7 and new.last_seq == 7 and old.last_seq == 6


def test_a_replacement_that_repeats_a_seq_of_its_own_history_is_a_duplicate() -> None:
    """Per connection still: the new one repeating a seq from its own history is an error
    even though the user already had it from the old one."""
    u, old = joined(0)
    u.on_message(old, msg(1), 0)
    new = ConnTrack(since=0)
    u.on_message(old, msg(2), 0)
    for s in (1, 2, 2):
        u.on_message(new, msg(s), 0)
    assert report_for([u], {1, 2})["duplicated"] == 1

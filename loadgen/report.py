"""The report as a table for a terminal."""

from __future__ import annotations

from typing import Any


def format_report(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    lat, ack = r["latency_ms"], r["ack_latency_ms"]
    rows: list[tuple[str, Any]] = [
        ("users connected", f"{r['connected']} / {r['users']}"
                            f" (held to delivery at end: {r['held_to_delivery']})"),
        ("handshakes ok / failed", f"{r['handshakes']} / {r['failed_handshakes']}"),
        ("unexpected closes", r["unexpected_closes"]),
        ("migrations / churn reconnects", f"{r['migrations']} / {r['churns']}"),
        ("sent / acked (retries)", f"{r['sent']} / {r['acked']} ({r['retries']})"
                                   + (f", {r['skipped_backlog']} turns skipped: acks lagging"
                                      if r.get("skipped_backlog") else "")),
        ("expected deliveries", r["expected_deliveries"]),
        ("delivered", r["delivered"]),
        ("LOST", r["lost"]),
        ("DUPLICATED", r["duplicated"]),
        ("OUT OF ORDER", r["out_of_order"]),
        ("delivery latency p50/p95/p99",
         f"{ms(lat['p50'])} / {ms(lat['p95'])} / {ms(lat['p99'])}  (vs message ts)"),
        ("ack latency p50/p95/p99",
         f"{ms(ack['p50'])} / {ms(ack['p95'])} / {ms(ack['p99'])}  (local clock)"),
    ]
    hw = r.get("history_wait_ms")
    if hw is not None:
        rows.append(("welcome to history p50/p95/p99",
                     f"{ms(hw['p50'])} / {ms(hw['p95'])} / {ms(hw['p99'])}"
                     f"  ({r.get('closed_before_history', 0)} closed before it,"
                     f" {r.get('history_timeouts', 0)} timed out)"))
    rows += [
        ("connections by color (end)", _colors(r["connections_by_color"])),
        ("new connections by color", _colors(r["new_connections_by_color"])),
        ("errors", _colors(r["errors"]) or "none"),
        ("close codes", _colors(r["close_codes"]) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _colors(d: dict[str, int]) -> str:
    return "  ".join(f"{k}={v}" for k, v in sorted(d.items()))

"""The three DynamoDB tables, defined once for Python (`python -m chat init-tables`).

roles/data/vars/main.yml defines the same tables for Ansible; tests/unit/test_chat_tables.py
checks that the two agree. Keys:

- messages: (room S, seq N). seq >= 1 are messages; an item with `void` marks a sequence
  number whose write failed (readers skip it at once instead of waiting).
- connections: connection_id S, TTL attribute `ttl`. Besides one item per open WebSocket it
  holds the idempotency records `dedup#<room>#<client_id>` (10 minutes, then TTL).
- user-counter: name S. Atomic counters: `user` (user ids), `room#<room>` (sequence numbers).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .config import Config

TTL_ATTRIBUTE = "ttl"


@dataclass(frozen=True)
class TableDef:
    logical: str  # the default name, and the Config attribute suffix
    hash_key: tuple[str, str]  # (name, S|N)
    range_key: tuple[str, str] | None = None
    ttl_attribute: str | None = None


TABLES: tuple[TableDef, ...] = (
    TableDef("messages", ("room", "S"), ("seq", "N")),
    TableDef("connections", ("connection_id", "S"), ttl_attribute=TTL_ATTRIBUTE),
    TableDef("user-counter", ("name", "S")),
)


def table_name(config: Config, logical: str) -> str:
    return {
        "messages": config.table_messages,
        "connections": config.table_connections,
        "user-counter": config.table_user_counter,
    }[logical]


def create_table_kwargs(table: TableDef, name: str) -> dict[str, Any]:
    """Arguments of DynamoDB CreateTable for one table: on-demand, encrypted."""
    keys = [(table.hash_key, "HASH")]
    if table.range_key:
        keys.append((table.range_key, "RANGE"))
    return {
        "TableName": name,
        "AttributeDefinitions": [{"AttributeName": k[0], "AttributeType": k[1]} for k, _ in keys],
        "KeySchema": [{"AttributeName": k[0], "KeyType": kind} for k, kind in keys],
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"Enabled": True},
    }


async def init_tables(config: Config, client: Any) -> list[str]:
    """Create missing tables and enable TTL; idempotent. Returns the names it created."""
    created: list[str] = []
    existing: set[str] = set()
    async for page in client.get_paginator("list_tables").paginate():
        existing.update(page.get("TableNames", []))
    for table in TABLES:
        name = table_name(config, table.logical)
        if name not in existing:
            try:
                await client.create_table(**create_table_kwargs(table, name))
                created.append(name)
            except client.exceptions.ResourceInUseException:
                pass  # created by someone else meanwhile
        for _ in range(120):
            desc = await client.describe_table(TableName=name)
            if desc["Table"]["TableStatus"] == "ACTIVE":
                break
            await asyncio.sleep(0.5)
        if table.ttl_attribute:
            ttl = await client.describe_time_to_live(TableName=name)
            status = ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus", "DISABLED")
            if status not in ("ENABLED", "ENABLING"):
                await client.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"Enabled": True,
                                             "AttributeName": table.ttl_attribute})
    return created

"""chat/tables.py and roles/data/vars/main.yml define the same three tables."""

from __future__ import annotations

from pathlib import Path

import yaml

from chat.config import Config
from chat.tables import TABLES, create_table_kwargs, table_name

REPO = Path(__file__).resolve().parents[2]
TYPES = {"S": "STRING", "N": "NUMBER", "B": "BINARY"}


def ansible_tables() -> tuple[dict, list]:
    data = yaml.safe_load((REPO / "roles/data/vars/main.yml").read_text())
    return {t["name"]: t for t in data["data_tables"]}, data["data_ttl"]


def test_python_and_ansible_table_definitions_agree():
    ansible, _ = ansible_tables()
    cfg = Config()
    assert set(ansible) == {table_name(cfg, t.logical) for t in TABLES}
    for t in TABLES:
        a = ansible[table_name(cfg, t.logical)]
        assert a["hash_key_name"] == t.hash_key[0]
        assert a["hash_key_type"] == TYPES[t.hash_key[1]]
        if t.range_key:
            assert a["range_key_name"] == t.range_key[0]
            assert a["range_key_type"] == TYPES[t.range_key[1]]
        else:
            assert "range_key_name" not in a
        assert a["billing_mode"] == "PAY_PER_REQUEST"


def test_ttl_agrees():
    _, ttl = ansible_tables()
    cfg = Config()
    python = {(table_name(cfg, t.logical), t.ttl_attribute) for t in TABLES if t.ttl_attribute}
    assert {(x["table_name"], x["attribute_name"]) for x in ttl} == python


def test_create_table_kwargs_are_on_demand_and_encrypted():
    kw = create_table_kwargs(TABLES[0], "messages")
    assert kw["BillingMode"] == "PAY_PER_REQUEST"
    assert kw["SSESpecification"] == {"Enabled": True}
    assert kw["KeySchema"] == [{"AttributeName": "room", "KeyType": "HASH"},
                               {"AttributeName": "seq", "KeyType": "RANGE"}]

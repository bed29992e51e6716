"""Integration fixtures: the chat stack (tests/chatstack.py) and a store on both DynamoDB
clients (tests/storestack.py)."""

from tests.chatstack import chat_pair, chat_stack
from tests.storestack import store

__all__ = ["chat_pair", "chat_stack", "store"]

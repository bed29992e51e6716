"""Fuzz fixtures: the chat stack of tests/chatstack.py (real redis-server and moto server)."""

from tests.chatstack import chat_stack

__all__ = ["chat_stack"]

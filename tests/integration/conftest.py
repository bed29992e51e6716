"""Integration fixtures: the chat stack (see tests/chatstack.py)."""

from tests.chatstack import chat_pair, chat_stack

__all__ = ["chat_pair", "chat_stack"]

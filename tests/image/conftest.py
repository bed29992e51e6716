"""Image fixtures: the chat stack (see tests/chatstack.py) next to the container."""

from tests.chatstack import chat_stack

__all__ = ["chat_stack"]

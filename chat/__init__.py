"""canary-chat: the Sanic WebSocket chat service (see docs/protocol.md)."""

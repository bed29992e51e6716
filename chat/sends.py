"""The send path: a client's message stored, acknowledged and published once.

`SendPath.send` is what a connection (`chat.connection`) calls for each `send` frame:
fault injection (CHAT_FAULT_RATE), `MessageStore.append` (the room's next seq, or the seq
of a retried client_id's first send), the ack, the gate's figures, then `publish`.
`publish` is the one place a new message leaves this instance's send path: encoded once,
delivered to this instance's room (`Rooms.deliver`) and to the other instances through
Redis (`RoomBus.publish_message`), which deliver it with `Rooms.on_bus_message`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from . import protocol
from .bus import BusErrors, RoomBus
from .cloudwatch import Publisher
from .config import Config
from .message import Message
from .metrics import Metrics
from .protocol import ErrorCode
from .rooms import Client, Rooms
from .stats import BoardStats
from .store import MessageStore, StoreUnavailable

log = logging.getLogger("chat")

ErrorReply = Callable[[ErrorCode, str], None]


class SendPath:
    __slots__ = ("board", "bus", "cloudwatch", "config", "metrics", "rooms", "store")

    def __init__(self, config: Config, *, store: MessageStore, rooms: Rooms, bus: RoomBus,
                 metrics: Metrics, board: BoardStats, cloudwatch: Publisher) -> None:
        self.config, self.store, self.rooms, self.bus = config, store, rooms, bus
        self.metrics, self.board, self.cloudwatch = metrics, board, cloudwatch

    def refused(self) -> None:
        """A send refused before storage (too many waiting): counted as a send error."""
        self.cloudwatch.send_error()

    def _failed(self) -> None:
        """A send that failed here (fault injection or storage): every gate counts it."""
        self.metrics.sends.inc("error")
        self.board.failure()
        self.cloudwatch.send_error()

    async def send(self, client: Client, frame: protocol.SendFrame, error: ErrorReply) -> None:
        """Store `frame` as `client`'s message, ack it, publish it; `error` answers a
        failure (`unavailable`: the client retries with the same client_id)."""
        config, metrics = self.config, self.metrics
        received = time.monotonic()
        if config.fault_rate and random.random() < config.fault_rate:
            self._failed()
            error(ErrorCode.UNAVAILABLE, "injected fault (CHAT_FAULT_RATE); retry")
            return
        try:
            t0 = time.monotonic()
            result = await self.store.append(room=client.room, user_id=client.user_id,
                                              name=client.name, text=frame.text,
                                              client_id=frame.client_id, color=config.color)
            metrics.store_latency.observe(time.monotonic() - t0)
        except StoreUnavailable as e:
            log.warning("store_failed", extra={"event": "store_failed", "error": str(e)})
            self._failed()
            error(ErrorCode.UNAVAILABLE, "storage unavailable; retry with the same client_id")
            return
        client.offer(protocol.ack_frame(frame.client_id, result.seq))
        latency = time.monotonic() - received
        metrics.sends.inc("ok")
        metrics.ack_latency.observe(latency)
        self.board.ack(latency)
        self.cloudwatch.ack(latency)
        if result.frame is None:
            return  # a retry of a stored message: never delivered twice
        await self.publish(result.frame)

    async def publish(self, message: Message) -> None:
        """A newly stored message to this instance's room and, through Redis, the others'."""
        encoded = protocol.encode(message)
        room = message["room"]
        self.rooms.deliver(room, message["seq"], encoded, message["ts"])
        try:
            await self.bus.publish_message(room, encoded)
        except BusErrors as e:
            log.warning("publish_failed", extra={"event": "publish_failed", "error": str(e)})

"""A TCP forwarder whose far end can be "switched off", to stop an endpoint without losing
its state: ``python tcpproxy.py LISTEN_PORT TARGET_PORT``.

SIGUSR1: down (close the listener so new connections are refused, reset every open one);
SIGUSR2: up again. Used by the fault suite to stop the DynamoDB endpoint (moto keeps its
tables in memory, so stopping moto itself would lose them).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import sys


class Proxy:
    def __init__(self, listen: int, target: int) -> None:
        self.listen, self.target = listen, target
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen,
                                                     reuse_address=True)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.writers):
            sock = w.get_extra_info("socket")
            if sock is not None:  # RST, like a process that died
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            w.close()
        self.writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_w))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, RuntimeError):
                pass
            finally:
                self.writers.discard(w)
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


async def main(listen: int, target: int) -> None:
    proxy = Proxy(listen, target)
    await proxy.up()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: asyncio.ensure_future(proxy.down()))
    loop.add_signal_handler(signal.SIGUSR2, lambda: asyncio.ensure_future(proxy.up()))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))

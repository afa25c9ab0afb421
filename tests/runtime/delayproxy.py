"""A TCP proxy that delays a device's answers on a schedule: a slow PLC, for tests.

Bytes from the client go to the device at once; bytes from the device are held ``delay_s``
when they arrive during a slow window (the first ``slow_s`` of every ``period_s``, counted
from :meth:`DelayProxy.start`), and passed on at once otherwise, always in order (a fast
answer never overtakes a delayed one). ``clock`` is injectable so that a test can choose how
long a period lasts without changing the shape of the schedule. The proxy counts the
connections it accepted: after the first, each one is a client's reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class DelayProxy:
    """Listen on 127.0.0.1 (a free port; see :attr:`port`) and forward to
    ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, delay_s: float = 0.4,
                 slow_s: float = 1.0, period_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= slow_s <= period_s or delay_s < 0 or period_s <= 0:
            raise ValueError("need delay_s >= 0 and 0 <= slow_s <= period_s")
        self.upstream = (upstream_host, upstream_port)
        self.delay_s = delay_s
        self.slow_s = slow_s
        self.period_s = period_s
        self.clock = clock
        self.accepted = 0  # connections accepted
        self.delayed = 0   # answers (chunks) held back
        self.port = 0
        self._start_s = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def slow(self, at_s: float) -> bool:
        """Whether an answer arriving at ``at_s`` (``clock``) is delayed."""
        return (at_s - self._start_s) % self.period_s < self.slow_s

    async def start(self) -> None:
        self._start_s = self.clock()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> DelayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pipe(reader, up_writer, delayed=False))
                tg.create_task(self._pipe(up_reader, writer, delayed=True))
        except* (ConnectionError, EOFError):
            pass  # either side hung up: the session is over
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    *, delayed: bool) -> None:
        loop = asyncio.get_running_loop()
        release_at = 0.0  # loop time at which the last chunk went (or goes) out
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                at, data = await queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise EOFError
                now = loop.time()
                at = now
                if delayed and self.slow(self.clock()):
                    at = now + self.delay_s
                    self.delayed += 1
                release_at = max(release_at, at)  # in order: never overtake a held chunk
                queue.put_nowait((release_at, data))
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender

"""The safety core's supervisor of its communications process.

Runs in the core's event loop. :meth:`CommsSupervisor.start` starts ``python -m gateway.comms``
(no shell; its own session, so a terminal's Ctrl-C reaches only the core, which then stops it)
with one end of a fresh ``socket.socketpair()`` passed as its channel, and serves the other
end with a :class:`~gateway.link.channel.ChannelServer` dispatching to the core's handler.

It watches the child and replaces it when it is lost:

- **exited**: the process ended (crashed, was killed, or left because its channel closed);
- **hung**: it answered no ping for ``ping_timeout_s`` (after its first answer; before that,
  ``start_timeout_s`` covers its start-up): killed with SIGKILL, which also ends a stopped
  (SIGSTOP) process;
- **channel closed**: the channel closed (a protocol error, a peer that stopped reading) while
  the process lived: SIGTERM, then SIGKILL after ``stop_timeout_s``.

Restarts wait with exponential backoff: ``backoff_initial_s`` doubling to ``backoff_max_s``;
a child that ran ``stable_s`` resets it. Each start and each loss is reported to ``on_event``
(a :class:`CommsEvent` with the cause, the exit code and the restart count) so that the core
records it. Like gunicorn's arbiter, the supervisor keeps its own loop simple, and never waits
on anything a dead or hung child can hold up: every wait on the child is bounded, the channel
never blocks the core (see :mod:`gateway.link.channel`). :meth:`stop` terminates the child
(SIGTERM, then SIGKILL after ``stop_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.link.channel import ChannelServer

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from gateway.adapters.base import NorthboundHandler

__all__ = ["CommsEvent", "CommsEventKind", "CommsSupervisor"]

log = logging.getLogger("gateway.comms.supervisor")

# After the channel closes, how long the process gets to exit by itself before it is told to
# (it normally exits at once: its channel closing is its own signal to stop).
_EXIT_GRACE_S = 0.5


class CommsEventKind(enum.StrEnum):
    STARTED = "started"  # a communications process is running (pid set)
    LOST = "lost"  # it was lost (cause, exit code); the next start waits delay_s
    STOPPED = "stopped"  # stop() ended it


@dataclass(frozen=True)
class CommsEvent:
    """One start, loss or stop of the communications process.

    ``cause`` (LOST): "exited", "hung", "channel closed" or "start failed"; ``detail`` says
    more (the channel's reason, the error). ``exit_code``: the process's return code, negative
    for the signal that ended it (-9: SIGKILL), None if it never ran. ``restarts``: how many
    times it has been restarted so far (0 for the first start). ``delay_s``: the backoff
    before the next start (LOST only).
    """

    kind: CommsEventKind
    pid: int | None
    restarts: int
    cause: str = ""
    detail: str = ""
    exit_code: int | None = None
    delay_s: float = 0.0


class CommsSupervisor:
    """Starts, watches and restarts the communications process (see the module docstring).

    ``site_path`` and ``mirror_name`` are handed to the child (``--site``, ``--mirror``);
    ``handler`` is the core's :class:`~gateway.adapters.base.NorthboundHandler`; ``on_event``
    is called (in the event loop) with every :class:`CommsEvent` and must not block; an
    exception from it is logged. ``command`` replaces ``[sys.executable, "-m",
    "gateway.comms"]`` (tests); ``env`` the child's environment (default: the core's);
    ``nice`` is added to the core's niceness for the child, so that the scheduler favours the
    core's cycle when the CPU is short.
    """

    def __init__(self, site_path: str | Path, mirror_name: str, handler: NorthboundHandler,
                 on_event: Callable[[CommsEvent], None], *,
                 command: Sequence[str] | None = None, log_level: str = "INFO",
                 env: Mapping[str, str] | None = None,
                 backoff_initial_s: float = 0.2, backoff_max_s: float = 10.0,
                 stable_s: float = 60.0, ping_interval_s: float = 0.5,
                 ping_timeout_s: float = 3.0, start_timeout_s: float = 20.0,
                 stop_timeout_s: float = 5.0, max_in_flight: int = 64, nice: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for key, value in (("backoff_initial_s", backoff_initial_s),
                           ("backoff_max_s", backoff_max_s), ("stable_s", stable_s),
                           ("ping_interval_s", ping_interval_s),
                           ("ping_timeout_s", ping_timeout_s),
                           ("start_timeout_s", start_timeout_s),
                           ("stop_timeout_s", stop_timeout_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"`{key}` must be finite and > 0, not {value!r}")
        if max_in_flight < 1:
            raise ValueError(f"`max_in_flight` must be >= 1, not {max_in_flight}")
        if backoff_max_s < backoff_initial_s:
            raise ValueError("`backoff_max_s` must be >= `backoff_initial_s`")
        self.site_path = str(site_path)
        self.mirror_name = mirror_name
        self.handler = handler
        self.on_event = on_event
        self.command = (list(command) if command is not None
                        else [sys.executable, "-m", "gateway.comms"])
        self.log_level = log_level
        self.env = dict(env) if env is not None else None
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_s = stable_s
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.max_in_flight = max_in_flight
        self.nice = nice  # added to the core's niceness for the child (0: the same)
        self.clock = clock
        self.restarts = 0  # starts after the first
        self.generation = 0  # starts so far (a child's number; the mirror may show it)
        self.process: asyncio.subprocess.Process | None = None
        self.channel: ChannelServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._first = asyncio.Event()

    @property
    def pid(self) -> int | None:
        """The running child's pid (None between children)."""
        proc = self.process
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self) -> None:
        """Start the first child and the watch; returns once it is spawned (not once it
        serves). Raises ``RuntimeError`` if already started."""
        if self._task is not None:
            raise RuntimeError("already started")
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._watch_loop(),
                                                            name="comms supervisor")
        first = asyncio.ensure_future(self._first.wait())
        await asyncio.wait({self._task, first}, return_when=asyncio.FIRST_COMPLETED)
        first.cancel()

    async def stop(self) -> None:
        """Stop watching and end the child: SIGTERM, SIGKILL after ``stop_timeout_s``.
        Idempotent; bounded by about twice ``stop_timeout_s``."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})  # its own cancellation, not ours: not re-raised
        proc, channel = self.process, self.channel
        code = await self._end(proc, kill_first=False) if proc is not None else None
        if channel is not None:
            channel.close("the core is stopping")
        self.process = self.channel = None
        if proc is not None:
            self._emit(CommsEvent(CommsEventKind.STOPPED, proc.pid, self.restarts,
                                  exit_code=code))

    # ------------------------------------------------------------------ the watch

    async def _watch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            began = self.clock()
            try:
                proc, channel = await self._spawn()
            except (OSError, ValueError) as exc:  # no such program, a bad argument
                self._first.set()
                event = CommsEvent(CommsEventKind.LOST, None, self.restarts, "start failed",
                                   str(exc))
            else:
                self._first.set()
                self._emit(CommsEvent(CommsEventKind.STARTED, proc.pid, self.restarts))
                cause, detail = await self._watch(proc, channel)
                code = await self._end(proc, kill_first=cause == "hung")
                channel.close(f"the communications process {cause}")
                self.process = self.channel = None
                event = CommsEvent(CommsEventKind.LOST, proc.pid, self.restarts, cause,
                                   detail, code)
            if self.clock() - began >= self.stable_s:
                failures = 0
            delay = min(self.backoff_initial_s * 2.0 ** failures, self.backoff_max_s)
            failures += 1
            self._emit(CommsEvent(event.kind, event.pid, event.restarts, event.cause,
                                  event.detail, event.exit_code, delay))
            await asyncio.sleep(delay)
            self.restarts += 1

    async def _spawn(self) -> tuple[asyncio.subprocess.Process, ChannelServer]:
        ours, theirs = socket.socketpair()
        try:
            fd = theirs.fileno()
            proc = await asyncio.create_subprocess_exec(
                *self.command, "--site", self.site_path, "--mirror", self.mirror_name,
                "--channel-fd", str(fd), "--log-level", self.log_level,
                "--max-in-flight", str(self.max_in_flight),
                pass_fds=(fd,), stdin=asyncio.subprocess.DEVNULL, env=self.env,
                start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child holds its own copy
        if self.nice:
            # When the CPU is short (a flood, a loaded host) the scheduler must favour the
            # safety core's cycle over the communications process: its niceness is raised
            # (allowed without privileges). A failure costs nothing but that preference.
            try:
                os.setpriority(os.PRIO_PROCESS, proc.pid,
                               min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.nice))
            except OSError as exc:
                log.warning("could not lower the communications process's priority: %s", exc)
        self.generation += 1
        channel = ChannelServer(ours, self.handler, max_in_flight=self.max_in_flight,
                                clock=self.clock)
        self.process, self.channel = proc, channel
        try:
            await channel.start()
        except OSError:
            await self._end(proc, kill_first=True)
            raise
        log.info("communications process started (pid %d, generation %d)", proc.pid,
                 self.generation)
        return proc, channel

    async def _watch(self, proc: asyncio.subprocess.Process, channel: ChannelServer
                     ) -> tuple[str, str]:
        """Until the child is lost: (cause, detail)."""
        exited = asyncio.ensure_future(proc.wait())
        closed = asyncio.ensure_future(channel.wait_closed())
        hung = asyncio.ensure_future(self._pings(channel))
        try:
            await asyncio.wait({exited, closed, hung}, return_when=asyncio.FIRST_COMPLETED)
            if closed.done() and not exited.done():
                # It normally leaves by itself when its channel closes; a crash shows as the
                # exit, not as the channel.
                await asyncio.wait({exited}, timeout=_EXIT_GRACE_S)
            if exited.done():
                return "exited", f"exit code {proc.returncode}"
            if hung.done():
                return "hung", hung.result()
            return "channel closed", channel.reason
        finally:
            for fut in (exited, closed, hung):
                fut.cancel()
            await asyncio.wait({exited, closed, hung})

    async def _pings(self, channel: ChannelServer) -> str:
        """Returns (the reason) when the child stops answering pings."""
        started = self.clock()
        while True:
            channel.ping()
            await asyncio.sleep(self.ping_interval_s)
            now = self.clock()
            if channel.pongs == 0:
                if now - started > self.start_timeout_s:
                    return f"no answer within {self.start_timeout_s:g} s of its start"
            elif now - channel.last_pong_s > self.ping_timeout_s:
                return f"no answer to pings for {now - channel.last_pong_s:.1f} s"

    async def _end(self, proc: asyncio.subprocess.Process, *, kill_first: bool) -> int | None:
        """End ``proc`` if it still runs; its return code (None if it would not die)."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                if kill_first:
                    proc.kill()
                else:
                    proc.terminate()
            if not await self._reaped(proc):
                log.warning("communications process %d did not stop on SIGTERM within "
                            "%.1f s; killing it", proc.pid, self.stop_timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                # SIGCONT too: nothing else about a stopped process changes, but it lets a
                # process stopped by SIGSTOP be reaped at once on every kernel.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                if not await self._reaped(proc):
                    log.error("communications process %d did not die on SIGKILL within "
                              "%.1f s", proc.pid, self.stop_timeout_s)
                    return None
        return proc.returncode

    async def _reaped(self, proc: asyncio.subprocess.Process) -> bool:
        """Whether ``proc`` ended within ``stop_timeout_s``."""
        waiting = asyncio.ensure_future(proc.wait())
        done, _ = await asyncio.wait({waiting}, timeout=self.stop_timeout_s)
        waiting.cancel()
        return bool(done)

    def _emit(self, event: CommsEvent) -> None:
        level = logging.WARNING if event.kind is CommsEventKind.LOST else logging.INFO
        log.log(level, "communications process %s: pid %s, restarts %d%s%s%s", event.kind,
                event.pid, event.restarts, f", {event.cause}" if event.cause else "",
                f" ({event.detail})" if event.detail else "",
                f", next start in {event.delay_s:.1f} s" if event.delay_s else "")
        try:
            self.on_event(event)
        except Exception:  # the core's recorder failing must not stop the supervision
            log.exception("comms supervisor: on_event failed")

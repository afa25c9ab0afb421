"""Southbound writes: what each device is sent, one request at a time per device.

The safety core's only path to the equipment. :class:`Southbound` owns the device clients and
their tasks, the vector the devices hold (``applied``), what each device confirmed
(``written``), the heartbeat counter, and the lock that orders the cycle's writes, operator
write-throughs and the shutdown values. Every vector handed to :meth:`Southbound.write` has
passed the envelope after encoding (the supervisor's decision, or the write-through's check).
"""

from __future__ import annotations

import asyncio
import functools
import math
from typing import TYPE_CHECKING

import numpy as np

from gateway.adapters.base import AdapterError

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.adapters.base import DeviceClient
    from gateway.config.schema import Site
    from gateway.envelope.compiled import F64
    from gateway.runtime.faults import FaultLog


class Southbound:
    """The devices of one site, written in site actuator order."""

    def __init__(self, site: Site, clients: dict[str, DeviceClient], faults: FaultLog,
                 period_s: float) -> None:
        self.clients = clients
        self.faults = faults
        self.period_s = period_s
        self.names = tuple(t.name for t in site.actuators)
        self.by_device: dict[str, list[int]] = {}
        for i, tag in enumerate(site.actuators):
            self.by_device.setdefault(tag.device, []).append(i)
        self.devices = {d.name: d for d in site.devices}
        # What the devices hold (as far as the gateway knows: the last vector written), and
        # when it was last written (the gateway's clock).
        self.applied = np.array([t.safe_value for t in site.actuators], dtype=np.float64)
        self.last_write_s = -math.inf
        # What each actuator was last confirmed to hold (NaN: unknown, write it next cycle).
        self.written = np.full(len(site.actuators), math.nan)
        # The value last handed to each actuator's device (on its way or confirmed), NaN
        # before the first: a cycle that skips a busy device compares it with its decision.
        self.sent = np.full(len(site.actuators), math.nan)
        self.heartbeat = 0
        # Orders whole writes: a cycle's, a write-through batch's, the shutdown's.
        self.lock = asyncio.Lock()
        # Each device's write on its way (its task and when it left, loop time): one at a time
        # per device; a bug raised in one, kept for the control loop.
        self._in_flight: dict[str, tuple[asyncio.Task[bool], float]] = {}
        self._write_bug: BaseException | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start each device's task (it keeps the tag store current and reconnects)."""
        self.tasks = [asyncio.create_task(c.run(), name=f"device:{n}")
                       for n, c in self.clients.items()]

    async def refresh(self) -> None:
        """Read every device's tags once now (stepped drills)."""
        await asyncio.gather(*(c.refresh() for c in self.clients.values()))

    def on_its_way(self, device: str) -> asyncio.Task[bool] | None:
        """The task of ``device``'s write still waiting for its answer, if any."""
        entry = self._in_flight.get(device)
        return None if entry is None else entry[0]

    @property
    def in_flight(self) -> tuple[str, ...]:
        """The devices whose last write is still waiting for the device's answer."""
        return tuple(self._in_flight)

    def write_bound_s(self, device: str) -> float:
        """How long a write to ``device`` may stay on its way before it is abandoned.

        The adapters end every request by themselves at the device's ``timeout_ms`` (and drop
        the connection then); one write is at most a few requests (the actuators' registers,
        their coils, the heartbeat), each of which may wait for a poll's read ahead of it.
        This bound only catches an adapter that breaks that promise: a client that never
        answers would otherwise keep the device's writes skipped for ever."""
        spec = self.devices.get(device)
        timeout_s = spec.timeout_ms / 1000.0 if spec is not None else 1.0
        return 8 * timeout_s + 2.0

    async def write(self, values: F64, heartbeat: bool = False,
                    only: set[int] | None = None, behind_s: float = 0.0) -> bool:
        """Write each device's actuators (those in ``only``, all when None) and, with
        ``heartbeat``, its heartbeat; True when every device confirmed within a cycle.

        A device request is never abandoned before the device's own ``timeout_ms``: each
        device's write runs in a task of its own, this call waits for them at most a cycle,
        and a write that is still on its way then is left to finish (or to time out in its
        adapter, which then drops the connection). While a device has a write on its way,
        nothing more is sent to it: a cycle skips it (its actuators stay unknown in
        :attr:`written`, so the first write after the answer carries the newest values), and
        a caller with ``behind_s`` > 0 (a write-through, the shutdown) first waits that long
        for the earlier write to end. Cancelling a device request half-way is what
        desynchronised Modbus connections (pymodbus then reads the abandoned request's late
        answer as the next one's); one request at a time per device, never cut short by the
        cycle, cannot.

        ``written[i]`` is NaN (unknown) from the moment a value leaves until the device
        confirms it, and stays NaN if the write fails or times out.
        """
        self._raise_write_bug()
        if heartbeat:
            self.heartbeat += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        chosen_by: dict[str, list[int]] = {}
        for device in self.clients:
            chosen = [i for i in self.by_device.get(device, ()) if only is None or i in only]
            if chosen or heartbeat:
                chosen_by[device] = chosen
        busy = [self._in_flight[d][0] for d in chosen_by if d in self._in_flight]
        for device in list(chosen_by):
            pending = self._in_flight.get(device)
            if pending is not None and now - pending[1] > self.write_bound_s(device):
                # The adapter did not end its request at the device's timeout: abandon it.
                # The adapters drop the connection of a cancelled request (never reused out
                # of step); the device is reported, its actuators stay unknown.
                self.faults.fault(f"write:{device}", "write still unanswered after "
                                  f"{self.write_bound_s(device):.1f} s; abandoned")
                pending[0].cancel()
        if behind_s > 0 and busy:
            await asyncio.wait(busy, timeout=behind_s)
        ok = True
        started: list[asyncio.Task[bool]] = []
        for device, chosen in chosen_by.items():
            if device in self._in_flight:
                ok = False  # skipped: its earlier write is still on its way
                continue
            for i in chosen:
                self.written[i] = math.nan  # unknown until the device confirms
                self.sent[i] = float(values[i])
            task = loop.create_task(
                self._write_device(device, {i: float(values[i]) for i in chosen},
                                   self.heartbeat if heartbeat else None),
                name=f"write:{device}")
            self._in_flight[device] = (task, now)
            task.add_done_callback(functools.partial(self._write_ended, device))
            started.append(task)
        if started:
            done, pending_tasks = await asyncio.wait(started, timeout=max(self.period_s, 0.05))
            if pending_tasks:
                ok = False
                self.faults.fault("write-slow", "device writes still waiting for an answer "
                                  "after a cycle; they finish on their own (up to the "
                                  "device's timeout_ms), later writes to those devices wait")
            else:
                self.faults.clear("write-slow")
            for task in done:
                if task.cancelled() or task.exception() is not None or not task.result():
                    ok = False
        self._raise_write_bug()
        return ok

    async def _write_device(self, device: str, values: dict[int, float],
                            heartbeat: int | None) -> bool:
        """One device's write (its own task): the actuators, then the heartbeat. Records what
        the device confirmed in :attr:`written`; True when it confirmed everything."""
        client = self.clients[device]
        ok = True
        if values:
            key = f"write:{device}"
            try:
                await client.write({self.names[i]: v for i, v in values.items()})
            except AdapterError as exc:
                ok = False
                self.faults.fault(key, f"{type(exc).__name__}: {exc}")
            else:
                self.faults.clear(key)
                for i, v in values.items():
                    self.written[i] = v
        if heartbeat is not None:
            key = f"heartbeat:{device}"
            try:
                await client.write_heartbeat(heartbeat)
            except AdapterError as exc:
                ok = False
                self.faults.fault(key, f"{type(exc).__name__}: {exc}")
            else:
                self.faults.clear(key)
        return ok

    def _write_ended(self, device: str, task: asyncio.Task[bool]) -> None:
        entry = self._in_flight.get(device)
        if entry is not None and entry[0] is task:
            del self._in_flight[device]
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a device fault (those are AdapterError, handled in the task): raise
            # it in the control loop at its next write, as an exception in the cycle would be.
            self._write_bug = task.exception()

    def _raise_write_bug(self) -> None:
        bug, self._write_bug = self._write_bug, None
        if bug is not None:
            raise bug

    async def settle(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the writes on their way; cancel what is left."""
        tasks = [task for task, _ in self._in_flight.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def close(self, timeout_s: float, log_error: Callable[..., None]) -> None:
        """Close the clients, then stop their tasks (each within ``timeout_s``)."""
        # Close the clients first: their run() loops end at their next step whatever happens
        # to the cancellation. Python 3.11's asyncio.wait_for (which pymodbus awaits every
        # request with) swallows a cancellation that arrives with the answer; a device task
        # that lost its cancel that way once kept this shutdown waiting for ever.
        for client in self.clients.values():
            await client.close()
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in tasks:
            if task in pending:
                log_error("shutdown: device task %s did not stop within %.0f s; left behind",
                          task.get_name(), timeout_s)
            elif not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                log_error("device task %s ended with %s: %s", task.get_name(),
                          type(exc).__name__, exc)

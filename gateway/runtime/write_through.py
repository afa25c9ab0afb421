"""Operator setpoints written through to the devices before the answer, in batches.

An operator's setpoint (MANUAL only) is checked, encoded, checked again and sent to the device
before the client is answered (validated write-through). Setpoints that arrive while a batch is
on its way go out together in the next one (one device request instead of one per client),
and a batch waits a moment for the other recent writers (group commit, as PostgreSQL's
commit_delay with commit_siblings): when other clients have been writing through in the last
``sibling_active_s``, it waits up to ``sibling_wait_s`` for their next setpoints. A lone writer
never waits.

A setpoint farther away than the rate and step limits allow in one write is a target: the first
step toward it is written before the answer, and the control cycles ramp the rest.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, NamedTuple

from gateway.adapters.base import ACCEPTED, Refusal, WriteOutcome
from gateway.supervisor.modes import Mode

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.envelope.compiled import F64
    from gateway.link.counters import CoreCounters
    from gateway.runtime.records import Records
    from gateway.runtime.southbound import Southbound
    from gateway.supervisor.core import Supervisor

SIBLING_ACTIVE_S = 0.02
SIBLING_WAIT_S = 0.0005

NOT_WRITTEN = WriteOutcome(False, 4, "the write was interrupted; it may or may not have reached "
                                     "the device", Refusal.DEVICE)
STOPPING = WriteOutcome(False, 4, "the gateway is shutting down", Refusal.STOPPING)


def manual_only(mode: Mode) -> WriteOutcome:
    return WriteOutcome(False, 4, f"operator setpoints are taken in MANUAL mode only "
                                  f"(mode is {mode})", Refusal.MODE)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Through(NamedTuple):
    """An operator setpoint waiting to be written through."""

    client: str
    values: dict[str, float]
    indexes: tuple[int, ...]
    outcome: asyncio.Future[WriteOutcome]


class WriteThrough:
    """The write-through queue and its committer task, for one site."""

    def __init__(self, supervisor: Supervisor, southbound: Southbound, records: Callable[[],
                 Records], clock: Callable[[], float], period_s: float,
                 index: dict[str, int], sensors_now: Callable[[], F64],
                 counters: CoreCounters | None = None) -> None:
        self.supervisor = supervisor
        self.southbound = southbound
        self._records = records  # looked up at use: the audit log may be reopened
        self.clock = clock
        self.period_s = period_s
        self.index = index
        self.sensors_now = sensors_now
        self.counters = counters  # answered write-throughs and their latency
        self.stopping = False
        self.sibling_active_s = SIBLING_ACTIVE_S
        self.sibling_wait_s = SIBLING_WAIT_S
        self._queued: list[_Through] = []
        self._committer: asyncio.Task[None] | None = None
        self._writers: dict[str, float] = {}  # client -> when it last wrote through (loop time)
        self._siblings: tuple[asyncio.Future[None], set[str]] | None = None
        # Told of each write-through once it is written (what the devices held before, what
        # they hold now, the sensors and dt it was checked with, when): a candidate site
        # judges it there (gateway.runtime.candidate); it must not raise.
        self.on_write: Callable[[F64, F64, F64, float, float], None] | None = None

    async def submit(self, client: str, group: dict[str, float]) -> WriteOutcome:
        """Queue ``group`` (already inside the envelope as a setpoint) and answer once it is
        written through, or refused. Each answer after queueing is counted with its latency
        (the site's clock) when the write-through has counters."""
        if self.stopping:
            return STOPPING
        start_s = self.clock()
        loop = asyncio.get_running_loop()
        item = _Through(client, group, tuple(self.index[n] for n in group),
                        loop.create_future())
        self._queued.append(item)
        self._note_writer(client, loop.time())
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_queued(), name="write-through")
        outcome = await item.outcome
        counters = self.counters
        if counters is not None:
            counters.observe(counters.layout.write_through, self.clock() - start_s)
        return outcome

    async def stop(self, timeout_s: float, log_error: Callable[..., None]) -> None:
        """Refuse new setpoints, let the batch on its way finish (bounded by ``timeout_s``),
        refuse what is queued: no operator setpoint may land after the shutdown values."""
        self.stopping = True
        committer = self._committer
        if committer is None:
            return
        _, pending = await asyncio.wait([committer], timeout=timeout_s)
        if pending:
            committer.cancel()
            log_error("shutdown: the write-through task did not finish within %.0f s; "
                      "cancelled", timeout_s)

    async def _commit_queued(self) -> None:
        """Write the queued setpoints through, in batches: everything that queued while one
        batch was on its way goes out together in the next. Runs in a task of its own, so
        that a client that disconnects never cuts a device write short."""
        try:
            while self._queued:
                await self._wait_for_siblings()
                batch, self._queued = self._queued, []
                try:
                    await self._commit(batch)
                finally:
                    for item in batch:  # cancelled or a bug: the client still gets an answer
                        if not item.outcome.done():
                            item.outcome.set_result(NOT_WRITTEN)
        finally:
            self._committer = None
            for item in self._queued:  # only when this task was cancelled (shutdown)
                if not item.outcome.done():
                    item.outcome.set_result(STOPPING)
            self._queued = []

    def _note_writer(self, client: str, at_s: float) -> None:
        writers = self._writers
        writers[client] = at_s
        if len(writers) > 64:  # addresses come from clients: keep the recent ones only
            for key in [k for k, t in writers.items() if at_s - t > self.sibling_active_s]:
                del writers[key]
        waiting = self._siblings
        if waiting is not None:
            fut, expected = waiting
            expected.discard(client)
            if not expected:
                _settle(fut)

    async def _wait_for_siblings(self) -> None:
        """Before a batch leaves: wait a moment for the other recent writers' setpoints."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        queued = {item.client for item in self._queued}
        expected = {c for c, t in self._writers.items()
                    if now - t < self.sibling_active_s and c not in queued}
        if not expected:
            return
        fut: asyncio.Future[None] = loop.create_future()
        self._siblings = (fut, expected)
        timer = loop.call_later(self.sibling_wait_s, _settle, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._siblings = None

    async def _commit(self, batch: list[_Through]) -> None:
        """Check the batch's setpoints one after another, each on top of those before it
        (the envelope's linear constraints span actuators), write the accepted ones' first
        steps in one go, and answer each client."""
        south = self.southbound
        async with south.lock:
            # Taken under the lock: a reload swaps the supervisor only while no write holds
            # it (gateway.runtime.reloader), so this one stays in force until the write ends.
            sup = self.supervisor
            wire = sup.wire
            assert wire is not None
            now = self.clock()
            # The setpoint is the target; the first step toward it (within the rate and step
            # limits since the last write) goes to the device before the answer, and the
            # control cycle ramps the rest.
            dt = now - south.last_write_s
            if not math.isfinite(dt):
                dt = self.period_s  # nothing written yet: allow one cycle's movement
            dt = max(dt, 1e-3)
            sensors = self.sensors_now()
            previous = south.applied
            target = previous.copy()
            taken: list[_Through] = []
            for item in batch:
                if self.stopping or sup.mode is not Mode.MANUAL:  # changed while queued
                    item.outcome.set_result(STOPPING if self.stopping
                                            else manual_only(sup.mode))
                    continue
                candidate = target.copy()
                for name, value in item.values.items():
                    candidate[self.index[name]] = value
                admitted = sup.gate.admit(candidate, previous, sensors, dt)
                if any(admitted.safe[i] for i in item.indexes):
                    item.outcome.set_result(WriteOutcome(
                        False, 3, "outside the envelope now: " + ", ".join(admitted.violations)))
                    continue
                trial = target.copy()
                for i in item.indexes:
                    trial[i] = admitted.command[i]
                written = wire.admit(trial, previous, sensors, dt)
                if any(written.safe) or not sup.gate.admissible(written.values, previous,
                                                                sensors, dt):
                    item.outcome.set_result(WriteOutcome(
                        False, 3, "no representable first step inside the envelope"))
                    continue
                for i in item.indexes:
                    target[i] = written.values[i]
                taken.append(item)
            if not taken:
                return
            changed = {i for item in taken for i in item.indexes}
            # What the devices will hold, as a whole, is what was checked last; checked once
            # more as the vector actually written (the invariant, after encoding).
            if not sup.gate.admissible(target, previous, sensors, dt):
                for item in taken:
                    item.outcome.set_result(WriteOutcome(
                        False, 3, "the setpoints together leave the envelope"))
                return
            if not await south.write(target, only=changed, behind_s=max(self.period_s, 0.05)):
                for item in taken:
                    item.outcome.set_result(WriteOutcome(
                        False, 4, "the device did not confirm the write (it failed or timed "
                        "out); the next cycle writes the actuator again"))
                return
            held = previous.copy() if self.on_write is not None else None
            for i in changed:
                south.applied[i] = target[i]
            south.last_write_s = now
            records = self._records()
            records.write(south.applied)
            sup.record_write(south.applied, now)
            if held is not None and self.on_write is not None:
                self.on_write(held, south.applied.copy(), sensors, dt, now)
            for item in taken:
                for name, value in item.values.items():
                    records.setpoint(self.index[name], value)
                    sup.set_operator_setpoint(self.index[name], value)
                item.outcome.set_result(ACCEPTED)

"""The core's supervisor of the communications process, with real child processes: a killed
child is restarted with backoff and reported, a hung (stopped) one is killed and replaced,
stop ends the child, a child that cannot start is retried with a growing delay."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from gateway.comms.supervisor import CommsEvent, CommsEventKind, CommsSupervisor
from gateway.config.loader import load_config
from gateway.link.mirror import MirrorLayout, MirrorWriter
from tests.comms.conftest import StubCore, publish, site_file, until

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from pathlib import Path

LOST, STARTED, STOPPED = CommsEventKind.LOST, CommsEventKind.STARTED, CommsEventKind.STOPPED


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 180))


def kinds(events: list[CommsEvent]) -> list[CommsEventKind]:
    return [e.kind for e in events]


def served(sup: CommsSupervisor) -> bool:
    """The current child answers pings (it is up and its loop runs)."""
    return sup.channel is not None and sup.channel.pongs > 0


def test_a_killed_child_is_restarted_with_backoff_and_reported(tmp_path: Path) -> None:
    async def main() -> None:
        path, _ = site_file(tmp_path)
        writer = MirrorWriter(None, MirrorLayout.for_site(load_config(path)))
        publish(writer, 1)
        events: list[CommsEvent] = []
        sup = CommsSupervisor(path, writer.name, StubCore(), events.append,
                              backoff_initial_s=0.2, backoff_max_s=10.0, stable_s=6.0,
                              ping_interval_s=0.1)
        try:
            await sup.start()
            delays = []
            for n in range(2):
                await until(lambda: served(sup), 60, "the child answers")
                pid = sup.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                t = time.monotonic()
                await until(lambda n=n: kinds(events).count(STARTED) == n + 2, 60,
                            "restarted")
                lost = [e for e in events if e.kind is LOST][-1]
                assert (lost.pid, lost.cause, lost.exit_code, lost.restarts) == (
                    pid, "exited", -signal.SIGKILL, n)
                delays.append(lost.delay_s)
                assert time.monotonic() - t >= lost.delay_s  # it waited before restarting
                assert sup.pid not in (None, pid) and events[-1].restarts == n + 1
            assert delays == [0.2, 0.4]  # doubling
            # a child that ran longer than stable_s resets the backoff
            await until(lambda: served(sup), 60, "the child answers")
            await asyncio.sleep(6.5)
            os.kill(sup.pid or 0, signal.SIGKILL)
            await until(lambda: kinds(events).count(STARTED) == 4, 60, "restarted")
            assert [e for e in events if e.kind is LOST][-1].delay_s == 0.2
        finally:
            await sup.stop()
            writer.close()
        assert kinds(events) == [STARTED, LOST, STARTED, LOST, STARTED, LOST, STARTED, STOPPED]
    run(main())


async def lateness(gaps: list[float]) -> None:
    """How late each 5 ms sleep of this loop wakes (a loop blocked by a wait shows here)."""
    last = time.monotonic()
    while True:
        await asyncio.sleep(0.005)
        now = time.monotonic()
        gaps.append(now - last - 0.005)
        last = now


def test_a_hung_child_is_killed_and_replaced(tmp_path: Path) -> None:
    async def main() -> None:
        path, _ = site_file(tmp_path)
        writer = MirrorWriter(None, MirrorLayout.for_site(load_config(path)))
        publish(writer, 1)
        events: list[CommsEvent] = []
        sup = CommsSupervisor(path, writer.name, StubCore(), events.append,
                              ping_interval_s=0.1, ping_timeout_s=1.0)
        try:
            await sup.start()
            await until(lambda: served(sup), 60, "the child answers")
            pid = sup.pid
            assert pid is not None
            gaps: list[float] = []
            ticker = asyncio.create_task(lateness(gaps))
            os.kill(pid, signal.SIGSTOP)
            t = time.monotonic()
            await until(lambda: LOST in kinds(events), 30, "the hang is seen")
            lost = events[-1]
            assert (lost.pid, lost.cause, lost.exit_code) == (pid, "hung", -signal.SIGKILL)
            assert "no answer to pings" in lost.detail
            assert time.monotonic() - t < 10
            await until(lambda: served(sup), 60, "a new child answers")
            assert sup.pid != pid
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # reaped, not left stopped
            ticker.cancel()
            # The core's loop never waited on the hung child, nor on the new one's start
            # (measured here: at most 2 to 4 ms late; the bound leaves room for a busy host).
            assert max(gaps) < 0.25, max(gaps)
        finally:
            await sup.stop()
            writer.close()
    run(main())


def ignores_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_stop_ends_the_child_and_a_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    # A stand-in child that answers nothing and ignores SIGTERM.
    stubborn = [sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(600)", "--"]

    async def main() -> None:
        events: list[CommsEvent] = []
        sup = CommsSupervisor(tmp_path / "none.yaml", "none", StubCore(), events.append,
                              command=stubborn, stop_timeout_s=0.5, start_timeout_s=60)
        await sup.start()
        pid = sup.pid
        assert pid is not None
        await until(lambda: ignores_sigterm(pid), 30, "the child ignores SIGTERM")
        t = time.monotonic()
        await sup.stop()
        assert time.monotonic() - t < 5
        assert kinds(events) == [STARTED, STOPPED]
        assert events[-1].exit_code == -signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        await sup.stop()  # idempotent
    run(main())


def test_the_child_runs_at_a_lower_priority_than_the_core(tmp_path: Path) -> None:
    # When the CPU is short the scheduler must favour the core's cycle.
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)", "--"]

    async def main() -> None:
        sup = CommsSupervisor(tmp_path / "none.yaml", "none", StubCore(), lambda e: None,
                              command=sleeper, stop_timeout_s=0.5, start_timeout_s=60)
        await sup.start()
        try:
            pid = sup.pid
            assert pid is not None
            core = os.getpriority(os.PRIO_PROCESS, 0)
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, core + 10)
        finally:
            await sup.stop()
    run(main())


def test_a_child_that_cannot_start_is_retried_with_growing_delays(tmp_path: Path) -> None:
    async def main() -> None:
        events: list[CommsEvent] = []
        sup = CommsSupervisor(tmp_path / "none.yaml", "none", StubCore(), events.append,
                              command=[str(tmp_path / "no-such-program")],
                              backoff_initial_s=0.01, backoff_max_s=0.04)
        await sup.start()
        await until(lambda: len(events) >= 5, 30)
        await sup.stop()
        lost = [e for e in events if e.kind is LOST][:5]
        assert [e.cause for e in lost] == ["start failed"] * 5
        assert [e.delay_s for e in lost] == [0.01, 0.02, 0.04, 0.04, 0.04]
        assert [e.restarts for e in lost] == [0, 1, 2, 3, 4]
        assert all(e.pid is None and e.exit_code is None for e in lost)
    run(main())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="backoff_initial_s"):
        CommsSupervisor("s.yaml", "m", StubCore(), lambda e: None, backoff_initial_s=0)
    with pytest.raises(ValueError, match="ping_timeout_s"):
        CommsSupervisor("s.yaml", "m", StubCore(), lambda e: None,
                        ping_timeout_s=float("nan"))

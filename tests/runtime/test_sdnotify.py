"""systemd notifications (gateway/runtime/sdnotify.py), received on a real Unix datagram socket:
READY once the core is open, WATCHDOG fed by completed cycles (rate limited; none while a cycle
is stuck, although the event loop still runs), STATUS with the mode, STOPPING at close."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import gateway
from gateway.runtime.gateway import Gateway
from gateway.runtime.sdnotify import ServiceNotifier
from gateway.runtime.view import PlantView
from tests.incident.test_via_gateway import Device

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket, as systemd's notify socket (a short path: sun_path holds
    108 bytes, and pytest's tmp_path can be longer)."""
    folder = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield path, sock
    finally:
        sock.close()
        shutil.rmtree(folder)


def receive(sock: socket.socket, timeout_s: float) -> str | None:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(4096).decode()
    except (TimeoutError, BlockingIOError):  # BlockingIOError: timeout 0, nothing queued
        return None


def view(mode: str = "AUTO", latched: bool = False, reason: str = "") -> PlantView:
    return PlantView(at_s=0.0, at_wall_s=0.0, cycle=1, sensor_values=(), sensor_good=(),
                     sensor_at_s=(), applied=(), sources=(), proposal=(), mode=mode,
                     latched=latched, trip_reason=reason, incident_id="", heartbeat=1,
                     bypasses=(), bypass_left_s=None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_is_rate_limited_to_half_the_timeout_and_status_follows_the_mode(listener):
    path, sock = listener
    clock = Clock()
    notifier = ServiceNotifier(path, watchdog_s=1.0, clock=clock)
    notifier.ready()
    assert receive(sock, 5.0) == "READY=1"
    notifier.publish(view("AUTO"))
    assert receive(sock, 5.0) == "STATUS=mode AUTO\nWATCHDOG=1"
    sent = []
    for _ in range(16):  # 16 cycles of 0.125 s (exact in binary): 2 s, i.e. 4 half-timeouts
        clock.now += 0.125
        notifier.publish(view("AUTO"))
        message = receive(sock, 0.0)
        if message is not None:
            sent.append((round(clock.now - 100.0, 3), message))
    assert sent == [(0.5, "WATCHDOG=1"), (1.0, "WATCHDOG=1"), (1.5, "WATCHDOG=1"),
                    (2.0, "WATCHDOG=1")]
    clock.now += 0.1
    notifier.publish(view("MANUAL", latched=True, reason="cusum"))
    assert receive(sock, 5.0) == "STATUS=mode MANUAL, latched: cusum"
    notifier.stopping()
    assert receive(sock, 5.0) == "STOPPING=1\nSTATUS=stopping: applying the shutdown policy"
    notifier.close()


def test_abstract_namespace_address():
    name = f"sdnotify-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        notifier = ServiceNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        assert receive(sock, 5.0) == "READY=1"
        notifier.close()
    finally:
        sock.close()


def test_environment():
    assert not ServiceNotifier.from_environment({}).enabled
    ServiceNotifier.from_environment({}).ready()  # a no-op, no error
    here = ServiceNotifier.from_environment(
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "3000000",
         "WATCHDOG_PID": str(os.getpid())})
    assert here.enabled
    assert here.watchdog_interval_s == 1.5
    here.close()
    # A watchdog meant for another process is not ours to feed.
    other = ServiceNotifier.from_environment(
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "3000000",
         "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval_s is None
    other.close()
    with pytest.raises(ValueError, match="watchdog_s must be > 0"):
        ServiceNotifier(None, watchdog_s=0.0)


def test_never_blocks_and_logs_a_failing_socket_once(listener, caplog):
    """Nobody reads the socket: its queue fills and sends fail at once (EAGAIN) instead of
    holding the cycle; the failure is one error line, not one per cycle."""
    path, sock = listener
    clock = Clock()
    notifier = ServiceNotifier(path, watchdog_s=0.001, clock=clock)
    caplog.set_level(logging.DEBUG, logger="gateway.runtime")
    started = time.monotonic()
    for _ in range(5000):
        clock.now += 0.001
        notifier.publish(view())
    assert time.monotonic() - started < 10.0  # a blocking send would hang here for good
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "cannot notify" in errors[0].getMessage()
    # Once the queue drains, notifications go through again, and that is said once.
    while receive(sock, 0.0) is not None:
        pass
    clock.now += 1.0
    notifier.publish(view())
    assert receive(sock, 5.0) == "WATCHDOG=1"
    assert any("notifying" in r.getMessage() and "again" in r.getMessage()
               for r in caplog.records)
    notifier.close()


def test_a_running_gateway_notifies_ready_watchdog_from_its_cycle_and_stopping(listener):
    """A real Gateway.run (wall clock, 100 ms cycle) with the notifier at a 0.4 s watchdog:
    READY comes first, then WATCHDOG about every 0.2 s while cycles complete. A cycle stuck
    on the southbound lock (the event loop keeps running) sends none; once it is free the
    watchdog resumes; STOPPING is the last message."""
    path, sock = listener
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    site = replace(site, northbound=replace(site.northbound, modbus=None, opcua=None))
    notifier = ServiceNotifier(path, watchdog_s=0.4)
    gw = Gateway(site, clients={"plc": Device()}, servers=False, startup_wait_s=0.0,
                 service=notifier)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def serve() -> None:
        loop.run_until_complete(gw.run(stop))

    thread = threading.Thread(target=serve, name="gateway")
    holding = False
    thread.start()
    try:
        assert receive(sock, 30.0) == "READY=1"
        first = receive(sock, 10.0)
        assert first is not None
        assert first.startswith("STATUS=mode "), first
        assert first.endswith("WATCHDOG=1"), first
        for _ in range(3):
            assert receive(sock, 10.0) == "WATCHDOG=1"
        # Stick the cycle: hold the lock it takes to write the devices.
        held = asyncio.run_coroutine_threadsafe(gw.southbound.lock.acquire(), loop)
        held.result(10.0)
        holding = True
        stuck_count = gw.control.count if gw.control is not None else -1
        while receive(sock, 0.0) is not None:  # what was sent before it stuck
            pass
        # Three watchdog intervals (1.2 s) without a single notification.
        assert receive(sock, 1.2) is None
        assert gw.control is not None and gw.control.count == stuck_count
        loop.call_soon_threadsafe(gw.southbound.lock.release)
        holding = False
        assert receive(sock, 10.0) == "WATCHDOG=1"
        loop.call_soon_threadsafe(stop.set)
        rest = []
        while (message := receive(sock, 30.0)) is not None:
            rest.append(message)
            if message.startswith("STOPPING=1"):
                break
        assert rest, "no STOPPING=1 at close"
        assert rest[-1].startswith("STOPPING=1"), rest
    finally:
        if holding:  # a failed assertion above: let close() take the lock
            loop.call_soon_threadsafe(gw.southbound.lock.release)
        loop.call_soon_threadsafe(stop.set)
        thread.join(60.0)
        loop.close()
        notifier.close()
    assert not thread.is_alive()

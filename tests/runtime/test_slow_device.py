"""A PLC that answers late, but within its ``timeout_ms``, is a healthy PLC.

The water tank's simulated PLC (its plant running in real time) sits behind a proxy that holds
its answers 400 ms during the first second of every ten; the device's ``timeout_ms`` is 500.
The real gateway (``safety-gateway run``, its own process) runs against it for two minutes.
Nothing may happen: no reconnect (the proxy counts connections), no trip, no desynchronised
connection, and every value the PLC received is inside the envelope (the PLC's own record).
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import gateway
import gateway.envelope
from gateway.envelope.gate import Gate
from simulators.plant_server import PlantServer
from simulators.plants.water_tank import WaterTank
from simulators.ports import free_port
from tests.runtime.delayproxy import DelayProxy

ROOT = Path(__file__).resolve().parents[2]
RUN_S = 120.0  # the two minutes: twelve slow windows
PERIOD_S = 10.0  # one slow second in every ten


def _site_text(proxy_port: int) -> str:
    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    assert "timeout_ms: 500" in text  # the device timeout
    text = text.replace("port: 5020", f"port: {proxy_port}")
    text = text.replace("port: 1502", f"port: {free_port()}")
    return text.replace("127.0.0.1:4841", f"127.0.0.1:{free_port()}")


def _unsafe_writes(site: gateway.config.Site, server: PlantServer) -> tuple[int, int, list[str]]:
    """Every actuator write in the PLC's record, checked (reference engine) on top of what the
    PLC held, against the sensors it was publishing, with the time since its previous write
    plus one cycle for the rate limits (the issue's statement of them)."""
    env = gateway.envelope.compile(site, "python")
    gate = Gate(env)
    names = [t.name for t in site.actuators]
    index = {n: i for i, n in enumerate(names)}
    sensors = [t.name for t in site.sensors]
    cycle_s = site.site.cycle_ms / 1000.0
    initial = WaterTank(seed=5).actuators()
    held = np.array([initial[n] for n in names], dtype=np.float64)
    history = list(server.history)
    last_at = -math.inf
    unsafe = checked = 0
    examples: list[str] = []
    h = 0
    for w in server.writes:
        if w.tag not in index:
            continue
        while h + 1 < len(history) and history[h + 1].at_s <= w.at_s:
            h += 1
        published = history[h].sensors_published if history else {}
        vec = np.array([published.get(n, math.nan) for n in sensors], dtype=np.float64)
        previous = held.copy()
        held[index[w.tag]] = w.value
        dt = (w.at_s - last_at if math.isfinite(last_at) else 0.0) + cycle_s
        last_at = w.at_s
        checked += 1
        if not gate.admissible(held, previous, vec, dt):
            unsafe += 1
            if len(examples) < 5:
                verdict = env.check(held, previous, vec, dt)
                examples.append(f"t={w.at_s:.2f} {w.tag}={w.value:g}: {verdict.violations}")
    return unsafe, checked, examples


def test_a_plc_answering_late_within_its_timeout_causes_no_reconnect_and_no_trip(tmp_path):
    async def body() -> tuple[str, DelayProxy, PlantServer, float]:
        plant = PlantServer(WaterTank(seed=5), opcua_port=None)
        await plant.start()
        ticking = asyncio.create_task(plant.run(speed=1.0))
        proxy = DelayProxy("127.0.0.1", plant.modbus_port or 0, delay_s=0.4, slow_s=1.0,
                           period_s=PERIOD_S)
        await proxy.start()
        site = tmp_path / "site.yaml"
        site.write_text(_site_text(proxy.port))
        log = tmp_path / "gateway.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with log.open("w") as err:
            # Popen returns at once (the gateway runs beside this loop, as a user starts it).
            gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run",  # noqa: ASYNC220
                                   str(site), "--no-audit"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=err)
        try:
            # Running: the gateway's heartbeat reaches the PLC (start-up takes seconds on a
            # loaded host; wait for it, within a deadline).
            deadline = time.monotonic() + 60
            while not any(w.tag == "heartbeat" for w in plant.writes):
                assert gw.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the gateway never wrote its heartbeat"
                await asyncio.sleep(0.1)
            started = time.monotonic()
            while time.monotonic() - started < RUN_S:  # the observation window itself
                assert gw.poll() is None, log.read_text()
                await asyncio.sleep(0.5)
            observed = time.monotonic() - started
            gw.send_signal(signal.SIGTERM)
            while gw.poll() is None:
                assert time.monotonic() - started < RUN_S + 30, "the gateway did not stop"
                await asyncio.sleep(0.1)
        finally:
            if gw.poll() is None:
                gw.kill()
            ticking.cancel()
            await asyncio.gather(ticking, return_exceptions=True)
            await proxy.stop()
            await plant.stop()
        return log.read_text(), proxy, plant, observed

    # The proxy and the simulated PLC run in this (pytest's) process, whose heap after a
    # thousand tests makes a full garbage collection take hundreds of milliseconds: enough to
    # hold a 400 ms answer past the 500 ms timeout and make the *harness* the late device.
    # The collector stays off while they serve; the gateway under test is its own process.
    gc.collect()
    gc.disable()
    try:
        text, proxy, plant, observed = asyncio.run(body())
    finally:
        gc.enable()
    assert "Traceback" not in text, text
    # The schedule really slowed the PLC: answers held in (nearly) every slow window.
    assert proxy.delayed >= 10
    assert observed >= RUN_S
    reconnects = proxy.accepted - 1
    trips = re.findall(r"event kind=trip name=(\S+)", text)
    lost = [line for line in text.splitlines()
            if "connection lost" in line or "no answer within" in line
            or "transaction_id" in line]
    print(f"reconnects={reconnects} trips={trips} delayed={proxy.delayed}")
    assert (reconnects, trips, lost[:5]) == (0, [], []), (reconnects, trips, lost[:5])
    site = gateway.load_config(tmp_path / "site.yaml")
    unsafe, checked, examples = _unsafe_writes(site, plant)
    assert checked > 500  # the record holds two minutes of writes
    assert unsafe == 0, examples

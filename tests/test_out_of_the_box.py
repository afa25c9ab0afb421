"""The shipped site talks to the shipped simulator out of the box: `simulate water_tank` on its
default ports and `run configs/water_tank.yaml`, as two processes, as a user would start them."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTS = (5020, 4840, 1502, 4841)  # simulator Modbus/OPC UA, gateway northbound Modbus/OPC UA


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_water_tank_site_runs_against_the_water_tank_simulator(tmp_path):
    busy = [p for p in PORTS if not _free(p)]
    assert not busy, f"the example ports are taken on this machine: {busy}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    sim = subprocess.Popen([sys.executable, "-m", "gateway.cli", "simulate", "water_tank"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    gw = None
    try:
        deadline = time.monotonic() + 30
        while _free(5020) and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = tmp_path / "stats.json"
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run",
                               "configs/water_tank.yaml", "--no-audit", "--stats-json",
                               str(stats)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        time.sleep(8)  # start-up (the OPC UA server takes a few seconds), then cycles
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=30)
        assert gw.returncode == 0, err
        assert "Traceback" not in err
        assert "cannot connect" not in err  # the site found the simulator where it said
        figures = json.loads(stats.read_text())
        cycles = figures["cycles"]
        assert cycles > 20
        at = figures["timeline"]["at_s"]  # each cycle's start, in order, about a period apart
        assert len(at) == len(figures["timeline"]["lateness_ms"]) == cycles
        assert all(b > a for a, b in itertools.pairwise(at))
        assert at[-1] - at[0] >= (cycles - 1) * figures["period_ms"] / 1000.0 * 0.99
        # The process froze its start-up heap before the first cycle and timed the collector.
        assert figures["gc_frozen"] > 10_000
        assert len(figures["gc_collections"]) == len(figures["gc_pause_ms_max"]) == 3
        # The tank's readings were good: no input fault sent the gateway to SAFE_STOP.
        assert "safe_stop" not in err.lower(), err
    finally:
        if gw is not None and gw.poll() is None:
            gw.kill()
        sim.send_signal(signal.SIGTERM)
        _out, serr = sim.communicate(timeout=30)
    assert sim.returncode == 0, serr
    assert "Traceback" not in serr


def test_kill_9_of_the_running_gateway_leaves_a_verifiable_audit_chain(tmp_path):
    # Every cycle audited (sample_every_n: 1), the gateway killed without warning twice: the
    # database holds what was committed, its chain verifies, and the second run continues it.
    from gateway.audit import read_records, verify

    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    db = tmp_path / "audit.db"
    text = text.replace("path: ../reports/water_tank_audit.db", f"path: {db}")
    text = text.replace("sample_every_n: 100", "sample_every_n: 1")
    site = tmp_path / "water_tank.yaml"
    site.write_text(text)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    sim = subprocess.Popen([sys.executable, "-m", "gateway.cli", "simulate", "water_tank"],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    counts = []
    try:
        deadline = time.monotonic() + 30
        while _free(5020) and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(2):
            gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", str(site)],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
            time.sleep(7)
            gw.kill()  # SIGKILL: no shutdown, no flush
            gw.wait(timeout=10)
            result = verify(db)
            assert result.ok, result.message
            counts.append(result.records)
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
    assert counts[0] > 20  # decisions were committed while it ran
    assert counts[1] > counts[0]  # the second run continued the same chain
    kinds = {r.kind for r in read_records(db)}
    assert {"config_load", "decision"} <= kinds

"""The shipped site talks to the shipped simulator out of the box: `simulate water_tank` on its
default ports and `run configs/water_tank.yaml`, as two processes, as a user would start them."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
PORTS = (5020, 4840, 1502, 4841)  # simulator Modbus/OPC UA, gateway northbound Modbus/OPC UA


def _cycles_seen(port: int = 1502) -> int | None:
    """The gateway's status.heartbeat (input register 1003: +1 every control cycle) read from
    its northbound Modbus server, or None while it does not answer (starting up)."""
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    try:
        if not client.connect():
            return None
        rr = client.read_input_registers(1003, count=1, device_id=1)
        return None if rr.isError() else int(rr.registers[0])
    except OSError:
        return None
    finally:
        client.close()


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str,
              alive: subprocess.Popen[str] | None = None) -> None:
    """Poll ``condition`` until true; fail after ``timeout_s`` (a deadline, not a fixed
    wait: a loaded host takes longer to start, a quiet one does not wait for nothing)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"exited with {alive.returncode} while waiting: {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


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
        _wait_for(lambda: not _free(5020), 60, "the simulator listens", sim)
        stats = tmp_path / "stats.json"
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run",
                               "configs/water_tank.yaml", "--no-audit", "--stats-json",
                               str(stats)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        # Start-up (the OPC UA server takes seconds, more on a loaded host), then 50 cycles.
        _wait_for(lambda: (_cycles_seen() or 0) >= 50, 120, "50 control cycles", gw)
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


def _records(db: Path) -> int:
    """How many records the audit database holds now (0 before it exists)."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True,
                                                timeout=1)) as con:
            return int(con.execute("SELECT count(*) FROM records").fetchone()[0])
    except sqlite3.Error:  # created but no table yet, or busy: not yet
        return 0


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
    gw = None
    try:
        _wait_for(lambda: not _free(5020), 60, "the simulator listens")
        for run in range(2):
            gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", str(site)],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, text=True)
            # Killed once it has cycled a while (50 cycles more than the run before left).
            before = counts[-1] if counts else 0
            _wait_for(lambda b=before: (_cycles_seen() or 0) >= 50 and _records(db) > b + 50,
                      120, f"run {run + 1} cycling and committing", gw)
            gw.kill()  # SIGKILL: no shutdown, no flush
            gw.wait(timeout=10)
            result = verify(db)
            assert result.ok, result.message
            counts.append(result.records)
    finally:
        if gw is not None and gw.poll() is None:  # a failed wait must not leave it running
            gw.kill()
            gw.wait(timeout=10)
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
    assert counts[0] > 20  # decisions were committed while it ran
    assert counts[1] > counts[0]  # the second run continued the same chain
    kinds = {r.kind for r in read_records(db)}
    assert {"config_load", "decision"} <= kinds

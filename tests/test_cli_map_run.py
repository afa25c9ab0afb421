"""`safety-gateway map` and `safety-gateway run` (a real process, stopped by a signal)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from gateway.audit import read_records, verify
from gateway.cli import main
from gateway.config.schema import Table
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port

from .runtime.test_logs import PREFIX as LOG_LINE

ROOT = Path(__file__).resolve().parent.parent


def test_map_json_has_the_documented_shape(capsys):
    assert main(["map", "--json", str(ROOT / "configs" / "water_tank.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unit"] == 1
    assert {e["tag"] for e in out["modbus"] if e["writable"]} == {
        "inflow_valve", "outflow_pump", "drain_valve"}
    for e in out["modbus"]:
        assert set(e) >= {"tag", "table", "address", "type", "scale", "writable"}
    assert all(set(n) == {"tag", "nodeid", "writable"} for n in out["opcua"])
    # What the coded status registers and refused OPC UA writes mean, each kind its own code.
    rejection = out["modbus_codes"]["status.rejection"]
    assert len(set(rejection.values())) == len(rejection) == 10
    assert "MANUAL only" in rejection["5"]
    assert "busy" in rejection["9"] and out["opcua_refusals"]["busy"] == "BadTooManyOperations"
    assert out["opcua_refusals"]["mode"] == "BadInvalidState"
    level = next(s for s in out["southbound"] if s["tag"] == "level")
    assert level == {"tag": "level", "device": "plc", "table": "input_register", "address": 0,
                     "type": "float32", "word_order": "big", "byte_order": "big",
                     "scale": 1.0, "offset": 0.0, "kind": "sensor"}


def test_map_of_an_invalid_site_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: {name: x}\n")
    assert main(["map", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err


async def run_and_stop(tmp_path: Path, sig: signal.Signals) -> tuple[int, str, list[int]]:
    async with TestPLC(holding=128) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
        await plc.set_registers(Table.HOLDING_REGISTER, 0, [3000, 3000])
        text = (ROOT / "configs" / "water_tank.yaml").read_text()
        text = text.replace("port: 5020", f"port: {plc.port}")
        text = text.replace("port: 1502", f"port: {free_port()}")
        text = text.replace("opc.tcp://127.0.0.1:4841/gateway/",
                            f"opc.tcp://127.0.0.1:{free_port()}/gateway/")
        assert "path: ../reports/water_tank_audit.db" in text
        # A folder that does not exist yet: the gateway creates it.
        text = text.replace("path: ../reports/water_tank_audit.db", "path: audit/site.db")
        site = tmp_path / "site.yaml"
        site.write_text(text)
        log = tmp_path / "stderr.log"
        with log.open("wb") as stderr:  # a file, not a pipe: a full pipe would block the child
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "run", str(site), cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})
            # Wait until the gateway's heartbeat has ticked a few times: it is in control.
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            beat = 0
            while loop.time() < end and beat <= 3:
                await asyncio.sleep(0.1)
                beat = (await plc.get_registers(Table.HOLDING_REGISTER, 100, 1))[0]
            assert beat > 3, log.read_text()
            if sig is signal.SIGINT:
                # Ctrl-C in a terminal signals the whole process group: the audit writer
                # process too, which must leave the stopping to the gateway.
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                # PYTHONFAULTHANDLER: SIGABRT makes it print every thread's stack to its log.
                proc.send_signal(signal.SIGABRT)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                pytest.fail(f"no exit 30 s after {sig.name}; its log:\n{log.read_text()}")
        held = await plc.get_registers(Table.HOLDING_REGISTER, 0, 2)
        assert proc.returncode is not None
        return proc.returncode, log.read_text(), held


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_signal_and_applies_shutdown_policy(tmp_path, sig):
    code, err, held = asyncio.run(run_and_stop(tmp_path, sig))
    assert code == 0, err
    assert "Traceback" not in err
    # Structured: every line of the log is one record (gateway/runtime/logs.py).
    assert all(LOG_LINE.match(line) for line in err.splitlines()), err
    assert "engine=cython" in err  # the engine in use is logged at start
    assert "writer=process" in err  # the audit log's writer runs in a child process
    assert "shutdown: safe values written to inflow_valve" in err
    # inflow_valve: on_shutdown safe -> 0 %; outflow_pump: on_shutdown hold -> untouched.
    assert held[0] == 0
    assert held[1] == 3000  # held at the running fallback value (30 %), not the safe 20 %
    # The audit chain was closed cleanly: every record written, the chain intact, and the
    # shutdown itself recorded.
    assert "could not be written" not in err
    result = verify(tmp_path / "audit" / "site.db")
    assert result.ok, result
    last = list(read_records(tmp_path / "audit" / "site.db"))[-1]
    assert last.kind == "shutdown"
    assert last.data()["actuators"]["inflow_valve"] == {"policy": "safe", "value": 0.0}
    assert last.data()["actuators"]["outflow_pump"] == {"policy": "hold", "value": 30.0}



def test_run_with_a_northbound_port_taken_exits_3_naming_it(tmp_path):
    # The northbound servers run in the communications process, which retries with backoff
    # when it cannot bind; at start-up a taken port is a setup error and `run` says so.
    import socket
    import subprocess

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        text = (ROOT / "configs" / "water_tank.yaml").read_text()
        text = text.replace("port: 1502", f"port: {port}")
        site = tmp_path / "site.yaml"
        site.write_text(text)
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--no-audit",
                              str(site)], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    finally:
        taken.close()
    assert out.returncode == 3, out.stderr
    assert f"northbound Modbus 127.0.0.1:{port} cannot be bound" in out.stderr
    assert "Traceback" not in out.stderr

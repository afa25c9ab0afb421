"""Signals to a real `safety-gateway run` process against a real simulated PLC: SIGHUP
reloads the site file and never stops the gateway; every stopping signal applies the
shutdown policy first."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from gateway.audit import read_records, verify
from gateway.config.schema import Table
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def site_file(tmp_path: Path, plc_port: int) -> Path:
    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    text = text.replace("port: 5020", f"port: {plc_port}")
    text = text.replace("port: 1502", f"port: {free_port()}")
    text = text.replace("opc.tcp://127.0.0.1:4841/gateway/",
                        f"opc.tcp://127.0.0.1:{free_port()}/gateway/")
    text = text.replace("path: ../reports/water_tank_audit.db", "path: audit.db")
    site = tmp_path / "site.yaml"
    site.write_text(text)
    return site


async def wait_for(condition, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not await condition():
        if loop.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def heartbeat(plc: TestPLC) -> int:
    return (await plc.get_registers(Table.HOLDING_REGISTER, 100, 1))[0]


async def start_gateway(tmp_path: Path, plc: TestPLC, log: Path
                        ) -> asyncio.subprocess.Process:
    await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
    # Both actuators at 40 %: the inflow valve's safe value (its shutdown policy) is 0.
    await plc.set_registers(Table.HOLDING_REGISTER, 0, [4000, 4000])
    site = site_file(tmp_path, plc.port)
    with log.open("wb") as stderr:  # a file, not a pipe: a full pipe would block the child
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "run", str(site), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})

    async def beating() -> bool:
        assert proc.returncode is None, "the gateway ended at start; see its log"
        return await heartbeat(plc) > 3

    await wait_for(beating, 30, "the gateway's heartbeat")
    return proc


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def hup_then(tmp_path: Path, sig: signal.Signals) -> None:
    log = tmp_path / "stderr.log"
    async with TestPLC(holding=128) as plc:
        proc = await start_gateway(tmp_path, plc, log)
        try:
            # SIGHUP reloads the site file: tighten the inflow's max above its position (no
            # ramp needed), then SIGHUP to the whole group (a closed terminal does that): the
            # audit writer process must survive it too.
            site = tmp_path / "site.yaml"
            site.write_text(site.read_text().replace(
                "inflow_valve: {min: 0.0, max: 100.0,", "inflow_valve: {min: 0.0, max: 90.0,"))
            os.killpg(proc.pid, signal.SIGHUP)

            async def logged() -> bool:
                assert proc.returncode is None, f"SIGHUP ended the gateway:\n{log.read_text()}"
                return "SIGHUP: applied" in log.read_text()

            await wait_for(logged, 20, "the SIGHUP reload's log line")
            beat = await heartbeat(plc)

            async def cycling() -> bool:
                assert proc.returncode is None, f"SIGHUP ended the gateway:\n{log.read_text()}"
                return await heartbeat(plc) > beat + 10

            await wait_for(cycling, 20, "ten more cycles after SIGHUP")
            assert proc.returncode is None
            # Inflow at its running value, not at 0 yet: the shutdown write below is real.
            before = len(plc.writes)
            proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                pytest.fail(f"no exit 30 s after {sig.name}; its log:\n{log.read_text()}")
        finally:
            await stop(proc)
        err = log.read_text()
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert "SIGHUP received: reloading the site file" in err
        records = read_records(tmp_path / "audit.db", kinds=("reload",))
        assert [(r.data()["action"], r.data()["summary"], r.actor) for r in records][:2] == [
            ("commit", "1 tightened", "signal:SIGHUP"), ("applied", "1 tightened",
                                                         "signal:SIGHUP")]
        assert f"{sig.name} received: stopping" in err
        assert "audit writer process exited unexpectedly" not in err
        # The PLC's own record: the last write to the inflow valve (holding 0) is its safe 0.
        inflow = [w for w in plc.writes[before:] if w.address == 0 and w.result == 0]
        assert inflow, "no write reached the inflow valve after the signal"
        assert inflow[-1].values[0] == 0
        held = await plc.get_registers(Table.HOLDING_REGISTER, 0, 1)
        assert held == [0]
    db = tmp_path / "audit.db"
    assert verify(db).ok
    kinds = [r.kind for r in read_records(db)]
    assert "shutdown" in kinds
    shutdown = [r for r in read_records(db, kinds=("shutdown",))][-1].data()
    assert shutdown["actuators"]["inflow_valve"] == {"policy": "safe", "value": 0.0}
    assert shutdown["signal"] == sig.name


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT])
def test_sighup_reloads_and_a_stopping_signal_applies_the_shutdown_policy(tmp_path, sig):
    asyncio.run(hup_then(tmp_path, sig))

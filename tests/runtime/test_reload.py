"""Hot reload of the site file against a running gateway: a Modbus PLC on loopback (the test
PLC records every write it receives), the gateway's own northbound Modbus and OPC UA servers
with live clients, and the audit chain in SQLite.

The site file is the water tank's, written to a temporary folder with the test's ports; each
test edits that file and asks the running gateway to reload it.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gateway
from gateway.audit.store import read_records
from gateway.config.schema import Table
from gateway.runtime.gateway import Gateway
from gateway.runtime.reload import Status
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

ROOT = Path(__file__).resolve().parents[2]
INFLOW_RATE_PER_S = 20.0  # configs/water_tank.yaml
INFLOW_STEP = 10.0
RESOLUTION = 0.01  # uint16, scale 0.01


def write_site(folder: Path, plc_port: int, modbus_port: int, opcua_port: int | None = None,
               edit: Callable[[str], str] = lambda t: t) -> Path:
    """The water tank's site file with this test's ports (OPC UA off without a port), the
    test PLC's still level accepted (no frozen-sensor check), the audit log in ``folder``."""
    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    text = text.replace("port: 5020", f"port: {plc_port}").replace(
        "poll_ms: 100", "poll_ms: 20").replace("port: 1502", f"port: {modbus_port}")
    text = text.replace("  frozen_after_s: {level: 5}\n", "")
    text = text.replace("path: ../reports/water_tank_audit.db", "path: audit.db")
    text = text.replace("clean_shadow_s: 300", "clean_shadow_s: 1")
    if opcua_port is None:
        text = re.sub(r"\n  opcua:\n(    .*\n|\s*\n)*", "\n", text)
    else:
        text = text.replace("127.0.0.1:4841", f"127.0.0.1:{opcua_port}")
    path = folder / "site.yaml"
    path.write_text(edit(text))
    return path


def tighten_inflow_max(value: float) -> Callable[[str], str]:
    def edit(text: str) -> str:
        old = "inflow_valve: {min: 0.0, max: 100.0,"
        assert old in text
        return text.replace(old, f"inflow_valve: {{min: 0.0, max: {value},")
    return edit


def edit_file(path: Path, edit: Callable[[str], str]) -> None:
    path.write_text(edit(path.read_text()))


def inflow_writes(plc: TestPLC) -> list[tuple[float, float]]:
    """(arrival time, inflow %) of every accepted write of the inflow valve."""
    return [(w.at_s, w.values[0] * RESOLUTION) for w in plc.writes
            if w.table is Table.HOLDING_REGISTER and w.address == 0 and w.result == 0]


async def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not check():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def running(folder: Path, engine: str, inflow: float,
                  body: Callable[[Gateway, TestPLC, Path], Awaitable[Any]],
                  opcua: bool = False) -> Any:
    """Run a gateway on the site file against a test PLC holding the inflow at ``inflow`` %
    (level 2.5 m: the fallback PID's setpoint, so the valve stays there in MANUAL)."""
    async with TestPLC(holding=128) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
        await plc.set_registers(Table.INPUT_REGISTER, 2, [10])
        await plc.set_registers(Table.HOLDING_REGISTER, 0, [round(inflow * 100), 3000])
        path = write_site(folder, plc.port, free_port(), free_port() if opcua else None)
        site = gateway.load_config(path)
        gw = Gateway(site, engine=engine, audit_path=folder / "audit.db")
        stop = asyncio.Event()
        runner = asyncio.create_task(gw.run(stop))
        try:
            await asyncio.wait_for(gw.ready.wait(), 30)
            await until(lambda: len(gw.decisions) >= 3, 30, "the first cycles")
            return await body(gw, plc, path)
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)


def reload_records(folder: Path) -> list[dict[str, Any]]:
    return [r.data() | {"actor": r.actor}
            for r in read_records(folder / "audit.db", kinds=("reload",))]


# ---------------------------------------------------------------------------- the ramp


def test_a_max_tightened_below_the_position_is_reached_at_the_rate_limit(
        tmp_path: Path, engine: str) -> None:
    async def body(gw: Gateway, plc: TestPLC, path: Path) -> Any:
        assert abs(gw.applied[0] - 60.0) < 1.0
        edit_file(path, tighten_inflow_max(30.0))
        before = len(plc.writes)
        out = await gw.reload("admin")
        assert out.status is Status.APPLIED, out.text()
        assert [r["actuator"] for r in out.ramps] == ["inflow_valve"]
        # Until the PLC holds the new max (60 -> 30 % at 20 %/s: 1.5 s).
        await until(lambda: bool(inflow_writes(plc)) and inflow_writes(plc)[-1][1] <= 30.0,
                    30, "the valve at its new max")
        await until(lambda: gw.reloader is not None and gw.reloader.state.ramp is None, 30,
                    "the end of the ramp")
        return out, plc.writes[before:], gw.site.envelope.limits[0].max

    _out, writes, new_max = asyncio.run(running(tmp_path, engine, 60.0, body))
    assert new_max == 30.0
    got = [(w.at_s, w.values[0] * RESOLUTION) for w in writes
           if w.table is Table.HOLDING_REGISTER and w.address == 0 and w.result == 0]
    assert got, "no inflow write after the reload"
    assert got[-1][1] <= 30.0 + 1e-9
    cycle_s = 0.1
    moves = [(t1, x1, t2, x2) for (t1, x1), (t2, x2) in itertools.pairwise(got)]
    assert len([m for m in moves if m[3] < m[1]]) >= 5, got  # it ramped, in several writes
    for t1, x1, t2, x2 in moves:
        # No jump: each move within the step limit and the rate limit over its time
        # (plus one cycle: the PLC's arrival times jitter around the gateway's write times).
        assert abs(x2 - x1) <= INFLOW_STEP + RESOLUTION, (x1, x2)
        assert abs(x2 - x1) <= INFLOW_RATE_PER_S * (t2 - t1 + cycle_s) + RESOLUTION, (
            t1, x1, t2, x2)
    # Never above the transitional bound: it starts at the position (60 %) and falls at the
    # rate limit; so no value ever exceeds the first one.
    assert max(x for _, x in got) <= 60.0 + RESOLUTION
    records = reload_records(tmp_path)
    assert [r["action"] for r in records][:2] == ["commit", "applied"]
    assert records[1]["ramps"][0]["to"] == 30.0
    assert records[-1]["action"] == "ramp_done"
    assert records[0]["old_sha256"] != records[0]["new_sha256"]
    assert records[0]["actor"] == "admin"

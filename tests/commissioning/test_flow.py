"""The commissioning flow end to end, as issue 20's "Done when" puts it, on the simulated water
tank: an engineer points ``learn`` at a stretch of the plant's history, reads the report,
``prove``s the proposed site on another stretch, runs the site with it as the candidate (in
shadow: the candidate judges, the hand-written envelope acts), commits it live with a reload,
and tightens one limit later without a restart.

The plant is the water-tank simulator behind its simulated PLC (Modbus TCP on loopback, the
plant ticking in real time); the gateway is the in-process :class:`Gateway` with its own
northbound Modbus server, a client of which stays connected through both reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
from typing import TYPE_CHECKING, Any

import yaml
from pymodbus.client import AsyncModbusTcpClient

import gateway
from gateway.audit.store import read_records
from gateway.cli import EXIT_OK, main
from gateway.commissioning.simday import simulate_day
from gateway.runtime.gateway import Gateway
from gateway.runtime.reload import Status
from simulators.plant_server import PlantServer
from simulators.plants.water_tank import WaterTank
from simulators.ports import free_port
from tests.runtime.test_reload import until, write_site

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

HISTORY_S = 1800.0  # half an hour of 1 s rows: enough samples to learn, quick to simulate
RESOLUTION = 0.01  # the inflow valve's register: uint16, scale 0.01
CYCLE_S = 0.1


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out + err


def with_candidate(text: str) -> str:
    """The site file ``text`` naming the learned site as its candidate."""
    assert "commissioning:" not in text
    return text.rstrip("\n") + "\n\ncommissioning:\n  candidate: learned.yaml\n"


def inflow_writes(plant: PlantServer, since: int = 0) -> list[tuple[float, float]]:
    """(plant time, %) of each inflow-valve write the PLC accepted, from record ``since``."""
    return [(w.at_s, w.value) for w in plant.writes[since:] if w.tag == "inflow_valve"]


def test_learn_prove_shadow_commit_and_tighten_on_the_simulated_tank(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plant_port, northbound_port = free_port(), free_port()
    # The hand-written site, with this test's ports (its own northbound Modbus, no OPC UA) and
    # its audit chain in tmp_path.
    write_site(tmp_path, plant_port, northbound_port)
    hand = tmp_path / "hand.yaml"
    (tmp_path / "site.yaml").rename(hand)
    hand_site = gateway.load_config(hand)

    # 1. Two clean stretches of history; learn from the first, prove on the second.
    day1, day2 = tmp_path / "day1.csv", tmp_path / "day2.csv"
    simulate_day(hand_site, "water_tank", day1, duration_s=HISTORY_S, hold_s=300.0, seed=0)
    simulate_day(hand_site, "water_tank", day2, duration_s=HISTORY_S, hold_s=300.0, seed=1)
    learned = tmp_path / "learned.yaml"
    code, out = cli(capsys, "learn", str(day1), "--site", str(hand), "--out", str(learned))
    assert code == EXIT_OK, out
    # The report, for people (with a plot per actuator) and for programs.
    report = json.loads((tmp_path / "learned.json").read_text())
    assert report["proposed_site"] == str(learned)
    assert report["n_samples"] == int(HISTORY_S) + 1
    md = (tmp_path / "learned.md").read_text()
    for actuator in ("inflow_valve", "outflow_pump", "drain_valve"):
        assert (tmp_path / f"learned.{actuator}.png").read_bytes().startswith(b"\x89PNG")
        assert f"](learned.{actuator}.png)" in md
    assert cli(capsys, "check", str(learned))[0] == EXIT_OK
    code, out = cli(capsys, "prove", str(learned), str(day2))
    assert code == EXIT_OK, out
    assert out.rstrip().endswith("PASS: nothing would have tripped")
    learned_site = gateway.load_config(learned)
    learned_inflow = learned_site.envelope.limits[0]
    assert learned_inflow.actuator == "inflow_valve"
    assert learned_inflow.max < 100.0  # learned: tighter than the hand-written 100 %

    # 2. The hand-written site enforced, the learned one its candidate.
    site_file = tmp_path / "site.yaml"
    site_file.write_text(with_candidate(hand.read_text()))

    async def scenario() -> dict[str, Any]:
        plant = PlantServer(WaterTank(seed=2), modbus_port=plant_port, opcua_port=None)
        await plant.start()
        ticking = asyncio.create_task(plant.run(speed=1.0))
        gw = Gateway(gateway.load_config(site_file), engine="cython",
                     audit_path=tmp_path / "audit.db")
        stop = asyncio.Event()
        runner = asyncio.create_task(gw.run(stop))
        modbus = AsyncModbusTcpClient("127.0.0.1", port=northbound_port)
        try:
            await asyncio.wait_for(gw.ready.wait(), 30)
            await until(lambda: len(gw.decisions) >= 3, 30, "the first cycles")
            assert await modbus.connect()
            rr = await modbus.read_holding_registers(0, count=2, device_id=1)
            assert not rr.isError(), rr
            local = modbus.ctx.transport.get_extra_info("sockname")
            accepted = gw.modbus_server.stats.accepted
            southbound = gw.clients["plc"]
            connects = southbound.connects  # type: ignore[attr-defined]

            # In shadow: the candidate judges the cycles, the hand-written envelope acts.
            judge = gw.candidate
            assert judge is not None
            await until(lambda: judge.judged >= 20, 30, "the candidate judging cycles")
            shadow = judge.report(gw.clock())
            assert gw.site.envelope.limits[0].max == 100.0
            await until(lambda: bool(inflow_writes(plant)), 30, "the valve written")

            # 3. Commit: the learned site becomes the site file (it names no candidate: the
            # candidate is dropped with the same reload), reloaded.
            old_sha = hashlib.sha256(site_file.read_bytes()).hexdigest()
            site_file.write_bytes(learned.read_bytes())
            new_sha = hashlib.sha256(site_file.read_bytes()).hexdigest()
            committed = await gw.reload("admin")
            assert committed.status is Status.APPLIED, committed.text()
            assert committed.diff is not None
            lines = committed.diff.lines()
            assert any("commissioning candidate removed" in line for line in lines), lines
            assert any("limit inflow_valve.max tightened: 100" in line for line in lines), lines
            assert gw.site.envelope.limits[0].max == learned_inflow.max
            assert gw.candidate is None
            assert gw.control is not None and gw.control.candidate is None
            n = gw.control.count if gw.control is not None else 0
            await until(lambda: gw.control is not None and gw.control.count >= n + 10, 30,
                        "cycles after the commit")
            rr = await modbus.read_holding_registers(0, count=2, device_id=1)
            assert not rr.isError(), rr
            assert modbus.ctx.transport.get_extra_info("sockname") == local
            assert gw.modbus_server.stats.accepted == accepted

            # 4. Later: tighten the valve's max below where it stands, reloaded again.
            position = float(gw.applied[0])
            new_max = round(position - 5.0, 2)
            assert new_max > learned_inflow.min
            data = yaml.safe_load(site_file.read_text())
            data["envelope"]["limits"]["inflow_valve"]["max"] = new_max
            site_file.write_text(yaml.safe_dump(data, sort_keys=False))
            # The last write the PLC took before the reload starts the sequence judged below
            # (a jump at the swap is a move from it).
            before = len(plant.writes)
            held = inflow_writes(plant)[-1]
            tightened = await gw.reload("admin")
            assert tightened.status is Status.APPLIED, tightened.text()
            assert [r["actuator"] for r in tightened.ramps] == ["inflow_valve"]
            await until(lambda: bool(inflow_writes(plant, before))
                        and inflow_writes(plant, before)[-1][1] <= new_max + RESOLUTION / 2,
                        60, "the valve at its new max")
            await until(lambda: gw.reloader is not None and gw.reloader.state.ramp is None,
                        60, "the end of the ramp")
            ramp_end = len(plant.writes)
            n = gw.control.count if gw.control is not None else 0
            await until(lambda: gw.control is not None and gw.control.count >= n + 10, 30,
                        "cycles after the ramp")
            rr = await modbus.read_holding_registers(0, count=2, device_id=1)
            assert not rr.isError(), rr
            assert modbus.ctx.transport.get_extra_info("sockname") == local
            return {"shadow": shadow, "old_sha": old_sha, "new_sha": new_sha,
                    "new_max": new_max,
                    "rate": gw.site.envelope.limits[0].max_rate_per_s,
                    "step": gw.site.envelope.limits[0].max_step,
                    "held": held, "writes": inflow_writes(plant, before),
                    "after_ramp": inflow_writes(plant, ramp_end),
                    "still_running": not runner.done(),
                    "connects": (connects, southbound.connects,  # type: ignore[attr-defined]
                                 gw.clients["plc"] is southbound),
                    "accepted": (accepted, gw.modbus_server.stats.accepted),
                    "site_max": gw.site.envelope.limits[0].max}
        finally:
            modbus.close()
            stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runner, 30)
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking
            await plant.stop()

    got = asyncio.run(scenario())

    # In shadow the candidate judged cycles and never acted.
    shadow = got["shadow"]
    assert shadow["candidate"] == str(learned)
    assert shadow["cycles_judged"] >= 20 and shadow["on"] and shadow["errors"] == 0
    # No restart: the same gateway run, the same southbound client and connection, no new
    # northbound connection.
    assert got["still_running"]
    before_connects, after_connects, same_client = got["connects"]
    assert same_client and after_connects == before_connects
    assert got["accepted"][0] == got["accepted"][1]
    # The tightened max, reached within the rate and step limits, no jump.
    new_max, rate, step = got["new_max"], got["rate"], got["step"]
    assert got["site_max"] == new_max
    writes = got["writes"]
    assert writes and writes[-1][1] <= new_max + RESOLUTION / 2
    # Once the ramp has ended, the valve stays at or below its new max.
    assert got["after_ramp"], "no write after the ramp's end"
    assert max(x for _, x in got["after_ramp"]) <= new_max + RESOLUTION / 2
    moves = list(itertools.pairwise([got["held"], *writes]))
    assert len([1 for (_, x1), (_, x2) in moves if x2 < x1]) >= 3, writes  # several writes
    for (t1, x1), (t2, x2) in moves:
        # Plant time between two writes, plus a cycle for their arrival's jitter.
        assert abs(x2 - x1) <= rate * (t2 - t1 + CYCLE_S) + RESOLUTION, (t1, x1, t2, x2)
        if step is not None:
            assert abs(x2 - x1) <= step + RESOLUTION, (x1, x2)
    # The audit chain: each reload committed and applied, with both files' hashes.
    records = [r.data() | {"actor": r.actor}
               for r in read_records(tmp_path / "audit.db", kinds=("reload",))]
    commits = [r for r in records if r["action"] == "commit"]
    assert [r["action"] for r in records if r["action"] in ("commit", "applied")] == [
        "commit", "applied", "commit", "applied"], records
    assert commits[0]["old_sha256"] == got["old_sha"]
    assert commits[0]["new_sha256"] == got["new_sha"] == commits[1]["old_sha256"]
    assert commits[1]["new_sha256"] == hashlib.sha256(
        (tmp_path / "site.yaml").read_bytes()).hexdigest()
    assert all(r["actor"] == "admin" for r in commits)
    assert records[-1]["action"] == "ramp_done"
    # The dropped candidate's final report stays in the audit chain.
    summaries = [r.data() for r in read_records(tmp_path / "audit.db", kinds=("candidate",))
                 if r.data().get("type") == "summary"]
    assert summaries and summaries[-1].get("final") is True
    assert summaries[-1]["report"]["cycles_judged"] >= shadow["cycles_judged"]

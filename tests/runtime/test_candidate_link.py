"""A candidate site beside a real gateway on loopback (a Modbus test PLC, stepped time): it
judges the external AI's proposals, the commands written and an operator's write-through, its
verdicts travel to the communications side through the shared-memory mirror (the detector
gauge block, ``candidate.`` names) and come out as metrics; the PLC receives exactly what the
enforced side decided."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gateway.comms.pump import view_of
from gateway.config.schema import Commissioning, Table
from gateway.link.mirror import MirrorLayout, MirrorReader
from gateway.ops.metrics import render
from gateway.ops.panels import candidate
from gateway.runtime.gateway import Gateway
from simulators.plc_modbus import TestPLC
from tests.ops.test_metrics import (
    AI,
    OPERATOR,
    ROOT,
    Clock,
    MirrorOnly,
    promtool_problems,
    samples,
    site_for,
    value,
)

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

PUMP_MAX = 20.0  # the candidate's; the enforced site allows 100 %, the fallback holds 30 %


async def scenario(tmp: Path) -> dict[str, Any]:
    async with TestPLC(holding=128) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)  # level, m
        await plc.set_registers(Table.INPUT_REGISTER, 2, [10])
        await plc.set_registers(Table.HOLDING_REGISTER, 0, [3000, 3000])
        site = site_for(plc.port)
        cand = replace(site, envelope=replace(site.envelope, limits=tuple(
            replace(lim, max=PUMP_MAX) if lim.actuator == "outflow_pump" else lim
            for lim in site.envelope.limits)))
        site = replace(site, commissioning=Commissioning(candidate=tmp / "cand.yaml",
                                                         candidate_site=cand))
        clock = Clock()
        link = MirrorOnly(site, ROOT / "configs" / "water_tank.yaml")
        gw = Gateway(site, clock=clock, stepped=True, northbound=link, startup_wait_s=5.0,
                     audit_path=tmp / "audit.db")
        link.handler = gw
        reader: MirrorReader | None = None
        await gw.open()
        try:
            assert link.mirror is not None and gw.candidate is not None
            reader = MirrorReader(link.mirror.name, MirrorLayout.for_site(site))

            async def cycles(n: int) -> None:
                for _ in range(n):
                    clock.now += 0.1
                    await gw.refresh()
                    await gw.cycle(clock.now)

            await cycles(5)
            # The external AI proposes 30 % on the pump: judged every cycle from now on.
            outcome = await gw.write(AI, {"inflow_valve": 30.0, "outflow_pump": 30.0}, True)
            assert all(o.accepted for o in outcome.values()), outcome
            await cycles(3)
            # An operator's setpoint, written through between two cycles.
            ok = await gw.write(OPERATOR, {"outflow_pump": 31.0}, False)
            assert ok["outflow_pump"].accepted, ok
            await cycles(5)
            snap = reader.read()
            assert snap is not None
            view = view_of(snap)
            text = render(view, site.site.name, reader.layout.counters, clock)
            pump = await plc.get_registers(Table.HOLDING_REGISTER, 1, 1)
            return {"view": view, "text": text, "report": gw.candidate.report(clock.now),
                    "pump_raw": pump, "applied": gw.applied.tolist(),
                    "cycles": gw.control.count if gw.control is not None else 0}
        finally:
            if reader is not None:
                reader.close()
            await gw.close()


def test_the_candidate_judges_every_writer_and_its_verdicts_reach_the_comms_side(
        tmp_path: Path) -> None:
    out = asyncio.run(scenario(tmp_path))
    report = out["report"]
    # The enforced side let the operator's 31 % through, and the PLC holds it.
    assert out["pump_raw"] == [3100]
    assert out["applied"][1] == 31.0
    tallies = {(t["kind"], t["name"]): t for t in report["tallies"]}
    # The operator's write-through, the AI's proposals and the commands written: each
    # would have been clamped by the candidate's max on the pump.
    write = tallies[("write", "outflow_pump.max")]
    assert write["count"] == 1 and write["action"] == "clamp"
    assert write["worst"][0]["detail"].startswith("operator write-through: ")
    # (its first step: the rate limit lets 31 % through over the cycles that follow)
    assert re.search(rf"outflow_pump=3[01](\.\d+)? -> {PUMP_MAX:g},",
                     write["worst"][0]["detail"]), write
    assert report["writes_judged"] == 1
    assert tallies[("proposal", "outflow_pump.max")]["count"] >= 8
    assert tallies[("applied", "outflow_pump.max")]["count"] == out["cycles"]
    assert report["cycles_judged"] == out["cycles"]
    # Through the mirror, as the communications process reads it.
    c = candidate(out["view"])
    assert c is not None
    assert c["judged"] == out["cycles"]
    assert c["disagreements"] == report["disagreements"] > 0
    assert c["clamp"] == report["clamps"]
    total = sum(t["count"] for t in report["tallies"] if t["name"] == "outflow_pump.max")
    assert c["verdicts"] == [{"action": "clamp", "name": "outflow_pump.max", "count": total}]
    assert c["last_disagreement_utc"] is not None
    # And as metrics, which Prometheus's own linter accepts.
    s = samples(out["text"])
    p = "safety_gateway_"
    assert value(s, p + "candidate_cycles_judged_total") == out["cycles"]
    assert value(s, p + "candidate_verdicts_total", action="clamp",
                 rule="outflow_pump.max") == total
    assert value(s, p + "candidate_errors_total") == 0
    assert promtool_problems(out["text"]) == ""


def test_a_candidate_that_cannot_be_built_leaves_the_gateway_without_one(
        caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np

    from gateway.runtime.candidate import start_candidate

    site = site_for(5020)
    initial = np.zeros(len(site.actuators))
    assert start_candidate(site, "cython", initial, 0.0, None, lambda: None) is not None
    with caplog.at_level("ERROR", logger="gateway.runtime"):
        assert start_candidate(site, "no-such-engine", initial, 0.0, None, lambda: None) is None
    assert "not started: ValueError: engine must be one of" in caplog.text


def test_the_gauges_of_a_failing_candidate_still_fit_the_view(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import math

    import numpy as np

    from gateway.runtime.candidate import CandidateJudge, start_candidate

    site = site_for(5020)
    judge = start_candidate(site, "cython", np.zeros(len(site.actuators)), 0.0, None,
                            lambda: None)
    assert judge is not None

    def broken(self: CandidateJudge) -> tuple[float, ...]:
        raise KeyError("a bug")

    monkeypatch.setattr(CandidateJudge, "_gauge_values", broken)
    with caplog.at_level("ERROR", logger="gateway.runtime"):
        values = judge.gauge_values()
    assert len(values) == len(judge.gauge_names) and all(math.isnan(v) for v in values)
    assert judge.on is False and judge.errors == 1 and judge.error == "KeyError: 'a bug'"
    assert "switched off after an error" in caplog.text

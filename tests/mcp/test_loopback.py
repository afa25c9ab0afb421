"""Issue 22, done when: a real MCP client from the SDK, on loopback, reads the plant, dry-runs
commands, proposes within and outside the envelope and gets truthful outcomes; a wrong token
is refused; a viewer cannot propose; an ai agent cannot set setpoints; every call is in the
audit chain with the agent's name, its arguments and the outcome."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from gateway.adapters.base import ClientInfo, Role
from gateway.audit import read_records, verify

from .harness import TOKENS, Clock, agent, call, cycles, make, mcp_site, propose

if TYPE_CHECKING:
    from pathlib import Path

ADMIN = ClientInfo("opcua", "127.0.0.1:5", "chief", Role.ADMIN)


def test_an_agent_reads_dry_runs_and_proposes_with_truthful_outcomes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIFT_TOKEN", TOKENS["shift"])
    site = mcp_site(tmp_path)
    db = tmp_path / "audit.db"

    async def body() -> None:
        clock = Clock()
        gw = make(site, db, clock)
        await gw.open()
        try:
            await cycles(gw, clock, 2)
            async with agent(gw, TOKENS["planner"]) as ai:
                names = {t.name for t in (await ai.list_tools()).tools}
                assert {"read_plant", "describe_envelope", "check_command", "propose",
                        "set_setpoint", "incident_status", "explain_refusal"} <= names
                plant = await call(ai, "read_plant")
                assert plant["mode"] == "manual"
                level = next(s for s in plant["sensors"] if s["name"] == "level")
                assert level == {"name": "level", "unit": "m", "value": 2.5, "good": True,
                                 "age_s": pytest.approx(0.0, abs=0.2)}
                valve = next(a for a in plant["actuators"] if a["name"] == "inflow_valve")
                assert valve["source"] == "fallback" and valve["unit"] == "%"
                env = await call(ai, "describe_envelope")
                total = next(c for c in env["constraints"] if c["name"] == "total_flow")
                assert total["expression"] == ("inflow_valve + outflow_pump + 40 * drain_valve "
                                               "<= 160")
                assert total["margin"] is not None

                # Dry runs: inside passes; a breach names the constraint and the nearest
                # admissible command; the trajectory is the prediction's.
                applied = valve["applied"]
                ok = await call(ai, "check_command", {"values": {"inflow_valve": applied}})
                assert ok["would_pass"] and ok["violations"] == []
                assert len(ok["trajectory"]["sensors"]["level"]) == 10
                bad = await call(ai, "check_command", {"values": {"inflow_valve": 130.0}})
                assert not bad["would_pass"]
                assert "inflow_valve.max" in bad["violations"]
                assert bad["nearest_admissible"]["inflow_valve"] <= 100.0

                # MANUAL: judged, never applied.
                out = await propose(gw, clock, ai, {"inflow_valve": applied})
                assert out["outcome"]["result"] == "not_in_control"
                assert (await gw.request(ADMIN, "to_shadow", None, None)).accepted
                for _ in range(12):  # the clean shadow period, with the AI speaking
                    out = await propose(gw, clock, ai, {"inflow_valve": applied})
                    assert out["status"] == "done"
                    assert out["outcome"]["result"] == "shadow"
                    assert out["outcome"]["action"] == "ok"
                # AUTO only from an authorised person (never from an agent).
                assert (await gw.request(ADMIN, "to_auto", None, None)).accepted
                out = await propose(gw, clock, ai, {"inflow_valve": applied + 1.0})
                assert out["outcome"]["result"] == "applied"
                assert out["outcome"]["written"]["inflow_valve"] == pytest.approx(
                    applied + 1.0)
                assert gw.applied[0] == pytest.approx(applied + 1.0)
                # Beyond the rate limit (20 %/s): clamped, with the value written.
                out = await propose(gw, clock, ai, {"inflow_valve": applied + 9.0})
                assert out["outcome"]["result"] == "clamped"
                written = out["outcome"]["written"]["inflow_valve"]
                assert applied + 1.0 < written < applied + 9.0
                assert gw.applied[0] == pytest.approx(written)
                assert "inflow_valve.rate" in out["outcome"]["violations"]
                # Outside the envelope: refused with the constraint, nothing written.
                before = gw.applied.copy()
                out = await propose(gw, clock, ai, {"inflow_valve": 130.0})
                assert out["status"] == "refused"
                assert out["refusal"]["violations"] == ["inflow_valve.max"]
                assert out["refusal"]["outcome"]["result"] == "refused"
                await cycles(gw, clock, 1)
                assert gw.applied[0] <= before[0] + 2.0 + 1e-9
                why = await call(ai, "explain_refusal")
                assert why["refusals"][-1]["violations"] == ["inflow_valve.max"]
                assert why["constraints"]["inflow_valve.max"]["max"] == 100.0
                # Outside its role: refused.
                out = await call(ai, "set_setpoint", {"values": {"outflow_pump": 10.0}})
                assert out["refusal"]["kind"] == "not_authorised"
                out = await call(ai, "request_mode", {"kind": "to_manual"})
                assert out["refusal"]["kind"] == "not_authorised"
            async with agent(gw, TOKENS["watcher"]) as viewer:
                assert (await call(viewer, "read_plant"))["mode"] == "auto"
                out = await call(viewer, "propose", {"values": {"inflow_valve": 10.0}})
                assert out["refusal"]["kind"] == "not_authorised"
            async with agent(gw, TOKENS["shift"]) as operator:
                # An operator agent takes the plant toward safety, and sets setpoints in
                # MANUAL only.
                out = await call(operator, "set_setpoint", {"values": {"outflow_pump": 10.0}})
                assert out["refusal"]["kind"] == "mode"
                out = await call(operator, "request_mode", {"kind": "to_auto"})
                assert out["refusal"]["kind"] == "not_authorised"
                out = await call(operator, "request_mode", {"kind": "to_manual"})
                assert out["status"] == "done"
                await cycles(gw, clock, 1)
                out = await call(operator, "set_setpoint", {"values": {"outflow_pump": 12.0}})
                assert out["status"] == "done"
            with pytest.raises(BaseException):  # noqa: B017, PT011 - the SDK's 401 error
                async with agent(gw, "not-a-token") as intruder:
                    await call(intruder, "read_plant")
            await cycles(gw, clock, 15)  # the call windows close (one second)
        finally:
            await gw.close()

    asyncio.run(body())
    assert verify(db).ok
    calls = [r.data() for r in read_records(db, kinds=("agent_call",))]
    seen = {(c["agent"], c["tool"], c["outcome"]) for c in calls}
    assert ("planner", "propose", "applied") in seen
    assert ("planner", "propose", "clamped") in seen
    assert ("planner", "propose", "refused: refused_by_gateway") in seen
    assert ("planner", "set_setpoint", "refused: not_authorised") in seen
    assert ("watcher", "propose", "refused: not_authorised") in seen
    assert ("shift", "request_mode", "applied") in seen
    shadow = next(c for c in calls if c["tool"] == "propose" and c["outcome"] == "shadow")
    assert shadow["count"] >= 1 and shadow["first"]["args"] == {
        "values": {"inflow_valve": pytest.approx(shadow["first"]["args"]["values"]
                                                 ["inflow_valve"])}}
    logins = [r.data() for r in read_records(db, kinds=("security",))]
    assert any(p["reason"] == "unknown or wrong bearer token" for p in logins)

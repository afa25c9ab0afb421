"""``safety-gateway ctl candidate --via`` against a real running gateway on loopback (its OPC UA
server, method CandidateReport): the candidate's report, as text and as JSON; refused when the
site names no candidate; and the report outlives the run in the audit chain."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import gateway
from gateway.cli import main
from gateway.config.schema import Commissioning, OpcUaUser
from gateway.runtime.candidate import last_summary
from gateway.runtime.gateway import Gateway
from simulators.ports import free_port
from tests.incident.test_via_gateway import Clock, Device

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parents[2]
VIEWER = ("--user", "watch", "--password-env", "GW_TEST_CAND_VIEWER")
PUMP_MAX = 20.0


def site_at(url: str, with_candidate: bool) -> gateway.config.Site:
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    north = site.northbound
    assert north.opcua is not None
    site = replace(site, northbound=replace(
        north, modbus=None,
        opcua=replace(north.opcua, endpoint=url, allow_anonymous=False,
                      allow_insecure_passwords=True,
                      users=(OpcUaUser("watch", "GW_TEST_CAND_VIEWER", "viewer"),))))
    if not with_candidate:
        return site
    cand = replace(site, source=Path("cand.yaml"), envelope=replace(site.envelope, limits=tuple(
        replace(lim, max=PUMP_MAX) if lim.actuator == "outflow_pump" else lim
        for lim in site.envelope.limits)))
    return replace(site, commissioning=Commissioning(candidate=Path("cand.yaml"),
                                                     candidate_site=cand))


async def scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str], with_candidate: bool
                   ) -> list[tuple[int, str, str]]:
    url = f"opc.tcp://127.0.0.1:{free_port()}/gateway/"
    clock = Clock()
    gw = Gateway(site_at(url, with_candidate), clock=clock, clients={"plc": Device()},
                 stepped=True, startup_wait_s=0.0, audit_path=tmp_path / "audit.db")

    async def cycles(n: int) -> None:
        for k in range(n):
            clock.now += 0.1
            gw.store.update("level", 2.5 + 0.002 * (k % 7), True, clock.now)
            for name, value in (("inflow_rate", 0.01), ("demand", 0.004),
                                ("uptime_s", clock.now)):
                gw.store.update(name, value, True, clock.now)
            await gw.cycle(clock.now)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["ctl", "candidate", *argv, "--via", url, *VIEWER])
        out = capsys.readouterr()
        return code, out.out, out.err

    out = []
    await gw.open()
    try:
        await cycles(12)
        capsys.readouterr()
        out.append(await asyncio.to_thread(run))
        out.append(await asyncio.to_thread(run, "--json"))
    finally:
        await gw.close()
    return out


def test_ctl_candidate_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_CAND_VIEWER", "a long viewer secret")
    (code, text, err), (jcode, js, jerr) = asyncio.run(scenario(tmp_path, capsys, True))
    assert code == 0, err
    lines = text.splitlines()
    assert lines[0] == "candidate cand.yaml: judging"
    # Without a read-back the pump starts at its safe value, 0 %, and the fallback ramps it to
    # its fixed 30 % at the pump's rate limit (2.5 % a cycle): the last five commands written
    # are above the candidate's 20 %.
    assert "12 cycles and 0 write-throughs judged, 5 disagreements" in lines[1]
    assert "0 trips, 0 refusals, 5 clamps, 0 cycles in another mode" in lines[2]
    assert any(line.startswith("  cost: ") and line.endswith(" us per cycle, after the write")
               for line in lines)
    assert any(line.startswith("  last disagreement at 20") and "would clamp "
               "(outflow_pump.max)" in line for line in lines)
    assert "  clamp  written       outflow_pump.max: 5" in lines
    assert any(f"outflow_pump=30 -> {PUMP_MAX:g}" in line and "moved 10:" in line
               for line in lines)
    assert jcode == 0, jerr
    report = json.loads(js)
    assert report["cycles_judged"] == 12 and report["clamps"] == 5
    (tally,) = report["tallies"]
    assert (tally["kind"], tally["name"], tally["action"], tally["count"]) == (
        "applied", "outflow_pump.max", "clamp", 5)
    # The report outlives the run: the close wrote it into the audit chain.
    summary = last_summary(tmp_path / "audit.db")
    assert summary is not None and summary["final"] is True
    assert summary["report"]["cycles_judged"] == 12
    assert summary["report"]["tallies"][0]["count"] == 5
    # ... and `ctl candidate --audit` prints it from there, as it was at the stop.
    assert main(["ctl", "candidate", "--audit", str(tmp_path / "audit.db")]) == 0
    recorded = capsys.readouterr().out.splitlines()
    assert recorded[0] == "candidate cand.yaml: judging"
    assert recorded[1:3] == lines[1:3]
    assert "  clamp  written       outflow_pump.max: 5" in recorded


def test_ctl_candidate_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str) -> tuple[int, str]:
        code = main(["ctl", "candidate", *argv])
        return code, capsys.readouterr().err.strip()

    assert run() == (2, "safety-gateway ctl candidate: give either --via ENDPOINT (a running "
                        "gateway) or --audit DB (the last recorded report)")
    assert run("--via", "opc.tcp://127.0.0.1:1/", "--audit", "x.db")[0] == 2
    code, err = run("--audit", str(tmp_path / "none.db"))
    assert code == 2 and err.endswith("none.db': no such file")
    (tmp_path / "junk.db").write_text("not a database")
    code, err = run("--audit", str(tmp_path / "junk.db"))
    assert code == 2 and "cannot be read" in err


def test_ctl_candidate_without_a_candidate_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_CAND_VIEWER", "a long viewer secret")
    (code, text, err), _ = asyncio.run(scenario(tmp_path, capsys, False))
    assert code == 1 and text == ""
    assert err.strip() == ("safety-gateway ctl candidate: refused: this site names no "
                           "candidate (commissioning.candidate)")
    assert last_summary(tmp_path / "audit.db") is None
    assert main(["ctl", "candidate", "--audit", str(tmp_path / "audit.db")]) == 1
    assert capsys.readouterr().err.strip().endswith("no candidate report recorded")

"""A candidate site beside the enforced one, against the simulated water tank (issue 20, item 3).

The clean water-tank drill (nominal model, AUTO after 30 s) runs with the shipped site as the
enforced one, once without a candidate and once with each candidate below; the plant's PLC
logs every write it receives. The candidate must change nothing on the wire, and its report
(the last ``candidate`` summary in the run's audit chain, which is what outlives the run)
must say what it would have done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import TYPE_CHECKING, Any

import pytest

from gateway.config.loader import ConfigError, load_config
from gateway.runtime.candidate import CandidateJudge, last_summary
from simulators.drill.cli import drills_dir
from simulators.drill.runner import run_drill
from simulators.drill.scenario import load_scenario, with_duration

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.drill.runner import DrillRun

DURATION_S = 40.0  # AUTO from 30 s: ten seconds of the AI in control
# The nominal model opens the inflow valve to about 40-41 % on this drill (the fallback's
# PID holds about 40 % too): a candidate max of 35 % is tighter than what is commanded.
TIGHT_MAX = 35.0


def _site_files(folder: Path, candidate_text: str | None) -> Path:
    """The shipped water-tank site in ``folder`` (its audit database there), naming
    ``cand.yaml`` with ``candidate_text`` as its candidate (none when None)."""
    text = (drills_dir().parent / "water_tank.yaml").read_text()
    text = text.replace("path: ../reports/water_tank_audit.db", "path: audit.db")
    site = folder / "site.yaml"
    if candidate_text is None:
        site.write_text(text)
    else:
        (folder / "cand.yaml").write_text(candidate_text(text) if callable(candidate_text)
                                          else candidate_text)
        site.write_text(text + "\ncommissioning:\n  candidate: cand.yaml\n")
    return site


def _tighter(text: str) -> str:
    out, n = re.subn(r"inflow_valve: \{min: 0\.0, max: 100\.0,",
                     f"inflow_valve: {{min: 0.0, max: {TIGHT_MAX},", text)
    assert n == 1
    return out


def _drill(folder: Path, candidate: Any) -> tuple[DrillRun, dict[str, Any] | None]:
    folder.mkdir()
    site = _site_files(folder, candidate)
    sc = with_duration(load_scenario(drills_dir() / "clean_water_tank.yaml"), DURATION_S)
    sc = dataclasses.replace(sc, site=site)
    run = asyncio.run(run_drill(sc, folder, audit_db=folder / "run-audit.db"))
    return run, last_summary(folder / "run-audit.db")


def _wire(run: DrillRun) -> dict[str, list[Any]]:
    """Every write the PLC received, per tag in the order it received them: the raw registers
    or coil (the bytes on the wire). Not when: the devices' writes of a cycle run
    concurrently, and on a loaded host one may land a simulated step later than in another
    run, with or without a candidate."""
    out: dict[str, list[Any]] = {}
    for w in run.writes:
        out.setdefault(w.tag, []).append(w.raw)
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> DrillRun:
    run, summary = _drill(tmp_path_factory.mktemp("cand") / "plain", None)
    assert summary is None
    return run


def test_a_tighter_candidate_changes_nothing_on_the_wire_and_reports_would_clamps(
        plain: DrillRun, tmp_path: Path) -> None:
    run, summary = _drill(tmp_path / "tight", _tighter)
    assert _wire(run) == _wire(plain)
    assert sum(len(v) for v in _wire(run).values()) > 300
    # The enforced side really did command more than the candidate's max.
    assert max(w.value for w in run.writes if w.tag == "inflow_valve") > TIGHT_MAX
    assert summary is not None and summary["final"] is True
    report = summary["report"]
    assert report["on"] is True and report["errors"] == 0
    assert report["cycles_judged"] >= DURATION_S / 0.1 - 2
    tallies = {(t["kind"], t["name"]): t for t in report["tallies"]}
    # The AI's proposals and the commands actually written, both would-clamped on the valve.
    for kind in ("proposal", "applied"):
        t = tallies[(kind, "inflow_valve.max")]
        assert t["action"] == "clamp"
        assert t["count"] > 0
        assert t["worst"], t
        for w in t["worst"]:
            assert isinstance(w["at_s"], float) and 0.0 <= w["at_s"] <= DURATION_S
            assert isinstance(w["at_utc"], float)
            assert f"-> {TIGHT_MAX:g}" in w["detail"]
            assert w["magnitude"] > 0
    # Only the valve's max is at stake: no other constraint of the candidate is violated.
    constraints = {name for kind, name in tallies if kind in ("proposal", "applied")}
    assert constraints == {"inflow_valve.max"}
    assert report["clamps"] > 0 and report["refusals"] == 0
    assert report["disagreements"] > 0
    assert report["last_disagreement"]["what"]
    assert report["cost_us_per_cycle"] > 0


def test_a_candidate_equal_to_the_site_reports_no_disagreement(
        plain: DrillRun, tmp_path: Path) -> None:
    run, summary = _drill(tmp_path / "equal", lambda text: text)
    assert _wire(run) == _wire(plain)
    assert summary is not None
    report = summary["report"]
    assert report["cycles_judged"] >= DURATION_S / 0.1 - 2
    assert report["disagreements"] == 0, report["last_disagreement"]
    assert report["clamps"] == report["refusals"] == report["trips"] == 0
    assert report["mode_changes"] == 0
    assert report["tallies"] == []


def test_a_candidate_that_fails_is_switched_off_and_the_plant_never_knows(
        plain: DrillRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = CandidateJudge._applied
    calls = {"n": 0}

    def failing(self: CandidateJudge, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 50:
            raise ZeroDivisionError("a bug in the candidate")
        real(self, *args)

    monkeypatch.setattr(CandidateJudge, "_applied", failing)
    run, summary = _drill(tmp_path / "failing", _tighter)
    assert _wire(run) == _wire(plain)
    assert calls["n"] == 50  # switched off: never called again
    assert summary is not None
    report = summary["report"]
    assert report["on"] is False
    assert report["errors"] == 1
    assert report["error"] == "ZeroDivisionError: a bug in the candidate"
    assert report["cycles_judged"] == 50  # the 50th was under way when it failed


def test_a_candidate_must_have_the_sites_tags_in_order(tmp_path: Path) -> None:
    text = (drills_dir().parent / "water_tank.yaml").read_text()
    # Swap two tags' order (inflow_rate before level).
    a = text.index("  level:\n")
    b = text.index("  inflow_rate:\n")
    c = text.index("  demand:")
    swapped = text[:a] + text[b:c] + text[a:b] + text[c:]
    site = _site_files(tmp_path, swapped)
    with pytest.raises(ConfigError) as err:
        load_config(site)
    (issue,) = err.value.issues
    assert issue.file == str(site)
    assert issue.path == "commissioning.candidate"
    assert site.read_text().splitlines()[issue.line - 1].strip() == "candidate: cand.yaml"
    assert "same order" in issue.message and "'inflow_rate'" in issue.message


def test_a_candidate_is_checked_like_a_site(tmp_path: Path) -> None:
    site = _site_files(tmp_path, lambda text: text.replace("max: 100.0, max_rate_per_s: 20.0",
                                                           "max: -5.0, max_rate_per_s: 20.0"))
    with pytest.raises(ConfigError) as err:
        load_config(site)
    files = {i.file for i in err.value.issues}
    assert files == {str(site), str(tmp_path / "cand.yaml")}
    (missing,) = [i for i in err.value.issues if i.file == str(site)]
    assert missing.path == "commissioning.candidate" and "invalid" in missing.message
    (tmp_path / "cand.yaml").unlink()
    with pytest.raises(ConfigError, match="is not a readable file"):
        load_config(site)


def test_a_candidate_cannot_name_its_own(tmp_path: Path) -> None:
    site = _site_files(tmp_path, lambda text: text + "\ncommissioning:\n  candidate: x.yaml\n")
    with pytest.raises(ConfigError, match="cannot name a candidate of its own"):
        load_config(site)


def test_the_loaded_site_carries_the_candidate(tmp_path: Path) -> None:
    site = load_config(_site_files(tmp_path, _tighter))
    cand = site.commissioning.candidate_site
    assert cand is not None and cand.source == tmp_path / "cand.yaml"
    limits = {lim.actuator: lim for lim in cand.envelope.limits}
    assert limits["inflow_valve"].max == TIGHT_MAX
    assert cand.commissioning.candidate is None

"""Every drill scenario, run for real: simulator, gateway and AI over loopback sockets.

One ``safety-gateway drill ... --json`` run (both cores) gives every scenario's scorecard but
those of the long drills' scenarios, whose long runs (conftest.py: the same seed and timeline,
24 minutes longer) give theirs; each scenario then asserts its own: no unsafe write reached the
plant (the plant's own record), detected within its budget, no false trip in the clean period,
the process kept in its safe range. The baselines (the same attacks with the AI wired straight
to the plant) must show the harm: the process leaves its safe range and unsafe writes reach the
plant.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simulators.drill.cli import drills_dir
from simulators.drill.scenario import load_scenario
from tests.drill.conftest import LONG

SCENARIOS = sorted(drills_dir().glob("*.yaml"))
SHORT = [p for p in SCENARIOS if p.stem not in LONG]
ATTACKS = [p for p in SCENARIOS if load_scenario(p).baseline_s is not None]


def _drill(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "drill", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def all_cards(long_cards: dict[str, dict]) -> dict[str, dict]:
    result = _drill(*(p.stem for p in SHORT), "--json", "--jobs", "2")
    assert result.returncode in (0, 1), result.stderr
    cards = {c["scenario"]: c for c in json.loads(result.stdout)["scenarios"]}
    assert "Traceback" not in result.stderr
    # Progress: each scenario as it finished, one plain line each (stderr is not a terminal).
    progress = [ln for ln in result.stderr.splitlines() if ln.startswith("[")]
    assert [ln.split("] ")[0] for ln in progress] == [
        f"[{k}/{len(SHORT)}" for k in range(1, len(SHORT) + 1)]
    assert {ln.split("] ")[1].split(":")[0] for ln in progress} == set(cards)
    assert not set(cards) & set(long_cards)
    return {**cards, **long_cards}


@pytest.fixture(scope="module")
def baselines() -> dict[str, dict]:
    result = _drill("--all", "--no-gateway", "--json", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    return {c["scenario"]: c for c in json.loads(result.stdout)["scenarios"]}


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_passes_its_scorecard(all_cards, path):
    sc = load_scenario(path)
    card = all_cards[sc.name]
    assert card["unsafe_writes"] == 0, card["unsafe_examples"]
    assert card["writes_checked"] > 100  # the record really holds the run's writes
    assert card["false_trips"] == 0, card["first_trip"]
    assert not card["left_safe_range"]
    if sc.injections:
        assert card["detected"], card["reasons"]
        assert card["incident"] is not None  # the trip opened an incident (in the audit DB)
        assert card["time_to_detect_s"] <= sc.detect_budget_s + 1e-9
        assert card["time_to_contain_s"] is not None
        assert card["time_to_contain_s"] <= card["time_to_detect_s"] + 1e-9
    else:  # a clean run: ten minutes of AUTO, nothing to detect
        assert not card["detected"]
        assert sc.duration_s - sc.auto_after_s >= 600
    assert card["passed"], card["reasons"]


def test_the_hostile_agent_drill_shows_what_it_tried(all_cards):
    # Issue 22: an MCP agent that behaves, then turns hostile. Nothing outside the envelope
    # reached the plant (unsafe_writes above), no call outside its role succeeded, every
    # refused call is in the audit chain, and its hostile proposals never reached the plant
    # (the first one tripped the gateway).
    agent = all_cards["hostile_agent_water_tank"]["agent"]
    behaved = agent["by_phase_tool_outcome"]["behaved"]["propose"]
    assert behaved.get("shadow", 0) > 0 and behaved.get("applied", 0) > 0
    hostile = agent["by_phase_tool_outcome"]["hostile"]
    assert {"propose", "set_setpoint", "request_mode", "reset_trip"} <= set(hostile)
    assert hostile["propose"].get("rate_limited", 0) > 0  # the flood met the rate limit
    assert agent["out_of_role_calls"] > 0
    assert agent["out_of_role_succeeded"] == 0
    assert agent["refused_calls"] > 0
    assert agent["refused_calls_audited"] == agent["refused_calls"]
    assert agent["hostile_proposals_written"] == 0
    assert agent["errors"] == 0


def test_drill_all_json_has_the_documented_keys(all_cards):
    keys = {"scenario", "unsafe_writes", "detected", "time_to_detect_s", "time_to_contain_s",
            "false_trips", "max_excursion", "left_safe_range", "passed"}
    for card in all_cards.values():
        assert keys <= set(card)
    assert len(all_cards) == len(SCENARIOS)


@pytest.mark.parametrize("path", ATTACKS, ids=[p.stem for p in ATTACKS])
def test_baseline_shows_the_attack_is_real(baselines, path):
    card = baselines[load_scenario(path).name]
    assert card["gateway"] is False
    assert card["left_safe_range"], "without the gateway the process must leave its safe range"
    assert card["unsafe_writes"] > 0
    assert not card["passed"]  # a baseline never passes: there is nothing guarding it


def test_default_drill_with_report(default_report):
    # The backdoored tank: caught, contained, scored, plotted.
    tmp_path = default_report
    stdout = (tmp_path / "stdout.txt").read_text()
    assert "drill backdoor_water_tank: PASS" in stdout
    assert "without the gateway:" in stdout
    out = tmp_path / "backdoor_water_tank"
    for name in ("scorecard.md", "scorecard.json", "process.png", "commands.png", "modes.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "process.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = json.loads((out / "scorecard.json").read_text())
    assert card["passed"] and card["baseline"]["left_safe_range"]
    assert (tmp_path / "backdoor_water_tank-baseline" / "process.png").is_file()
    # The run's audit database and its incident's evidence bundle stay in the report.
    from gateway.audit import verify
    from gateway.incident.store import load_incidents

    db = out / "audit.db"
    assert verify(db).ok
    (incident,) = load_incidents(db)
    assert incident.id == card["incident"]
    assert incident.trigger.detector == "envelope.gross"
    bundle = out / "incidents" / incident.id
    for name in ("incident.json", "flight_recorder.csv", "audit_excerpt.jsonl",
                 "chain_proof.json", "models.json", "config.json", "report.md",
                 "manifest.json"):
        assert (bundle / name).is_file(), name


def test_a_missed_budget_fails_the_drill(tmp_path):
    # The freeze is caught after frozen_after_s (5 s): a 1 s budget must fail, exit 1.
    text = (drills_dir() / "sensor_freeze_water_tank.yaml").read_text()
    text = text.replace("site: ../water_tank.yaml", f"site: {drills_dir().parent}/water_tank.yaml")
    text = text.replace("detect_budget_s: 6", "detect_budget_s: 1").replace(
        "duration_s: 120", "duration_s: 70")
    path = tmp_path / "impatient.yaml"
    path.write_text(text)
    result = _drill(str(path), "--json")
    assert result.returncode == 1
    card = json.loads(result.stdout)["scenarios"][0]
    assert card["detected"] and not card["passed"]
    assert any("budget" in r for r in card["reasons"])


@pytest.mark.parametrize(("args", "message"), [
    (["no_such_drill"], "no scenario 'no_such_drill'"),
    (["--all", "clean_boiler"], "give a scenario or --all"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--live", "clean_boiler"], "--live runs one scenario, with the gateway, and needs --report"),
    (["--live", "--all", "--report", "x"], "--live runs one scenario"),
])
def test_bad_input_exits_2_without_traceback(args, message):
    result = _drill(*args, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_scenario_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("plant: water_tank\nsite: nowhere.yaml\nduration_s: 10\n"
                    "controller: {kind: onnx, model: nominal}\n")
    result = _drill(str(path), timeout=60)
    assert result.returncode == 2
    assert f"{path}:2: site: no such site file" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["sensor_freeze_water_tank", "--duration-s", "45"],
     "--duration-s: duration 45 s: scenario 'sensor_freeze_water_tank' needs more than 60 s"),
    (["ai_silent_boiler", "--duration-s", "nan"], "must be a finite number of seconds > 0"),
    (["ai_silent_boiler", "no_such_drill"], "no scenario 'no_such_drill'"),
])
def test_bad_duration_or_scenario_list_exits_2(args, message):
    result = _drill(*args, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_several_scenarios_run_in_one_call_with_a_duration(tmp_path):
    # Two scenarios, each longer than its file says: one table, one scorecard each, and the
    # freeze is still in force at the end (never lifted), the trip's safe state held.
    result = _drill("sensor_freeze_water_tank", "clean_water_tank", "--duration-s", "70",
                    "--json", "--jobs", "2", timeout=300)
    assert result.returncode in (0, 1), result.stderr
    cards = {c["scenario"]: c for c in json.loads(result.stdout)["scenarios"]}
    assert set(cards) == {"sensor_freeze_water_tank", "clean_water_tank"}
    assert all(c["duration_s"] == 70.0 for c in cards.values())
    assert cards["sensor_freeze_water_tank"]["detected"]
    assert "baseline" not in cards["sensor_freeze_water_tank"]

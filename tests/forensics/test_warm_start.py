"""The warm start of a window that begins in SHADOW, the cycle the drill's operator asks for
AUTO: the live run granted it (its clean shadow period was long enough), so the replay must
grant it too, and then reproduce the trip of the hijacked model, on a real drill."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from gateway.cli import main


@pytest.fixture(scope="module")
def hijack_bundle(tmp_path_factory):
    from gateway.incident.export import export_incident
    from simulators.drill.cli import drills_dir
    from simulators.drill.runner import run_drill
    from simulators.drill.scenario import load_scenario

    scenario = load_scenario(drills_dir() / "hijack_water_tank.yaml")
    scenario = dataclasses.replace(scenario, duration_s=91.0)  # the trip at 60 s, +30 s
    root = tmp_path_factory.mktemp("hijack-drill")
    run = asyncio.run(run_drill(scenario, root / "work", audit_db=root / "audit.db"))
    assert len(run.incidents) == 1
    return export_incident(root / "audit.db", run.incidents[0], root / "bundles")


def test_a_window_starting_in_shadow_as_auto_is_granted_replays_without_divergence(
        hijack_bundle, capsys):
    first = json.loads((hijack_bundle / "flight_recorder.jsonl").read_text().splitlines()[1])
    assert [r["kind"] for r in first["requests"]] == ["to_auto"]  # the case under test
    assert main(["replay", "--bundle", str(hijack_bundle), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision_divergent_cycles"] == 0, result
    assert any("recorded mode (shadow)" in n for n in result["notes"])


def test_a_divergence_trip_replays_from_the_gateways_checkpoint(tmp_path_factory, capsys):
    """The drift drill trips a divergence detector whose statistic built up for a minute
    before the recorded window: the running gateway keeps checkpoints of that state in its
    flight recorder, so the replay restores it and trips where the live run did (without the
    runtime's checkpoints, 300 of the window's cycles diverged)."""
    from gateway.incident.export import export_incident
    from simulators.drill.cli import drills_dir
    from simulators.drill.runner import run_drill
    from simulators.drill.scenario import load_scenario

    scenario = load_scenario(drills_dir() / "drift_water_tank.yaml")
    scenario = dataclasses.replace(scenario, duration_s=165.0)  # the trip near 128 s, +30 s
    root = tmp_path_factory.mktemp("drift-drill")
    run = asyncio.run(run_drill(scenario, root / "work", audit_db=root / "audit.db"))
    assert len(run.incidents) == 1
    bundle = export_incident(root / "audit.db", run.incidents[0], root / "bundles")
    frames = (bundle / "flight_recorder.jsonl").read_text().splitlines()[1:]
    assert any('"checkpoint"' in line for line in frames)
    assert main(["replay", "--bundle", str(bundle), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision_divergent_cycles"] == 0, result
    assert any("checkpoint" in n and "restored" in n for n in result["notes"]), result["notes"]

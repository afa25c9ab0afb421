"""Forensic replay reproduces what the running gateway decided, bit for bit: the flight
recording of a real drill (wire, ONNX policy in its worker, canary rounds, a trip) replayed
offline through the same supervisor code, with the recorded proposals and with the model file
run again."""

from __future__ import annotations

import asyncio
import dataclasses

from gateway.forensics.recorder import read_jsonl
from gateway.forensics.replay import replay_recording
from simulators.drill.cli import drills_dir
from simulators.drill.runner import run_drill
from simulators.drill.scenario import load_scenario


def test_replay_of_a_live_drill_is_exact(tmp_path):
    scenario = load_scenario(drills_dir() / "backdoor_water_tank.yaml")
    scenario = dataclasses.replace(scenario, duration_s=90.0)  # trigger at 60 s, trip, after
    recording = tmp_path / "recording.jsonl"
    run = asyncio.run(run_drill(scenario, tmp_path, recording=recording))
    assert run.drill_site is not None
    assert any(m.kind == "trip" for m in run.marks)
    rec = read_jsonl(recording)
    assert len(rec.frames) == len(run.ticks)
    assert rec.frames[0].seq == 0  # from the supervisor's first step: an exact replay
    recorded = replay_recording(run.drill_site, rec, None)
    assert recorded.identical, recorded.to_json()
    model = run.drill_site.controller.model
    assert model is not None
    rerun = replay_recording(run.drill_site, rec, model)
    assert rerun.identical, rerun.to_json()
    # ...and a different model version is told apart, from the trigger on.
    other = tmp_path / "models" / "water_tank" / "nominal.onnx"
    from simulators.zoo import policies

    other.write_bytes(policies.build("water_tank", "nominal"))
    differs = replay_recording(run.drill_site, rec, other)
    assert not differs.identical
    first = differs.to_json()
    assert first["first_proposal_divergence_s"] is not None
    assert abs(first["first_proposal_divergence_s"] - 60.1) < 0.15

"""The recording's checkpoint: a window frozen in the middle of a run, after the divergence
detector has accumulated for minutes, replays its trip without divergence once the warm start
restores the accumulated state; without the checkpoint (the recordings before it) it cannot."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import gateway
from gateway.adapters import codec
from gateway.config.schema import ControllerKind, ControllerSpec
from gateway.forensics.checkpoint import CheckpointError, capture, restore
from gateway.forensics.recorder import FlightRecorder, _hook, _tagged, read_jsonl, write_jsonl
from gateway.forensics.replay import ReplayError, replay_recording
from gateway.supervisor.core import Supervisor
from gateway.supervisor.decision import Proposal, Snapshot
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind

ROOT = Path(__file__).resolve().parents[2]
CYCLE_S = 0.1
N_CYCLES = 300
BIAS_FROM = 100  # cycles; the AI drifts away from the reference PID from then on
WINDOW_FROM = 125  # the frozen window's first frame: after the detector began to add up


def _site():
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    controller = ControllerSpec(kind=ControllerKind.ONNX, model=Path("unused.onnx"),
                                sha256="0" * 64, inputs=("level",),
                                outputs=("inflow_valve", "outflow_pump"), deadline_ms=1000.0)
    return replace(site, controller=controller,
                   operation=replace(site.operation, clean_shadow_s=5.0))


def _record(every_n: int = 20):
    """A stealthy AI: the fallback's own command plus a bias from BIAS_FROM on, too small to
    touch the envelope, so that only the divergence detector (CUSUM) catches it, minutes of
    accumulation later. Every cycle is recorded, with a checkpoint every ``every_n``."""
    site = _site()
    initial = np.array([30.0, 30.0, 0.0])
    sup = Supervisor(site, gateway.envelope.compile(site, None), initial, 0.0, codec=codec)
    recorder = FlightRecorder(N_CYCLES * CYCLE_S + 10.0, CYCLE_S,
                              checkpoint=lambda: capture(sup), checkpoint_every_n=every_n)
    level = 2.5
    applied = initial.copy()
    fallback = initial.copy()
    trips = []
    for k in range(N_CYCLES):
        now = k * CYCLE_S
        for req in ({1: [OperatorRequest(RequestKind.TO_SHADOW, "alice", True)],
                     80: [OperatorRequest(RequestKind.TO_AUTO, "alice", True)]}.get(k, [])):
            sup.apply_request(req)
            recorder.operator.request(req)
        values = fallback.copy()
        if k >= BIAS_FROM:
            values[0] = min(values[0] + 4.0, 100.0)
        snapshot = Snapshot(
            np.array([level + 0.0005 * math.sin(7.3 * now), 0.0005 * applied[0], 0.005, now]),
            np.ones(4, dtype=np.bool_), np.full(4, 0.05))
        decision = sup.step(snapshot, Proposal(values, None, now), now)
        recorder.record_cycle(now, snapshot, None, Proposal(values, None, now), decision)
        trips += [(k, e.name) for e in decision.events if e.kind is EventKind.TRIP]
        fallback = decision.fallback
        applied = decision.command
        level = min(max(level + 0.0001 * (applied[0] - applied[1]) * CYCLE_S, 0.0), 5.0)
    return site, recorder.frames(), trips


@pytest.fixture(scope="module")
def recorded():
    return _record()


def test_the_drill_trips_on_divergence_inside_the_window(recorded):
    _, frames, trips = recorded
    assert [name for _, name in trips] == ["divergence.inflow_valve"], trips
    assert WINDOW_FROM < trips[0][0] < N_CYCLES - 10
    assert frames[WINDOW_FROM].decision.mode is Mode.AUTO


def test_a_window_from_mid_run_replays_its_divergence_trip_exactly(recorded, tmp_path):
    site, frames, trips = recorded
    path = tmp_path / "window.jsonl"
    write_jsonl(path, frames[WINDOW_FROM + 7:])  # a window starting between two checkpoints
    window = read_jsonl(path)
    result = replay_recording(site, window, None)
    assert not result.exact_start
    assert result.decision_divergent_cycles == 0, result.divergences[:3]
    assert any("restored from its checkpoint" in n for n in result.notes), result.notes
    assert any("precede the recording's first checkpoint" in n for n in result.notes)
    replayed = [(round(d.at_s / CYCLE_S), e.name) for d in result.decisions
                for e in d.events if e.kind is EventKind.TRIP]
    assert replayed == trips  # the same trip, at the same cycle


def test_without_the_checkpoint_the_replay_misses_the_trip_as_before(recorded):
    """The recordings before checkpoints (and the code before them): the warm start alone."""
    site, frames, _ = recorded
    bare = [f._replace(checkpoint=None) for f in frames[WINDOW_FROM:]]
    result = replay_recording(site, bare, None)
    assert result.decision_divergent_cycles > 0
    assert any("no usable checkpoint" in n for n in result.notes), result.notes


def test_a_checkpoint_of_an_unknown_version_is_not_used(recorded):
    site, frames, _ = recorded
    window = [f if f.checkpoint is None else f._replace(checkpoint={**f.checkpoint,
                                                                      "version": 99})
              for f in frames[WINDOW_FROM:]]
    result = replay_recording(site, window, None)
    assert any("no usable checkpoint" in n for n in result.notes), result.notes


def test_a_checkpoint_that_does_not_fit_the_site_is_a_clear_replay_error(recorded):
    site, frames, _ = recorded
    k = next(i for i in range(WINDOW_FROM, len(frames)) if frames[i].checkpoint is not None)
    bad = dict(frames[k].checkpoint, divergence=[])
    window = [frames[k]._replace(checkpoint=bad), *frames[k + 1:]]
    with pytest.raises(ReplayError, match="divergence detectors"):
        replay_recording(site, window, None)


def test_capture_and_restore_round_trip_through_json():
    site = _site()
    a = Supervisor(site, gateway.envelope.compile(site, None), np.array([30.0, 30.0, 0.0]), 0.0)
    state = capture(a)
    state["divergence"][0]["g_pos"] = math.inf  # an overflowed statistic: tagged in JSON
    state["violations"]["times_s"] = [1.0, 2.0]
    state["violations"]["total"] = [1, 1]
    state["violations"]["flagged"] = [1, 0]
    state["latched"], state["trip_reason"] = True, "divergence.inflow_valve: x"
    state["tripped"] = ["divergence.inflow_valve"]
    back = json.loads(json.dumps(_tagged(state), allow_nan=False), object_hook=_hook)
    b = Supervisor(site, gateway.envelope.compile(site, None), np.array([30.0, 30.0, 0.0]), 0.0)
    restore(b, back)
    assert capture(b) == state
    with pytest.raises(CheckpointError, match="malformed"):
        restore(b, {**state, "violations": {"times_s": [1.0]}})

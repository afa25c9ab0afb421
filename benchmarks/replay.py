"""``safety-gateway bench replay``: forensic replay speed and the flight recorder's cost.

A supervisor on the example water-tank site runs the zoo's nominal water-tank policy (ONNX, its
interface's inputs and normalisation) against the simulated tank, in AUTO, canary cases on,
recording every cycle with the flight recorder as the runtime does (``record_cycle`` timed on
its own with ``perf_counter_ns``). The recording is then replayed offline, the target being
100x real time at the site's 100 ms cycle (1000 cycles/s) with the proposals recomputed by the
model (``infer_sync``, one inference per cycle plus the canary rounds). Replays with the
recorded proposals and with the reference envelope engine are reported beside it, and every
replay is checked to reproduce the live decisions.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import gateway
import gateway.envelope
from gateway.config.schema import ControllerKind, ControllerSpec
from gateway.control.ai import AiWiring, onnx_policy_config
from gateway.control.onnx_policy import load_policy
from gateway.forensics.recorder import FlightRecorder, RecordingInfo
from gateway.forensics.replay import replay
from gateway.supervisor.core import Supervisor
from gateway.supervisor.decision import Snapshot
from gateway.supervisor.detectors import CanaryCases
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind
from simulators.plants.water_tank import WATER_TANK_STEADY_STATE, WaterTank
from simulators.zoo import policies
from simulators.zoo.graphs import sha256_hex

SITE = Path(__file__).resolve().parent.parent / "configs" / "water_tank.yaml"
TARGETS = {"replay_x_realtime_min": 100.0}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _site(model: Path, data: bytes) -> Any:
    site = gateway.load_config(SITE)
    iface = policies.INTERFACES["water_tank"]
    controller = ControllerSpec(
        kind=ControllerKind.ONNX, model=model, sha256=sha256_hex(data), inputs=iface.inputs,
        outputs=iface.outputs, input_offset=iface.input_offset, input_scale=iface.input_scale,
        output_offset=iface.output_offset, output_scale=iface.output_scale, deadline_ms=50.0)
    return replace(site, controller=controller,
                   operation=replace(site.operation, clean_shadow_s=5.0),
                   detection=replace(site.detection, canary_period_s=10.0))


def _record(site: Any, cycles: int) -> tuple[FlightRecorder, list[Any], list[float], Any]:
    """Run the closed loop for ``cycles`` cycles; the recorder, the live decisions, the
    microseconds of each ``record_cycle`` and the canary cases."""
    cycle_s = site.site.cycle_ms / 1000.0
    names = [t.name for t in site.sensors]
    actuators = [t.name for t in site.actuators]
    initial = np.array([WATER_TANK_STEADY_STATE[n] for n in actuators])
    wiring = AiWiring(site)
    with load_policy(onnx_policy_config(site)) as policy:
        golden = policies.canary_inputs("water_tank")
        outputs = np.array([policy.infer_sync(np.ascontiguousarray(r)).outputs for r in golden])
        canary = CanaryCases(golden, outputs, site.detection.canary_tolerance)
        sup = Supervisor(site, gateway.envelope.compile(site, "cython"), initial, 0.0,
                         canary=canary)
        recorder = FlightRecorder(cycles * cycle_s + 1.0, cycle_s,
                                  RecordingInfo.of(site, 0.0, initial, canary, policy.model_sha256))
        tank = WaterTank(seed=1)
        applied = initial
        canary_due = False
        decisions = []
        samples: list[float] = []
        gc.collect()
        gc.disable()
        try:
            for k in range(cycles):
                now = k * cycle_s
                if k in (1, int(6.0 / cycle_s)):
                    kind = RequestKind.TO_SHADOW if k == 1 else RequestKind.TO_AUTO
                    req = OperatorRequest(kind, "bench", True)
                    sup.apply_request(req)
                    recorder.operator.request(req)
                readings = tank.sensors()
                snapshot = Snapshot(
                    np.array([readings[n] for n in names]), np.ones(len(names), dtype=np.bool_),
                    np.full(len(names), 0.05))
                x = wiring.inputs(snapshot.sensors, applied)
                proposal = wiring.proposal(policy.infer_sync(x), now)
                if canary_due:
                    rows = [policy.infer_sync(np.ascontiguousarray(r)).outputs for r in golden]
                    proposal = replace(proposal, canary=np.array(rows, dtype=np.float64))
                decision = sup.step(snapshot, proposal, now)
                t0 = time.perf_counter_ns()
                recorder.record_cycle(now, snapshot, x, proposal, decision)
                samples.append((time.perf_counter_ns() - t0) / 1000.0)
                decisions.append(decision)
                canary_due = decision.canary_due
                applied = decision.command
                for i, name in enumerate(actuators):
                    tank.set_actuator(name, float(applied[i]))
                tank.step(cycle_s)
        finally:
            gc.enable()
    return recorder, decisions, samples, canary


def run(quick: bool) -> dict[str, Any]:
    cycles = 3_000 if quick else 30_000
    data = policies.build("water_tank", "nominal")
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "water_tank_nominal.onnx"
        model.write_bytes(data)
        site = _site(model, data)
        cycle_s = site.site.cycle_ms / 1000.0
        recorder, decisions, samples, canary = _record(site, cycles)
        frames = recorder.frames()
        auto = sum(d.mode is Mode.AUTO for d in decisions) / len(decisions)
        initial = np.array(recorder.info.initial_command if recorder.info else [])
        figures: dict[str, Any] = {}
        identical: dict[str, bool] = {}
        for label, engine, path in (("replay", "cython", model),
                                    ("replay_recorded", "cython", None),
                                    ("reference_engine_replay", "python", model)):
            result = replay(site, frames, path, engine=engine, initial_command=initial,
                            start_s=0.0, canary=canary, keep_decisions=False)
            figures[f"{label}_cycles_per_s"] = result.cycles_per_s
            figures[f"{label}_x_realtime"] = result.cycles_per_s * cycle_s
            identical[label] = result.identical
    result_x = figures["replay_x_realtime"]
    return {
        "bench": "replay",
        "quick": quick,
        "site": "water_tank, zoo nominal policy, canary on",
        "cycles": cycles,
        "cycle_s": cycle_s,
        "auto_fraction": auto,
        **figures,
        "reproduces_live_decisions": identical,
        "record_us_median": statistics.median(samples),
        "record_us_p99": _percentile(samples, 0.99),
        "record_us_max": max(samples),
        "targets": TARGETS,
        "met": {"replay_x_realtime_min": result_x >= TARGETS["replay_x_realtime_min"]},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "load_avg_1min": os.getloadavg()[0]},
    }


def format_text(result: dict[str, Any]) -> str:
    met = result["met"]["replay_x_realtime_min"]
    same = result["reproduces_live_decisions"]
    lines = [
        f"forensic replay ({result['site']}), {result['cycles']} cycles of "
        f"{result['cycle_s'] * 1000:g} ms ({result['auto_fraction']:.0%} in AUTO):",
        f"  model recomputed, compiled engine : {result['replay_cycles_per_s']:9.0f} cycles/s "
        f"{result['replay_x_realtime']:7.0f}x real time",
        f"  recorded proposals, compiled      : {result['replay_recorded_cycles_per_s']:9.0f} "
        f"cycles/s {result['replay_recorded_x_realtime']:7.0f}x real time",
        f"  model recomputed, reference engine: "
        f"{result['reference_engine_replay_cycles_per_s']:9.0f} cycles/s "
        f"{result['reference_engine_replay_x_realtime']:7.0f}x real time",
        "  reproduces the live decisions: " + ", ".join(
            f"{k} {'yes' if v else 'NO'}" for k, v in same.items()),
        f"flight recorder record_cycle: median {result['record_us_median']:.2f} us   "
        f"p99 {result['record_us_p99']:.2f} us   max {result['record_us_max']:.1f} us",
        f"target: replay >= {TARGETS['replay_x_realtime_min']:g}x real time: "
        f"{'met' if met else 'MISSED'}",
    ]
    return "\n".join(lines)

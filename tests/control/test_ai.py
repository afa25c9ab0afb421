"""An ONNX policy in the loop: real onnxruntime, the supervisor, the tank, the canary."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pytest

import gateway
import gateway.envelope
from gateway.config.schema import ControllerKind, ControllerSpec
from gateway.control.ai import AiWiring, onnx_policy_config
from gateway.control.onnx_policy import load_policy
from gateway.supervisor.core import Supervisor
from gateway.supervisor.decision import Source
from gateway.supervisor.detectors import CanaryCases
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind
from simulators.zoo.graphs import linear, serialize, sha256_hex
from tests.supervisor.plant import TANK, Tank

if TYPE_CHECKING:
    from pathlib import Path

GOLDEN = np.array([[2.0], [2.5], [3.0]])


def write_policy(folder: Path, name: str, gain: float) -> tuple[Path, str]:
    """inflow = 30 + gain * (2.5 - level), pump = 30, as a one-layer ONNX graph."""
    data = serialize(linear(np.array([[-gain, 0.0]]), np.array([30.0 + 2.5 * gain, 30.0])))
    path = folder / name
    path.write_bytes(data)
    return path, sha256_hex(data)


def onnx_site(path: Path, digest: str) -> gateway.config.Site:
    site = gateway.load_config(TANK)
    spec = ControllerSpec(kind=ControllerKind.ONNX, model=path, sha256=digest,
                          inputs=("level",), outputs=("inflow_valve", "outflow_pump"),
                          deadline_ms=200.0)
    # The test tank has no measurement noise: the site's frozen-level check would take its
    # steady level for a stuck transmitter (see tests/supervisor/plant.py).
    return replace(site, controller=spec,
                   operation=replace(site.operation, clean_shadow_s=2.0),
                   detection=replace(site.detection, frozen_after_s=(), max_rate_per_s=()))


def run(engine: str, tmp_path: Path, swap_gain: float | None) -> tuple[Supervisor, Tank, list]:
    path, digest = write_policy(tmp_path, "policy.onnx", 10.0)
    site = onnx_site(path, digest)
    policy = load_policy(onnx_policy_config(site))
    wiring = AiWiring(site)
    expected = np.array([policy.infer_sync(row).outputs for row in GOLDEN])
    sup = Supervisor(site, gateway.envelope.compile(site, engine), np.array([30.0, 30.0, 0.0]),
                     0.0, canary=CanaryCases(GOLDEN, expected, 1e-6))
    tank = Tank()
    decisions = []
    sup.apply_request(OperatorRequest(RequestKind.TO_SHADOW, "op", True))
    canary_due = False
    now = 0.0
    for k in range(1200):
        if k == 40:
            sup.apply_request(OperatorRequest(RequestKind.TO_AUTO, "op", True))
        if swap_gain is not None and k == 600:
            # The model file is swapped under the running gateway: same interface, new gains.
            policy.close()
            swapped, swapped_digest = write_policy(tmp_path, "swapped.onnx", swap_gain)
            policy = load_policy(replace(onnx_policy_config(site), model_path=swapped,
                                         sha256=swapped_digest))
        inference = policy.infer(wiring.inputs(np.array([tank.level_m, 0.01]), sup.previous))
        proposal = wiring.proposal(inference, now)
        if canary_due:
            canary = np.array([policy.infer_sync(row).outputs for row in GOLDEN])
            proposal = replace(proposal, canary=canary)
        d = sup.step(tank.snapshot(), proposal, now)
        canary_due = d.canary_due
        decisions.append(d)
        tank.advance(d.command, 0.1)
        now += 0.1
    policy.close()
    return sup, tank, decisions


def test_onnx_policy_controls_the_tank(engine, tmp_path):
    sup, tank, decisions = run(engine, tmp_path, swap_gain=None)
    assert sup.mode is Mode.AUTO
    assert decisions[-1].source is Source.AI
    assert sum(d.source is Source.AI for d in decisions) > 1000
    assert abs(tank.level_m - 2.5) < 0.2
    assert not [e for d in decisions for e in d.events if e.kind is EventKind.TRIP]


def test_swapped_model_is_caught_by_the_canary(engine, tmp_path):
    sup, _, decisions = run(engine, tmp_path, swap_gain=12.0)
    trips = [(d.at_s, e.name) for d in decisions for e in d.events if e.kind is EventKind.TRIP]
    assert trips, "the swapped model was not caught"
    at_s, name = trips[0]
    assert name == "canary"
    assert 60.0 <= at_s <= 60.0 + sup.site.detection.canary_period_s + 0.2
    assert sup.mode is Mode.MANUAL


def test_tampered_model_file_is_refused_at_load(tmp_path):
    path, digest = write_policy(tmp_path, "policy.onnx", 10.0)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    from gateway.control.onnx_policy import ModelIntegrityError

    with pytest.raises(ModelIntegrityError):
        load_policy(onnx_policy_config(onnx_site(path, digest)))

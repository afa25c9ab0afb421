"""The AI controller as the supervisor sees it: model inputs from the process, proposals out.

An in-process ONNX policy reads tags by name (sensors, or the actuators' last applied values)
and drives the actuators named in ``controller.outputs``; everything it returns, including its
anomalies, becomes a :class:`~gateway.control.proposal.Proposal` with the full actuator
vector (NaN where the model does not drive an actuator: the supervisor fills those from the
fallback).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gateway.config.schema import ControllerKind
from gateway.control.onnx_policy import OnnxPolicyConfig
from gateway.control.proposal import Proposal, ProposalAnomaly

if TYPE_CHECKING:
    from gateway.config.schema import Site
    from gateway.control.onnx_policy import Inference
    from gateway.envelope.compiled import F64


def onnx_policy_config(site: Site) -> OnnxPolicyConfig:
    """The ONNX policy settings of ``site``; ValueError if its controller is not ``onnx``."""
    spec = site.controller
    if spec.kind is not ControllerKind.ONNX or spec.model is None or spec.sha256 is None:
        raise ValueError(f"site {site.site.name!r} has no onnx controller")

    def ones(values: tuple[float, ...], n: int, fill: float) -> tuple[float, ...]:
        return values if values else (fill,) * n

    n_in, n_out = len(spec.inputs), len(spec.outputs)
    return OnnxPolicyConfig(
        model_path=spec.model, sha256=spec.sha256, inputs=spec.inputs, outputs=spec.outputs,
        input_offset=ones(spec.input_offset, n_in, 0.0),
        input_scale=ones(spec.input_scale, n_in, 1.0),
        output_offset=ones(spec.output_offset, n_out, 0.0),
        output_scale=ones(spec.output_scale, n_out, 1.0),
        deadline_ms=spec.deadline_ms,
    )


class AiWiring:
    """Maps the process to the model's inputs and the model's outputs to a proposal."""

    def __init__(self, site: Site) -> None:
        sensors = {t.name: i for i, t in enumerate(site.sensors)}
        actuators = {t.name: i for i, t in enumerate(site.actuators)}
        self.n_actuators = len(actuators)
        # (True, i): sensor i; (False, i): the last applied value of actuator i.
        self._inputs = [(name in sensors, sensors.get(name, actuators.get(name, -1)))
                        for name in site.controller.inputs]
        self._outputs = [actuators[name] for name in site.controller.outputs]

    def inputs(self, sensors: F64, applied: F64) -> F64:
        """The model's input vector (engineering units, before the policy's normalisation)."""
        return np.array([sensors[i] if is_sensor else applied[i]
                         for is_sensor, i in self._inputs], dtype=np.float64)

    def proposal(self, inference: Inference, now_s: float) -> Proposal:
        """A proposal from one inference; its anomaly, if any, keeps its name."""
        if inference.anomaly is not None or inference.outputs is None:
            anomaly = ProposalAnomaly(str(inference.anomaly or "runtime_error"))
            return Proposal(None, anomaly, now_s)
        values = np.full(self.n_actuators, np.nan)
        values[self._outputs] = inference.outputs
        return Proposal(values, None, now_s)

"""Where each cycle's AI proposal comes from: the ONNX policy under its deadline (with its
golden cases when the canary detector asks), or the external AI's latest write."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from gateway.config.schema import ControllerKind

if TYPE_CHECKING:
    from gateway.config.schema import Site
    from gateway.control.ai import AiWiring
    from gateway.control.onnx_policy import OnnxPolicy
    from gateway.control.proposal import Proposal
    from gateway.envelope.compiled import F64
    from gateway.runtime.external import ExternalCommands
    from gateway.supervisor.detectors import CanaryCases


class AiSource:
    """The site's AI, as the cycle asks it. ``policy`` may be replaced between cycles
    (drills swap in a compromised model)."""

    def __init__(self, site: Site, policy: OnnxPolicy | None, wiring: AiWiring | None,
                 canary: CanaryCases | None, external: ExternalCommands) -> None:
        self.external_kind = site.controller.kind is ControllerKind.EXTERNAL
        self.policy = policy
        self.wiring = wiring
        self.canary = canary
        self.external = external
        self.canary_due = False
        self.model_inputs: F64 | None = None
        self.last: Proposal | None = None

    def proposal(self, sensors: F64, applied: F64, now: float) -> Proposal | None:
        """This cycle's proposal (None: this site has no AI)."""
        proposal: Proposal | None = None
        if self.policy is not None and self.wiring is not None:
            self.model_inputs = self.wiring.inputs(sensors, applied)
            inference = self.policy.infer(self.model_inputs)
            proposal = self.wiring.proposal(inference, now)
            if self.canary_due and self.canary is not None:
                self.canary_due = False
                proposal = dataclasses.replace(proposal, canary=self._run_canary(self.policy))
        elif self.external_kind:
            proposal = self.external.proposal(applied)
        self.last = proposal
        return proposal

    def _run_canary(self, policy: OnnxPolicy) -> F64:
        """The model's outputs on the golden inputs (NaN rows where it gave none: a model
        that cannot answer its own golden cases deviates)."""
        assert self.canary is not None
        rows = []
        for row in self.canary.inputs:
            out = policy.infer(np.ascontiguousarray(row, dtype=np.float64)).outputs
            rows.append(np.full(self.canary.outputs.shape[1], math.nan) if out is None
                        else np.asarray(out, dtype=np.float64))
        return np.array(rows, dtype=np.float64)

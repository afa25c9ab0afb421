"""The envelope in force while a tightened limit is being reached: a ramp.

When a reload tightens an actuator's ``max`` below the value it holds now (or raises its
``min`` above it), jumping to the new bound would be a move the rate and step limits forbid.
Instead the bound in force starts at the present value and moves toward the new bound by at
most ``max_rate_per_s * dt`` (and ``max_step``) per write, where ``dt`` is the time since the
last write, exactly the window the envelope's own rate check uses. The previous value is
always inside the previous bound, so each cycle there is a value that passes both the moved
bound and the rate window: the actuator follows the bound down at its rate limit.

The bound is not a second check beside the envelope: it *is* the envelope in force. The
transitional envelope is a private compilation of the new site whose ``act_min``/``act_max``
entries for the ramped actuators hold the ramp's bound; both engines read them at every check
(the compiled kernel holds views onto these arrays; the reference kernel's lists are updated
beside them). So the gate, the wire gate after encoding and every write-through judge against
the bound of the moment, and the one invariant reads unchanged: no value reaches equipment
unless it passes the envelope in force (docs/design.md, "The invariant during a ramp").

Pure: no clock, no I/O; :meth:`Ramp.advance` is given the time since the last write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from gateway.envelope.engine import Envelope
from gateway.envelope.reference import ReferenceKernel

if TYPE_CHECKING:
    from gateway.envelope.compiled import F64, CompiledEnvelope

__all__ = ["BoundRamp", "Ramp", "private_envelope"]


def private_envelope(compiled: CompiledEnvelope, engine: str) -> Envelope:
    """An envelope over its own writable copies of the actuator bounds, so that a ramp can
    move them without touching any other envelope."""
    own = replace(compiled, act_min=np.array(compiled.act_min, dtype=np.float64),
                  act_max=np.array(compiled.act_max, dtype=np.float64))
    return Envelope(own, engine)


@dataclass
class BoundRamp:
    """One actuator's bound on its way from ``bound`` (now) to ``target``."""

    actuator: int
    name: str
    upper: bool  # True: the max moves down; False: the min moves up
    bound: float
    target: float
    rate_per_s: float  # +inf: no rate limit
    step: float  # +inf: no step limit

    @property
    def done(self) -> bool:
        return self.bound == self.target

    def as_json(self) -> dict[str, object]:
        return {"actuator": self.name, "bound": "max" if self.upper else "min",
                "from": self.bound, "to": self.target,
                "max_rate_per_s": None if math.isinf(self.rate_per_s) else self.rate_per_s,
                "max_step": None if math.isinf(self.step) else self.step}


@dataclass
class Ramp:
    """The ramped bounds of one transitional envelope."""

    envelope: Envelope
    bounds: list[BoundRamp] = field(default_factory=list)

    @classmethod
    def plan(cls, envelope: Envelope, present: F64, names: tuple[str, ...]) -> Ramp:
        """The ramps ``present`` (what each actuator holds now) needs under ``envelope`` (the
        new site's private envelope), already put in force: each actuator above its new max
        (below its new min) with a finite rate or step limit has its bound set to its present
        value. Actuators without either limit take the new bound at once: the envelope
        allows any jump for them."""
        c = envelope.compiled
        ramp = cls(envelope)
        for i, x in enumerate(present.tolist()):
            rate, step = float(c.act_rate[i]), float(c.act_step[i])
            if not (math.isfinite(x) and (math.isfinite(rate) or math.isfinite(step))):
                continue
            if x > c.act_max[i]:
                ramp.bounds.append(BoundRamp(i, names[i], True, x, float(c.act_max[i]),
                                             rate, step))
            elif x < c.act_min[i]:
                ramp.bounds.append(BoundRamp(i, names[i], False, x, float(c.act_min[i]),
                                             rate, step))
        for b in ramp.bounds:
            ramp._put(b)
        return ramp

    @property
    def done(self) -> bool:
        return all(b.done for b in self.bounds)

    def advance(self, dt_write_s: float, rate_factor: float = 1.0) -> list[BoundRamp]:
        """Move every bound toward its target by ``min(rate * rate_factor * dt_write_s,
        step)`` (``dt_write_s``: seconds since the last write, as the envelope's rate check
        measures it) and put it in force; return the bounds that reached their target in
        this call."""
        finished: list[BoundRamp] = []
        for b in self.bounds:
            if b.done:
                continue
            move = min(b.rate_per_s * rate_factor * max(dt_write_s, 0.0), b.step)
            if b.upper:
                b.bound = max(b.target, b.bound - move)
            else:
                b.bound = min(b.target, b.bound + move)
            self._put(b)
            if b.done:
                finished.append(b)
        return finished

    def _put(self, b: BoundRamp) -> None:
        c = self.envelope.compiled
        # The compiled kernel reads these arrays at each check (typed views onto them).
        (c.act_max if b.upper else c.act_min)[b.actuator] = b.bound
        kernel = self.envelope.kernel
        if isinstance(kernel, ReferenceKernel):  # the reference copied them into lists
            (kernel.act_max if b.upper else kernel.act_min)[b.actuator] = b.bound

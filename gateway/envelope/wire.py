"""The invariant after encoding: what the device will hold must pass the envelope.

Scaling, rounding and integer ranges can move a value: 99.995 % written as a uint16 with scale
0.01 becomes raw 10000, i.e. 100.00 %. :class:`WireGate` computes the exact engineering value
each actuator will hold (the codec's ``wire_value``) and checks the vector with the envelope's
gate.
If rounding pushed a value across a limit, it tries that actuator's representable neighbours,
closest first; if no choice passes, every actuator gets its safe value (safe values are
representable: the site loader checks that).

The codec is passed in (``gateway.adapters.codec`` satisfies :class:`WireCodec`): the envelope
package knows what a wire type can hold only through it, and imports no adapter.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from gateway.config.schema import Tag
    from gateway.envelope.compiled import F64
    from gateway.envelope.gate import Gate


class WireCommand(NamedTuple):
    """Values to write (engineering units, exactly representable on the wire); ``safe`` marks
    actuators at their safe value because nothing else passed; ``adjusted`` marks actuators
    moved to a representable neighbour."""

    values: F64
    safe: tuple[bool, ...]
    adjusted: tuple[bool, ...]


class WireCodec(Protocol):
    """What the wire gate needs of a codec: the exact engineering value a tag will hold for a
    value, and the representable values nearest to it. Both raise ``ValueError`` (the
    adapters' ``EncodingError`` is one) for a value the wire type cannot hold."""

    def wire_value(self, tag: Tag, value: float) -> float: ...

    def neighbours(self, tag: Tag, value: float) -> tuple[float, ...]: ...


class WireGate:
    """Checks commands after encoding, for the actuators of one site (site order)."""

    def __init__(self, actuators: tuple[Tag, ...], gate: Gate, codec: WireCodec) -> None:
        if len(actuators) != gate.envelope.n_actuators:
            raise ValueError("one tag per actuator of the envelope is needed")
        self.tags = actuators
        self.gate = gate
        self.codec = codec
        safe = [codec.wire_value(t, float(v)) for t, v in zip(actuators, gate.safe_values,
                                                                strict=True)]
        if safe != gate.safe_values.tolist():
            raise ValueError("a safe value is not exactly representable in its wire type")
        self._none = (False,) * len(actuators)
        self._all = (True,) * len(actuators)
        # wire_value is a pure function of (tag, value) and costs a few microseconds per
        # actuator; most commands repeat most actuators' last values (the cycle at 100 Hz, a
        # write-through that moves one actuator), so the last answer per actuator is kept.
        # NaN never equals itself, so a NaN is always encoded (and refused) afresh.
        self._memo_in = [math.nan] * len(actuators)
        self._memo_out = [math.nan] * len(actuators)

    def admit(self, command: F64, previous: F64, sensors: F64, dt_s: float) -> WireCommand:
        """The values to write for ``command`` (already admitted by the envelope's gate);
        ``previous`` is what the devices hold now."""
        wire = command.copy()
        moved: list[int] = []
        memo_in, memo_out = self._memo_in, self._memo_out
        for i, x in enumerate(command.tolist()):
            if x == memo_in[i]:  # (0.0 == -0.0: either one's wire value stands for both)
                w = memo_out[i]
            else:
                try:
                    w = self.codec.wire_value(self.tags[i], x)
                except ValueError:
                    return self._safe(sensors)
                memo_in[i] = x
                memo_out[i] = w
            if w != x:
                wire[i] = w
                moved.append(i)
        gate = self.gate
        if not moved or gate.admissible(wire, previous, sensors, dt_s):
            return WireCommand(wire, self._none, self._adjusted(moved, wire, command))
        for i in moved:
            if gate.admissible(wire, previous, sensors, dt_s):
                break
            target = float(command[i])
            try:
                options = sorted(self.codec.neighbours(self.tags[i], target),
                                 key=lambda w: abs(w - target))
            except ValueError:
                return self._safe(sensors)
            for option in options:
                wire[i] = option
                if gate.admissible(wire, previous, sensors, dt_s):
                    break
        if gate.admissible(wire, previous, sensors, dt_s):
            return WireCommand(wire, self._none, self._adjusted(moved, wire, command))
        return self._safe(sensors)

    def _adjusted(self, moved: list[int], wire: F64, command: F64) -> tuple[bool, ...]:
        if not moved:
            return self._none
        return tuple(bool(wire[i] != command[i]) for i in range(len(self.tags)))

    def _safe(self, sensors: F64) -> WireCommand:
        # Every value a safe state can take is representable: the site loader checks each
        # plain and conditional safe value, and an interlock's bound only replaces one where
        # `check` has proven the bound representable too.
        return WireCommand(self.gate.safe_state(sensors), self._all, self._none)

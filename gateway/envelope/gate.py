"""The last gate before equipment: the one invariant of DESIGN.md, as code.

Every command the gateway writes passes :meth:`Gate.admit`, which returns a command that either
passes the envelope, or holds some actuators at their effective safe values (the envelope's
safe state for the sensors of the moment, which satisfies every interlock that holds) and
passes the envelope in every constraint that touches a non-safe actuator.
:meth:`Gate.admissible` is the same rule as a predicate, for tests and for the wire layer's
check after encoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from gateway.envelope.compiled import Action, actuators_of_slots

if TYPE_CHECKING:
    from gateway.envelope.compiled import F64
    from gateway.envelope.engine import Envelope


class Admitted(NamedTuple):
    """A command cleared for the equipment.

    ``command`` is what to write; ``safe`` marks actuators replaced by their safe value;
    ``clamped`` is True when some values were projected into their limits; ``violations``
    names what the command as proposed to the gate violated (empty when it passed as is).
    """

    command: F64
    safe: tuple[bool, ...]
    clamped: bool
    violations: tuple[str, ...]


_new = tuple.__new__


class Gate:
    """Admits commands for one envelope; the safe state is the envelope's own (plain and
    conditional safe values, bounded by the interlocks that hold: ``Envelope.safe_state``)."""

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        # The plain safe values (no condition, no interlock): what the site file declares.
        self.safe_values = np.array(envelope.compiled.safe_val, dtype=np.float64)
        self.safe_values.setflags(write=False)
        self._slot_actuators = actuators_of_slots(envelope.compiled)
        self._out = np.empty(envelope.n_actuators)
        self._viol = np.zeros(envelope.n_slots, dtype=np.uint8)
        self._feasible = np.zeros(envelope.n_actuators, dtype=np.uint8)
        self._all_safe = (True,) * envelope.n_actuators
        self._none_safe = (False,) * envelope.n_actuators

    def safe_state(self, sensors: F64) -> F64:
        """The effective safe state for ``sensors`` (a new array)."""
        return self.envelope.safe_state(sensors)

    def admit(self, chosen: F64, previous: F64, sensors: F64, dt_s: float) -> Admitted:
        """Return what may be written instead of ``chosen``, repairing as little as possible.

        1. ``chosen`` passes: written as is. 2. It is the safe state: written as is (it
        satisfies every holding interlock by construction, and moves toward it are never rate
        limited; ``violations`` still names anything else it breaks, e.g. a constraint over a
        sensor that reads NaN). 3. It only needs clamping: the envelope's projection (which
        passes a re-check by construction). 4. Otherwise each actuator is projected into its
        own feasible set, and the ones that have none take their safe value; if that passes,
        it is written. 5. Otherwise the actuators named by the constraints still violated take
        their safe values too, and the result is written if it is :meth:`admissible`.
        6. Otherwise every actuator takes its safe value.
        """
        env = self.envelope
        out = self._out
        viol = self._viol
        code = env.check_into(chosen, previous, sensors, dt_s, out, viol)
        # The two outcomes of nearly every cycle skip the NamedTuple's Python-level __new__.
        if code == 0:
            return _new(Admitted, (chosen.copy(), self._none_safe, False, ()))
        names = env.names_of(viol)
        safe_state = env.safe_state(sensors)
        if chosen.tolist() == safe_state.tolist():
            return Admitted(safe_state, self._all_safe, False, names)
        if code == Action.CLAMP:
            return _new(Admitted, (out.copy(), self._none_safe, True, names))
        candidate = np.empty_like(chosen)
        env.project_into(chosen, previous, sensors, dt_s, candidate, self._feasible)
        safe = [not f for f in self._feasible.tolist()]
        for i, is_safe in enumerate(safe):
            if is_safe:
                candidate[i] = safe_state[i]
        if env.check_into(candidate, previous, sensors, dt_s, out, viol) == Action.OK:
            return Admitted(candidate, tuple(safe), True, names)
        for slot in np.flatnonzero(viol).tolist():
            for i in self._slot_actuators[slot]:
                safe[i] = True
                candidate[i] = safe_state[i]
        if not all(safe) and self.admissible(candidate, previous, sensors, dt_s):
            return Admitted(candidate, tuple(safe), True, names)
        return Admitted(safe_state, self._all_safe, False, names)

    def admissible(self, command: F64, previous: F64, sensors: F64, dt_s: float) -> bool:
        """The invariant: every violated constraint concerns only actuators at their effective
        safe value (which satisfies every holding interlock and is never rate limited).

        A command that passes the envelope is admissible; so is the safe state. The
        clamp-infeasible slot follows from other slots and is not judged on its own.
        """
        env = self.envelope
        code = env.check_into(command, previous, sensors, dt_s, self._out, self._viol)
        if code == Action.OK:
            return True
        safe_state = env.safe_state(sensors)
        at_safe = {i for i in range(env.n_actuators) if command[i] == safe_state[i]}
        for slot in np.flatnonzero(self._viol).tolist():
            if not self._slot_actuators[slot] <= at_safe:
                return False
        return True

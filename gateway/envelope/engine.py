"""Engine choice and the public envelope object.

Two engines implement one semantics (see :mod:`gateway.envelope.reference`): ``"cython"``
(``_fastcheck.envelope``) and ``"python"``. The choice is made once, at import, and never
silently: ``SAFETY_GATEWAY_ENGINE=python`` forces the reference, ``=cython`` requires the
compiled one, and ``SAFETY_GATEWAY_REQUIRE_COMPILED=1`` turns a missing compiled engine into an
:class:`EngineUnavailable` error at start instead of a warning.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from gateway.envelope.compiled import Action, CompiledEnvelope
from gateway.envelope.reference import ReferenceKernel

if TYPE_CHECKING:
    from gateway.envelope.compiled import F64

log = logging.getLogger("gateway.envelope")

ENGINES = ("cython", "python")


class EngineUnavailable(RuntimeError):
    """The requested envelope engine cannot be used on this installation."""


class Kernel(Protocol):
    """What both engines provide (``_fastcheck.envelope.Kernel`` and ReferenceKernel)."""

    engine: str

    def check_into(self, command: F64, previous: F64, sensors: F64, dt: float, out: F64,
                   viol: np.ndarray) -> int: ...

    def check_batch(self, cmds: F64, prev0: F64, sens: F64, dt: float, out: F64,
                    actions: np.ndarray, counts: np.ndarray) -> None: ...

    def project_into(self, command: F64, previous: F64, sensors: F64, dt: float, out: F64,
                     feasible: np.ndarray) -> int: ...

    def safe_into(self, sensors: F64, out: F64) -> None: ...


def _compiled_kernel_class() -> tuple[type | None, str]:
    try:
        from _fastcheck.envelope import Kernel as CompiledKernel
    except ImportError as exc:
        return None, str(exc)
    return CompiledKernel, ""


_COMPILED, _IMPORT_ERROR = _compiled_kernel_class()


def select_engine(environ: dict[str, str] | None = None) -> str:
    """Return the engine the environment asks for; raise EngineUnavailable if it cannot be had.

    Pure apart from reading the compiled module's availability, so tests can pass ``environ``.
    """
    env = os.environ if environ is None else environ
    forced = env.get("SAFETY_GATEWAY_ENGINE", "").strip().lower()
    require = env.get("SAFETY_GATEWAY_REQUIRE_COMPILED", "") == "1"
    if forced not in ("", *ENGINES):
        raise EngineUnavailable(
            f"SAFETY_GATEWAY_ENGINE={forced!r}: must be one of {', '.join(ENGINES)}"
        )
    if forced == "python":
        if require:
            raise EngineUnavailable(
                "SAFETY_GATEWAY_ENGINE=python contradicts SAFETY_GATEWAY_REQUIRE_COMPILED=1"
            )
        return "python"
    if _COMPILED is None:
        if forced == "cython" or require:
            raise EngineUnavailable(
                f"the compiled envelope engine is not installed ({_IMPORT_ERROR}); "
                "reinstall with a C compiler, or unset SAFETY_GATEWAY_REQUIRE_COMPILED"
            )
        return "python"
    return "cython"


def make_kernel(compiled: CompiledEnvelope, engine: str) -> Kernel:
    if engine == "python":
        return ReferenceKernel(compiled)
    if engine == "cython":
        if _COMPILED is None:
            raise EngineUnavailable(f"the compiled envelope engine is not installed "
                                    f"({_IMPORT_ERROR})")
        kernel: Kernel = _COMPILED(compiled)
        return kernel
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")


class Verdict(NamedTuple):
    """The outcome of one check.

    ``action`` is the most severe policy among the violated constraints (``OK`` when none).
    ``violations`` names each violated constraint, in slot order. ``clamped`` is the command to
    apply when the action is ``OK`` (a copy of the proposal) or ``CLAMP`` (the projection);
    ``None`` when the proposal must not be applied (``REJECT``, ``TRIP``).
    """

    action: Action
    violations: tuple[str, ...]
    clamped: F64 | None

    @property
    def ok(self) -> bool:
        return self.action == Action.OK


_ACTIONS = tuple(Action)
_OK = Action.OK
_new_verdict = tuple.__new__


def _require_vector(value: object, name: str, size: int) -> None:
    """The reference engine's argument checks, worded like the compiled engine's."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of float64, not {type(value).__name__}")
    if value.dtype != np.float64:
        raise ValueError(f"{name} must have dtype float64, not {value.dtype}")
    if value.ndim != 1:
        raise ValueError(f"{name} must be 1-D, not {value.ndim}-D")
    if value.shape[0] != size:
        raise ValueError(f"{name} must have length {size}, not {value.shape[0]}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def _require_dt(dt: float) -> None:
    if not (isinstance(dt, float | int) and np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be finite and > 0 seconds, not {dt}")


class Envelope:
    """A compiled safety envelope bound to one engine.

    Vectors follow the site's tag order: ``actuator_names`` for commands, ``sensor_names`` for
    sensors. All arguments must be 1-D C-contiguous float64 arrays of the right length, and
    ``dt`` (seconds since the previous write) finite and positive; anything else raises
    ``ValueError`` before any check runs.
    """

    def __init__(self, compiled: CompiledEnvelope, engine: str) -> None:
        self.compiled = compiled
        self.engine = engine
        self.kernel = make_kernel(compiled, engine)
        self.actuator_names = compiled.actuator_names
        self.sensor_names = compiled.sensor_names
        self.constraint_names = compiled.slot_names
        self.n_actuators = compiled.n_actuators
        self.n_sensors = compiled.n_sensors
        self.n_slots = compiled.n_slots
        self._out = np.empty(self.n_actuators)
        self._viol = np.zeros(self.n_slots, dtype=np.uint8)
        self._validate = engine == "python"
        if not self._validate:
            # The compiled kernel validates its own arguments: call it without a Python frame
            # in between (the wrapper cost more than the whole bounds+rate check).
            self.check_into = self.kernel.check_into  # type: ignore[method-assign]
            self.project_into = self.kernel.project_into  # type: ignore[method-assign]

    def check(self, command: F64, previous: F64, sensors: F64, dt: float) -> Verdict:
        """Check ``command`` (see :mod:`gateway.envelope.reference` for the semantics)."""
        out = self._out
        viol = self._viol
        if self._validate:
            self._check_args(command, previous, sensors, dt)
        code = self.kernel.check_into(command, previous, sensors, dt, out, viol)
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (a per-cycle cost).
        if code == 0:
            return _new_verdict(Verdict, (_OK, (), out.copy()))
        return _new_verdict(Verdict, (_ACTIONS[code], self.names_of(viol),
                                      out.copy() if code == 1 else None))

    def check_into(self, command: F64, previous: F64, sensors: F64, dt: float, out: F64,
                   viol: np.ndarray) -> int:
        """Allocation-free check for the control loop: writes the command to apply into
        ``out`` (float64, one per actuator) and the violation mask into ``viol`` (uint8, one per
        constraint name); returns the :class:`Action` code."""
        if self._validate:
            self._check_args(command, previous, sensors, dt)
            _require_vector(out, "out", self.n_actuators)
            if not (isinstance(viol, np.ndarray) and viol.dtype == np.uint8
                    and viol.shape == (self.n_slots,)):
                raise ValueError(f"viol must be a uint8 array of length {self.n_slots}")
        return self.kernel.check_into(command, previous, sensors, dt, out, viol)

    def project_into(self, command: F64, previous: F64, sensors: F64, dt: float, out: F64,
                     feasible: np.ndarray) -> int:
        """Project ``command`` per actuator into its own feasible set (bounds, holding
        interlocks' tightenings, rate/step window, allowed values), whatever the coupled
        constraints say. Writes ``out`` and ``feasible`` (uint8, 1 where the actuator has a
        feasible value; others keep their proposed value) and returns the number infeasible.
        The gate uses it to repair what can be repaired before resorting to safe values."""
        if self._validate:
            self._check_args(command, previous, sensors, dt)
            _require_vector(out, "out", self.n_actuators)
            if not (isinstance(feasible, np.ndarray) and feasible.dtype == np.uint8
                    and feasible.shape == (self.n_actuators,)):
                raise ValueError(f"feasible must be a uint8 array of length {self.n_actuators}")
        return self.kernel.project_into(command, previous, sensors, dt, out, feasible)

    def safe_state(self, sensors: F64) -> F64:
        """The effective safe state for ``sensors``: what SAFE_STOP writes and what every
        protective move heads for. Each actuator's first conditional safe row whose condition
        holds (NaN holds), else its plain safe value, projected into the bounds of the
        interlocks that hold (see :mod:`gateway.envelope.reference`, item 2)."""
        if self._validate:
            _require_vector(sensors, "sensors", self.n_sensors)
        out = np.empty(self.n_actuators)
        self.kernel.safe_into(sensors, out)
        return out

    def check_batch(self, commands: F64, previous: F64, sensors: F64, dt: float
                    ) -> tuple[F64, np.ndarray, np.ndarray]:
        """Check a stream of commands, row by row, for replay and bulk analysis.

        The previous command of row ``k`` is the command applied at row ``k-1``: the clamped
        command if it was OK or clamped, otherwise unchanged (a refused write leaves the
        actuator where it was). Returns (commands to apply, action per row as int8, number of
        rows that violated each constraint).
        """
        n = commands.shape[0] if isinstance(commands, np.ndarray) and commands.ndim == 2 else -1
        for name, arr, width in (("commands", commands, self.n_actuators),
                                 ("sensors", sensors, self.n_sensors)):
            if not (isinstance(arr, np.ndarray) and arr.dtype == np.float64 and arr.ndim == 2
                    and arr.shape == (n, width) and arr.flags.c_contiguous):
                raise ValueError(f"{name} must be a C-contiguous float64 array of shape "
                                 f"(n, {width}) with the same n for commands and sensors")
        _require_vector(previous, "previous", self.n_actuators)
        _require_dt(dt)
        out = np.empty_like(commands)
        actions = np.empty(n, dtype=np.int8)
        counts = np.zeros(self.n_slots, dtype=np.int64)
        self.kernel.check_batch(commands, previous, sensors, float(dt), out, actions, counts)
        return out, actions, counts

    def _check_args(self, command: F64, previous: F64, sensors: F64, dt: float) -> None:
        _require_vector(command, "command", self.n_actuators)
        _require_vector(previous, "previous", self.n_actuators)
        _require_vector(sensors, "sensors", self.n_sensors)
        _require_dt(dt)

    def names_of(self, viol: np.ndarray) -> tuple[str, ...]:
        """Constraint names flagged in a violation mask from :meth:`check_into`."""
        names = self.constraint_names
        return tuple([names[i] for i in np.flatnonzero(viol).tolist()])

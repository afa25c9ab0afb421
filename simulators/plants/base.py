"""What every simulated plant offers: its tags (as both protocols see them), its physics, and
the limits that say when the process is in danger.

A plant is pure and stepped: :meth:`Plant.step` advances the physics by ``dt_s`` seconds of
simulated time with the actuator values last set. It performs no I/O and reads no clock, so the
same plant runs in real time, accelerated or in lockstep with a drill. The servers that expose
it (``simulators.plant_server``) and the drill runner sit around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["Plant", "PlantTag", "ProcessLimit", "Substeps", "TagKind", "substeps"]


class TagKind(StrEnum):
    SENSOR = "sensor"        # published by the plant, read-only for clients
    ACTUATOR = "actuator"    # written by clients, applied by the plant at its next step
    HEARTBEAT = "heartbeat"  # written by the gateway every cycle; the PLC's watchdog reads it


@dataclass(frozen=True)
class PlantTag:
    """One tag of the plant's PLC, as Modbus and OPC UA clients see it.

    Modbus: ``modbus_table`` is ``input_register``, ``holding_register`` or ``coil``;
    ``modbus_type`` is ``float32`` (two registers, big-endian words), ``uint16``, ``uint32``
    (two registers, high word first) or ``bool`` (coils); the raw value times ``modbus_scale``
    is the engineering value. OPC UA: the variable ``ns=2;s=<opcua_name>`` of type
    ``opcua_type`` (``Double``, ``UInt32``, ``Int32`` or ``Boolean``) holds the engineering
    value itself.
    """

    name: str
    kind: TagKind
    unit: str
    modbus_table: str
    modbus_address: int
    modbus_type: str
    opcua_name: str
    opcua_type: str
    modbus_scale: float = 1.0


@dataclass(frozen=True)
class ProcessLimit:
    """A process variable's operating point, its safe range (a drill fails if a run with the
    gateway leaves it) and its physical danger limits (overflow, rupture, running dry)."""

    tag: str
    nominal: float
    safe_min: float
    safe_max: float
    danger_min: float
    danger_max: float

    def excursion(self, value: float) -> float:
        """How far ``value`` went from the operating point toward a danger limit, as a fraction
        of the way (0: at the operating point, 1: at the danger limit, > 1: beyond it)."""
        if value >= self.nominal:
            return (value - self.nominal) / (self.danger_max - self.nominal)
        return (self.nominal - value) / (self.nominal - self.danger_min)


class Plant(Protocol):
    """A simulated process. Implementations are deterministic for a given seed."""

    name: str
    tags: tuple[PlantTag, ...]
    limits: tuple[ProcessLimit, ...]

    def step(self, dt_s: float) -> None:
        """Advance the physics by ``dt_s`` > 0 seconds with the current actuator values."""

    def sensors(self) -> dict[str, float]:
        """What the instruments read now (true value plus measurement noise), by tag name."""

    def process(self) -> dict[str, float]:
        """The true process variables (no noise), by tag name of the limits' variables."""

    def actuators(self) -> dict[str, float]:
        """The actuator values the plant is applying, by tag name."""

    def set_actuator(self, name: str, value: float) -> None:
        """Apply ``value`` (engineering units) from the next step; clipped to what the
        hardware can do (a valve cannot open past 100 %)."""

    def set_disturbance(self, name: str, value: float) -> None:
        """Force a disturbance (e.g. the water tank's ``demand``) to ``value`` until cleared
        with NaN; KeyError for an unknown name."""


class Substeps(NamedTuple):
    """How one step is integrated: ``n`` equal substeps of ``h`` seconds, and the disturbance's
    Ornstein-Uhlenbeck update per substep (``x = x * decay + kick * kicks[k]``)."""

    n: int
    h: float
    decay: float
    kick: float
    kicks: npt.NDArray[np.float64]


def substeps(dt_s: float, max_step_s: float, tau_s: float, sigma: float,
             rng: np.random.Generator) -> Substeps:
    """Split ``dt_s`` into substeps of at most ``max_step_s`` and draw the disturbance's noise
    for them (an Ornstein-Uhlenbeck process of time constant ``tau_s`` and stationary standard
    deviation ``sigma``, exact for any substep). Raises ``ValueError`` unless ``dt_s`` is finite
    and > 0."""
    if not (math.isfinite(dt_s) and dt_s > 0.0):
        raise ValueError(f"`dt_s` must be finite and > 0, got {dt_s!r}")
    n = max(1, math.ceil(dt_s / max_step_s - 1e-9))
    h = dt_s / n
    decay = math.exp(-h / tau_s)
    return Substeps(n, h, decay, sigma * math.sqrt(1.0 - decay * decay),
                    rng.standard_normal(n))

"""An elevated water storage tank: one inflow valve on a pressurised supply, one outflow pump,
one drain valve, and consumers drawing from it.

Physics (SI units, level ``h`` in metres, flows in m3/s), integrated with explicit Euler steps of
at most :data:`SUBSTEP_S`::

    area * dh/dt = inflow - pumped - drained - consumed
    inflow   = 0.05 * valve/100 * sqrt((25 - h) / 25)    supply head 25 m above the tank floor
    pumped   = 0.05 * pump/100        while h > 0.05 m    (below it the pump loses suction)
    drained  = 0.01 * sqrt(h / 2.5)   while the drain valve is open
    consumed = demand                 while the tank holds water

The level is clipped to ``[0, 5]``: water above 5 m spills over the rim (the overflow the
safety envelope exists to prevent). ``demand`` is the consumers' draw: a smooth, bounded,
seeded disturbance (a compressed "day" of :data:`DEMAND_PERIOD_S` plus an Ornstein-Uhlenbeck
term), always within ``[0.001, 0.009]`` m3/s unless a drill forces it with
:meth:`WaterTank.set_disturbance`.

With the nominal pump speed (30 %) and demand (0.004 m3/s), the level holds at 2.5 m with the
inflow valve at :data:`WATER_TANK_STEADY_STATE` ``["inflow_valve"]`` (about 40.06 %).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from simulators.plants.base import PlantTag, ProcessLimit, TagKind, substeps

__all__ = [
    "DEMAND_MAX_M3_S",
    "DEMAND_MIN_M3_S",
    "DEMAND_PERIOD_S",
    "NOMINAL_DEMAND_M3_S",
    "NOMINAL_LEVEL_M",
    "NOMINAL_PUMP_PCT",
    "SUBSTEP_S",
    "TANK_AREA_M2",
    "TANK_HEIGHT_M",
    "WATER_TANK_LIMITS",
    "WATER_TANK_STEADY_STATE",
    "WATER_TANK_TAGS",
    "WaterTank",
    "inflow_m3_s",
]

TANK_AREA_M2: Final = 5.0
TANK_HEIGHT_M: Final = 5.0
SUPPLY_HEAD_M: Final = 25.0
INFLOW_MAX_M3_S: Final = 0.05     # valve fully open, tank empty
PUMP_MAX_M3_S: Final = 0.05       # pump at 100 %
PUMP_DRY_LEVEL_M: Final = 0.05    # the pump loses suction below this level
DRAIN_M3_S_AT_NOMINAL: Final = 0.01
NOMINAL_LEVEL_M: Final = 2.5
NOMINAL_PUMP_PCT: Final = 30.0    # the site's fallback keeps the pump here
NOMINAL_DEMAND_M3_S: Final = 0.004
DEMAND_MIN_M3_S: Final = 0.001
DEMAND_MAX_M3_S: Final = 0.009
DEMAND_PERIOD_S: Final = 1200.0   # a compressed "day", so that a drill sees the pattern move
DEMAND_DAILY_M3_S: Final = 0.0015  # amplitude of the daily pattern
DEMAND_HALF_DAY_M3_S: Final = 0.0004
DEMAND_OU_SIGMA_M3_S: Final = 0.0003  # stationary standard deviation of the random part
DEMAND_OU_TAU_S: Final = 60.0
SUBSTEP_S: Final = 0.05

# Measurement noise (one standard deviation), drawn once per step.
LEVEL_NOISE_M: Final = 0.002
INFLOW_NOISE_M3_S: Final = 0.0002
DEMAND_NOISE_M3_S: Final = 0.00003


def inflow_m3_s(valve_pct: float, level_m: float) -> float:
    """Flow through the inflow valve (m3/s) at ``valve_pct`` % open and tank level ``level_m``:
    the supply's 25 m head minus the level drives it."""
    head = max(SUPPLY_HEAD_M - level_m, 0.0)
    return INFLOW_MAX_M3_S * valve_pct / 100.0 * math.sqrt(head / SUPPLY_HEAD_M)


WATER_TANK_STEADY_STATE: Final[dict[str, float]] = {
    # Inflow balances the pump and the consumers at the nominal level.
    "inflow_valve": 100.0 * (PUMP_MAX_M3_S * NOMINAL_PUMP_PCT / 100.0 + NOMINAL_DEMAND_M3_S)
    / inflow_m3_s(100.0, NOMINAL_LEVEL_M),
    "outflow_pump": NOMINAL_PUMP_PCT,
    "drain_valve": 0.0,
}
"""Actuator values that hold the level at 2.5 m under the nominal demand (0.004 m3/s)."""

_S, _A, _H = TagKind.SENSOR, TagKind.ACTUATOR, TagKind.HEARTBEAT
_IR, _HR, _CO = "input_register", "holding_register", "coil"
WATER_TANK_TAGS: Final[tuple[PlantTag, ...]] = (
    PlantTag("level", _S, "m", _IR, 0, "float32", "Tank.Level", "Double"),
    PlantTag("inflow_rate", _S, "m3/s", _IR, 2, "uint16", "Tank.InflowRate", "Double", 0.001),
    PlantTag("demand", _S, "m3/s", _IR, 3, "uint16", "Tank.Demand", "Double", 0.0001),
    PlantTag("uptime_s", _S, "s", _IR, 4, "uint32", "Tank.Uptime", "UInt32", 1.0),
    PlantTag("inflow_valve", _A, "%", _HR, 0, "uint16", "Tank.InflowValve", "Double", 0.01),
    PlantTag("outflow_pump", _A, "%", _HR, 1, "uint16", "Tank.OutflowPump", "Double", 0.01),
    PlantTag("drain_valve", _A, "open", _CO, 0, "bool", "Tank.DrainValve", "Boolean"),
    PlantTag("heartbeat", _H, "", _HR, 100, "uint16", "Tank.Heartbeat", "UInt32"),
)

WATER_TANK_LIMITS: Final[tuple[ProcessLimit, ...]] = (
    ProcessLimit("level", nominal=NOMINAL_LEVEL_M, safe_min=0.2, safe_max=4.8,
                 danger_min=0.0, danger_max=TANK_HEIGHT_M),
)


class WaterTank:
    """The tank, stepped by the caller (see :class:`simulators.plants.base.Plant`).

    ``seed`` fixes the random part of the demand and the measurement noise; two tanks built with
    the same arguments and stepped with the same calls give identical readings. Keyword
    arguments set the initial state (default: the nominal steady state): ``level`` (m, clipped to
    ``[0, 5]``), ``uptime_s`` (the PLC's uptime counter, s), and the actuators ``inflow_valve``,
    ``outflow_pump`` (%), ``drain_valve`` (0/1). Raises ``ValueError`` for a non-finite value
    or a negative uptime.
    """

    name: str = "water_tank"
    tags: tuple[PlantTag, ...] = WATER_TANK_TAGS
    limits: tuple[ProcessLimit, ...] = WATER_TANK_LIMITS

    def __init__(
        self,
        seed: int = 0,
        *,
        level: float = NOMINAL_LEVEL_M,
        uptime_s: float = 0.0,
        inflow_valve: float = WATER_TANK_STEADY_STATE["inflow_valve"],
        outflow_pump: float = WATER_TANK_STEADY_STATE["outflow_pump"],
        drain_valve: float = WATER_TANK_STEADY_STATE["drain_valve"],
    ) -> None:
        for key, value in (("level", level), ("uptime_s", uptime_s)):
            if not math.isfinite(value):
                raise ValueError(f"`{key}` must be finite, got {value!r}")
        if uptime_s < 0.0:
            raise ValueError(f"`uptime_s` must be >= 0, got {uptime_s!r}")
        # Separate streams: the process disturbance does not depend on how often anyone reads.
        self._process_rng = np.random.default_rng([seed, 1])
        self._noise_rng = np.random.default_rng([seed, 2])
        self._level = min(max(float(level), 0.0), TANK_HEIGHT_M)
        self._time_s = 0.0
        self._uptime_s = float(uptime_s)
        self._demand_ou = 0.0
        self._forced_demand = math.nan
        self._valve = 0.0
        self._pump = 0.0
        self._drain = 0.0
        self.set_actuator("inflow_valve", inflow_valve)
        self.set_actuator("outflow_pump", outflow_pump)
        self.set_actuator("drain_valve", drain_valve)
        self._readings: dict[str, float] = {}
        self._demand_noise = 0.0
        self._measure()

    # -- Plant protocol -------------------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        """Advance by ``dt_s`` seconds in equal substeps of at most :data:`SUBSTEP_S`.
        Raises ``ValueError`` unless ``dt_s`` is finite and > 0."""
        n, h, decay, kick, kicks = substeps(dt_s, SUBSTEP_S, DEMAND_OU_TAU_S, DEMAND_OU_SIGMA_M3_S,
                                           self._process_rng)
        for k in range(n):
            level = self._level
            rate = (self._inflow(level) - self._pumped(level) - self._drained(level)
                    - self._consumed(level)) / TANK_AREA_M2
            self._level = min(max(level + h * rate, 0.0), TANK_HEIGHT_M)
            self._demand_ou = self._demand_ou * decay + kick * float(kicks[k])
            self._time_s += h
        self._uptime_s += dt_s
        self._measure()

    def sensors(self) -> dict[str, float]:
        """Readings as the PLC publishes them: ``level`` (m), ``inflow_rate`` and ``demand``
        (m3/s), with measurement noise drawn at the last step; ``uptime_s``, whole seconds."""
        return dict(self._readings)

    def process(self) -> dict[str, float]:
        """The true level (m), no noise."""
        return {"level": self._level}

    def actuators(self) -> dict[str, float]:
        return {"inflow_valve": self._valve, "outflow_pump": self._pump,
                "drain_valve": self._drain}

    def set_actuator(self, name: str, value: float) -> None:
        """Valves and pump are clipped to ``[0, 100]`` %; the drain valve is open for a value
        >= 0.5. KeyError for an unknown actuator; ValueError for a non-finite value (the PLC
        refuses it and keeps the previous one)."""
        if name not in ("inflow_valve", "outflow_pump", "drain_valve"):
            raise KeyError(name)
        if not math.isfinite(value):
            raise ValueError(f"{name}: value must be finite, got {value!r}")
        if name == "inflow_valve":
            self._valve = min(max(float(value), 0.0), 100.0)
        elif name == "outflow_pump":
            self._pump = min(max(float(value), 0.0), 100.0)
        else:
            self._drain = 1.0 if value >= 0.5 else 0.0

    def set_disturbance(self, name: str, value: float) -> None:
        """``demand``: force the consumers' draw to ``value`` m3/s (clipped to >= 0) until
        cleared with NaN, which resumes the daily pattern. KeyError for any other name."""
        if name != "demand":
            raise KeyError(name)
        self._forced_demand = math.nan if math.isnan(value) else max(float(value), 0.0)
        self._measure_demand_only()

    # -- extras ---------------------------------------------------------------------------------

    @property
    def time_s(self) -> float:
        """Simulated seconds since construction."""
        return self._time_s

    def demand_m3_s(self) -> float:
        """The consumers' draw requested now (m3/s), forced or not."""
        if not math.isnan(self._forced_demand):
            return self._forced_demand
        omega = 2.0 * math.pi / DEMAND_PERIOD_S
        t = self._time_s
        pattern = (NOMINAL_DEMAND_M3_S + DEMAND_DAILY_M3_S * math.sin(omega * t)
                   + DEMAND_HALF_DAY_M3_S * math.sin(2.0 * omega * t))
        return min(max(pattern + self._demand_ou, DEMAND_MIN_M3_S), DEMAND_MAX_M3_S)

    # -- internals ------------------------------------------------------------------------------

    def _inflow(self, level: float) -> float:
        return inflow_m3_s(self._valve, level)

    def _pumped(self, level: float) -> float:
        return PUMP_MAX_M3_S * self._pump / 100.0 if level > PUMP_DRY_LEVEL_M else 0.0

    def _drained(self, level: float) -> float:
        if self._drain < 0.5 or level <= 0.0:
            return 0.0
        return DRAIN_M3_S_AT_NOMINAL * math.sqrt(level / NOMINAL_LEVEL_M)

    def _consumed(self, level: float) -> float:
        return self.demand_m3_s() if level > 0.0 else 0.0

    def _measure(self) -> None:
        noise = self._noise_rng.standard_normal(3)
        self._readings = {
            "level": self._level + LEVEL_NOISE_M * float(noise[0]),
            "inflow_rate": max(self._inflow(self._level) + INFLOW_NOISE_M3_S * float(noise[1]),
                               0.0),
            "demand": max(self.demand_m3_s() + DEMAND_NOISE_M3_S * float(noise[2]), 0.0),
            "uptime_s": float(math.floor(self._uptime_s)),
        }
        self._demand_noise = float(noise[2])

    def _measure_demand_only(self) -> None:
        # A forced demand shows at once (same noise sample), without drawing new noise.
        self._readings["demand"] = max(
            self.demand_m3_s() + DEMAND_NOISE_M3_S * self._demand_noise, 0.0)

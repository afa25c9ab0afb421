"""An electrically heated steam boiler (pressure vessel, design pressure 16 bar).

A lumped model: the water and steel of the vessel form one heat capacity at the saturation
temperature ``T`` (degC) of the steam above the water; the pressure ``p`` (bar, absolute)
follows the saturation pressure of ``T`` with a short lag. Energy balance, integrated with
explicit Euler steps of at most :data:`SUBSTEP_S`::

    C * dT/dt = heater/100 * 625 kW + stage * 125 kW       electric elements
                - 1.04 kW/K * (T - 20)                        losses to the 20 degC room
                - 2600 kJ/kg * (load + vented)                steam leaving (latent heat plus
                                                              reheating its make-up water)
    dp/dt     = (p_sat(T) - p) / 2 s,   p never below 1.01325 bar (the vacuum breaker)
    vented    = 0.0625 kg/(s bar) * relief/100 * sqrt(p * (p - 1.01325))   (0 below 1 atm)

``C`` is 1800 kJ/K; ``p_sat`` is the saturation line of IAPWS-IF97 (region 4), so the pressure
is a steep, nonlinear function of temperature (0.19 bar/K at 8 bar, 0.33 bar/K at 16 bar).
``load`` is the process's steam draw (kg/s): a smooth, bounded, seeded disturbance around
0.02 kg/s (always within ``[0.01, 0.03]`` unless forced), delivered only while there is
pressure to push it (full above 2 bar absolute).

The vessel has a **vacuum breaker**, as every steam boiler that is not rated for full vacuum
must: once the steam in a cooling boiler condenses below 100 degC its saturation pressure falls
under the atmosphere's, and the breaker admits air so that the vessel stays at atmospheric
pressure instead of collapsing (the automatic air vent lets the air out again as steam forms on
reheating, so the pressure follows ``p_sat`` again once it exceeds 1 atm). Without it, every
shutdown, the textbook safe state of a boiler (heat off, vent open), would pull a vacuum within
minutes and count as leaving the safe range.

Behaviour this gives (checked by the tests): at the nominal point (8 bar, 170.4 degC, heater
about 33.3 %) the boiler is at rest; heater at 100 % with the relief valve closed passes 16 bar
after about 2.5 minutes; the relief valve fully open brings the pressure down even with the
heater on; with the heater off the boiler cools slowly (about -0.02 bar/s at 8 bar).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from simulators.plants.base import PlantTag, ProcessLimit, TagKind, substeps

__all__ = [
    "AMBIENT_C",
    "BOILER_LIMITS",
    "BOILER_STEADY_STATE",
    "BOILER_TAGS",
    "HEATER_KW",
    "HEAT_CAPACITY_KJ_PER_K",
    "LOAD_MAX_KG_S",
    "LOAD_MIN_KG_S",
    "LOSS_KW_PER_K",
    "NOMINAL_LOAD_KG_S",
    "NOMINAL_PRESSURE_BAR",
    "NOMINAL_TEMPERATURE_C",
    "STAGE_KW",
    "STEAM_KJ_PER_KG",
    "SUBSTEP_S",
    "Boiler",
    "saturation_pressure_bar",
    "saturation_temperature_c",
    "steam_load_delivered_kg_s",
    "vented_kg_s",
]

HEAT_CAPACITY_KJ_PER_K: Final = 1800.0
HEATER_KW: Final = 625.0           # the modulating element at 100 %
STAGE_KW: Final = 125.0            # each of the three switched element banks
LOSS_KW_PER_K: Final = 1.04        # insulation losses to the room
AMBIENT_C: Final = 20.0
STEAM_KJ_PER_KG: Final = 2600.0
RELIEF_KG_S_PER_BAR: Final = 0.0625  # relief valve fully open
ATMOSPHERE_BAR: Final = 1.01325
PRESSURE_LAG_S: Final = 2.0
NOMINAL_PRESSURE_BAR: Final = 8.0
NOMINAL_LOAD_KG_S: Final = 0.02
LOAD_MIN_KG_S: Final = 0.01
LOAD_MAX_KG_S: Final = 0.03
LOAD_PERIOD_S: Final = 1200.0      # a compressed "day", as the water tank's demand
LOAD_DAILY_KG_S: Final = 0.004
LOAD_HALF_DAY_KG_S: Final = 0.001
LOAD_OU_SIGMA_KG_S: Final = 0.001
LOAD_OU_TAU_S: Final = 60.0
LOAD_FULL_ABOVE_BAR: Final = 2.0
SUBSTEP_S: Final = 0.05

PRESSURE_NOISE_BAR: Final = 0.01
TEMPERATURE_NOISE_C: Final = 0.05

# IAPWS-IF97 region 4 (saturation line) coefficients n1..n10; T in K, p in MPa.
_N: Final = (0.11670521452767e4, -0.72421316703206e6, -0.17073846940092e2,
             0.12020824702470e5, -0.32325550322333e7, 0.14915108613530e2,
             -0.48232657361591e4, 0.40511340542057e6, -0.23855557567849,
             0.65017534844798e3)


def saturation_pressure_bar(temperature_c: float) -> float:
    """Saturation pressure of water (bar, absolute) at ``temperature_c`` (IAPWS-IF97 eq. 30).
    Valid from 0 to 373.9 degC; the temperature is clipped to that range."""
    n1, n2, n3, n4, n5, n6, n7, n8, n9, n10 = _N
    t = min(max(temperature_c, 0.0), 373.9) + 273.15
    theta = t + n9 / (t - n10)
    a = theta * theta + n1 * theta + n2
    b = n3 * theta * theta + n4 * theta + n5
    c = n6 * theta * theta + n7 * theta + n8
    root = 2.0 * c / (-b + math.sqrt(b * b - 4.0 * a * c))
    square = root * root
    return square * square * 10.0


def saturation_temperature_c(pressure_bar: float) -> float:
    """Saturation temperature (degC) at ``pressure_bar`` absolute (IAPWS-IF97 eq. 31).
    Valid from 0.0062 to 220 bar; the pressure is clipped to that range."""
    n1, n2, n3, n4, n5, n6, n7, n8, n9, n10 = _N
    beta = math.sqrt(math.sqrt(min(max(pressure_bar, 0.00612), 220.6) / 10.0))
    e = beta * beta + n3 * beta + n6
    f = n1 * beta * beta + n4 * beta + n7
    g = n2 * beta * beta + n5 * beta + n8
    d = 2.0 * g / (-f - math.sqrt(f * f - 4.0 * e * g))
    kelvin = (n10 + d - math.sqrt((n10 + d) * (n10 + d) - 4.0 * (n9 + n10 * d))) / 2.0
    return kelvin - 273.15


def vented_kg_s(relief_pct: float, pressure_bar: float) -> float:
    """Steam flow out of the relief valve (kg/s); none at or below atmospheric pressure."""
    if pressure_bar <= ATMOSPHERE_BAR:
        return 0.0
    return (RELIEF_KG_S_PER_BAR * relief_pct / 100.0
            * math.sqrt(pressure_bar * (pressure_bar - ATMOSPHERE_BAR)))


def steam_load_delivered_kg_s(load_kg_s: float, pressure_bar: float) -> float:
    """The part of the requested steam draw the boiler delivers at ``pressure_bar``."""
    push = (pressure_bar - ATMOSPHERE_BAR) / (LOAD_FULL_ABOVE_BAR - ATMOSPHERE_BAR)
    return load_kg_s * min(max(push, 0.0), 1.0)


NOMINAL_TEMPERATURE_C: Final = saturation_temperature_c(NOMINAL_PRESSURE_BAR)

BOILER_STEADY_STATE: Final[dict[str, float]] = {
    # The heater covers the losses and the nominal steam load at 8 bar.
    "heater": 100.0 * (LOSS_KW_PER_K * (NOMINAL_TEMPERATURE_C - AMBIENT_C)
                       + STEAM_KJ_PER_KG * NOMINAL_LOAD_KG_S) / HEATER_KW,
    "relief_valve": 0.0,
    "burner_stage": 0.0,
}
"""Actuator values that hold 8 bar under the nominal steam load (0.02 kg/s)."""

_S, _A, _H = TagKind.SENSOR, TagKind.ACTUATOR, TagKind.HEARTBEAT
_IR, _HR = "input_register", "holding_register"
BOILER_TAGS: Final[tuple[PlantTag, ...]] = (
    PlantTag("pressure", _S, "bar", _IR, 0, "float32", "Boiler.Pressure", "Double"),
    PlantTag("temperature", _S, "degC", _IR, 2, "float32", "Boiler.Temperature", "Double"),
    PlantTag("uptime_s", _S, "s", _IR, 4, "uint32", "Boiler.Uptime", "UInt32"),
    PlantTag("heater", _A, "%", _HR, 0, "float32", "Boiler.Heater", "Double"),
    PlantTag("relief_valve", _A, "%", _HR, 2, "float32", "Boiler.ReliefValve", "Double"),
    PlantTag("burner_stage", _A, "stage", _HR, 4, "uint16", "Boiler.Stage", "Int32"),
    PlantTag("heartbeat", _H, "", _HR, 100, "uint16", "Boiler.Heartbeat", "UInt32"),
)

BOILER_LIMITS: Final[tuple[ProcessLimit, ...]] = (
    # Below 1 bar absolute the vessel would be under vacuum and delivers no steam (the vacuum
    # breaker keeps it at 1.01325 bar; falling below 1 bar means the model or the breaker
    # failed); 16 bar is the design pressure, above which it may rupture.
    ProcessLimit("pressure", nominal=NOMINAL_PRESSURE_BAR, safe_min=1.0, safe_max=15.0,
                 danger_min=0.0, danger_max=16.0),
)


class Boiler:
    """The boiler, stepped by the caller (see :class:`simulators.plants.base.Plant`).

    ``seed`` fixes the random part of the steam load and the measurement noise. Keyword
    arguments set the initial state (default: the nominal steady state): ``pressure`` (bar
    absolute; the temperature starts at its saturation temperature), ``uptime_s`` (s), and the
    actuators ``heater``, ``relief_valve`` (%) and ``burner_stage`` (0..3). Raises
    ``ValueError`` for a non-finite value, a pressure outside ``(0, 200]`` or a negative uptime.
    """

    name: str = "boiler"
    tags: tuple[PlantTag, ...] = BOILER_TAGS
    limits: tuple[ProcessLimit, ...] = BOILER_LIMITS

    def __init__(
        self,
        seed: int = 0,
        *,
        pressure: float = NOMINAL_PRESSURE_BAR,
        uptime_s: float = 0.0,
        heater: float = BOILER_STEADY_STATE["heater"],
        relief_valve: float = BOILER_STEADY_STATE["relief_valve"],
        burner_stage: float = BOILER_STEADY_STATE["burner_stage"],
    ) -> None:
        for key, value in (("pressure", pressure), ("uptime_s", uptime_s)):
            if not math.isfinite(value):
                raise ValueError(f"`{key}` must be finite, got {value!r}")
        if not 0.0 < pressure <= 200.0:
            raise ValueError(f"`pressure` must be in (0, 200] bar, got {pressure!r}")
        if uptime_s < 0.0:
            raise ValueError(f"`uptime_s` must be >= 0, got {uptime_s!r}")
        self._process_rng = np.random.default_rng([seed, 1])
        self._noise_rng = np.random.default_rng([seed, 2])
        self._pressure = float(pressure)
        self._temperature = saturation_temperature_c(self._pressure)
        self._time_s = 0.0
        self._uptime_s = float(uptime_s)
        self._load_ou = 0.0
        self._forced_load = math.nan
        self._forced_reading = math.nan
        self._heater = 0.0
        self._relief = 0.0
        self._stage = 0.0
        self.set_actuator("heater", heater)
        self.set_actuator("relief_valve", relief_valve)
        self.set_actuator("burner_stage", burner_stage)
        self._readings: dict[str, float] = {}
        self._temperature_noise = 0.0
        self._measure()

    # -- Plant protocol -------------------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        """Advance by ``dt_s`` seconds in equal substeps of at most :data:`SUBSTEP_S`.
        Raises ``ValueError`` unless ``dt_s`` is finite and > 0."""
        n, h, decay, kick, kicks = substeps(dt_s, SUBSTEP_S, LOAD_OU_TAU_S, LOAD_OU_SIGMA_KG_S,
                                           self._process_rng)
        heat_kw = HEATER_KW * self._heater / 100.0 + STAGE_KW * self._stage
        for k in range(n):
            t = self._temperature
            p = self._pressure
            steam = steam_load_delivered_kg_s(self.load_kg_s(), p) + vented_kg_s(self._relief, p)
            power = heat_kw - LOSS_KW_PER_K * (t - AMBIENT_C) - STEAM_KJ_PER_KG * steam
            self._temperature = t + h * power / HEAT_CAPACITY_KJ_PER_K
            # The vacuum breaker holds the vessel at atmospheric pressure at least.
            self._pressure = max(p + h * (saturation_pressure_bar(t) - p) / PRESSURE_LAG_S,
                                 ATMOSPHERE_BAR)
            self._load_ou = self._load_ou * decay + kick * float(kicks[k])
            self._time_s += h
        self._uptime_s += dt_s
        self._measure()

    def sensors(self) -> dict[str, float]:
        """Readings as the PLC publishes them: ``pressure`` (bar absolute), ``temperature``
        (degC) with measurement noise drawn at the last step (the temperature transmitter's
        forced value while a drill spoofs it), ``uptime_s`` in whole seconds."""
        return dict(self._readings)

    def process(self) -> dict[str, float]:
        """The true pressure (bar absolute) and temperature (degC), no noise."""
        return {"pressure": self._pressure, "temperature": self._temperature}

    def actuators(self) -> dict[str, float]:
        return {"heater": self._heater, "relief_valve": self._relief,
                "burner_stage": self._stage}

    def set_actuator(self, name: str, value: float) -> None:
        """Heater and relief valve are clipped to ``[0, 100]`` %; the stage is rounded to the
        nearest of 0..3. KeyError for an unknown actuator; ValueError for a non-finite value
        (the controller refuses it and keeps the previous one)."""
        if name not in ("heater", "relief_valve", "burner_stage"):
            raise KeyError(name)
        if not math.isfinite(value):
            raise ValueError(f"{name}: value must be finite, got {value!r}")
        if name == "heater":
            self._heater = min(max(float(value), 0.0), 100.0)
        elif name == "relief_valve":
            self._relief = min(max(float(value), 0.0), 100.0)
        else:
            self._stage = float(min(max(round(value), 0), 3))

    def set_disturbance(self, name: str, value: float) -> None:
        """Force a disturbance until cleared with NaN. KeyError for any other name.

        - ``load``: the process's steam draw, kg/s (clipped to >= 0);
        - ``temperature``: the temperature *transmitter* reads ``value`` degC (plus its usual
          noise) instead of the process temperature, which is unaffected: a stuck or spoofed
          transmitter, as someone with access to the field bus can produce.
        """
        if name == "load":
            self._forced_load = math.nan if math.isnan(value) else max(float(value), 0.0)
        elif name == "temperature":
            self._forced_reading = math.nan if math.isnan(value) else float(value)
            self._readings["temperature"] = self._temperature_reading()
        else:
            raise KeyError(name)

    # -- extras ---------------------------------------------------------------------------------

    @property
    def time_s(self) -> float:
        """Simulated seconds since construction."""
        return self._time_s

    def load_kg_s(self) -> float:
        """The steam draw requested now (kg/s), forced or not."""
        if not math.isnan(self._forced_load):
            return self._forced_load
        omega = 2.0 * math.pi / LOAD_PERIOD_S
        t = self._time_s
        pattern = (NOMINAL_LOAD_KG_S + LOAD_DAILY_KG_S * math.sin(omega * t)
                   + LOAD_HALF_DAY_KG_S * math.sin(2.0 * omega * t))
        return min(max(pattern + self._load_ou, LOAD_MIN_KG_S), LOAD_MAX_KG_S)

    # -- internals ------------------------------------------------------------------------------

    def _temperature_reading(self) -> float:
        base = self._temperature if math.isnan(self._forced_reading) else self._forced_reading
        return base + TEMPERATURE_NOISE_C * self._temperature_noise

    def _measure(self) -> None:
        noise = self._noise_rng.standard_normal(2)
        self._temperature_noise = float(noise[1])
        self._readings = {
            "pressure": self._pressure + PRESSURE_NOISE_BAR * float(noise[0]),
            "temperature": self._temperature_reading(),
            "uptime_s": float(math.floor(self._uptime_s)),
        }

"""Simulated plants: pure, stepped physics behind the :class:`~simulators.plants.base.Plant`
protocol (no I/O, no clock). :data:`PLANTS` maps each plant's name to its class."""

from __future__ import annotations

from typing import Final

from simulators.plants.base import Plant, PlantTag, ProcessLimit, TagKind
from simulators.plants.boiler import BOILER_STEADY_STATE, Boiler
from simulators.plants.water_tank import WATER_TANK_STEADY_STATE, WaterTank

__all__ = [
    "BOILER_STEADY_STATE",
    "PLANTS",
    "STEADY_STATE",
    "WATER_TANK_STEADY_STATE",
    "Boiler",
    "Plant",
    "PlantTag",
    "ProcessLimit",
    "TagKind",
    "WaterTank",
    "make_plant",
]

PLANTS: Final[dict[str, type[WaterTank] | type[Boiler]]] = {
    WaterTank.name: WaterTank,
    Boiler.name: Boiler,
}

STEADY_STATE: Final[dict[str, dict[str, float]]] = {
    WaterTank.name: WATER_TANK_STEADY_STATE,
    Boiler.name: BOILER_STEADY_STATE,
}
"""Per plant: the actuator values that hold its nominal operating point."""


def make_plant(name: str, seed: int = 0, **initial: float) -> Plant:
    """Build the plant called ``name`` (KeyError if unknown) with ``seed`` and initial state
    keywords (TypeError for one the plant does not take)."""
    plant: Plant = PLANTS[name](seed, **initial)
    return plant

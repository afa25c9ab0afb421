"""A team's own model, as the drills' example of one: not a zoo model, built here with the
zoo's graph builders so that its bytes (and the sha256 the example scenario pins) can be
rebuilt and checked.

``water_tank_linear``: a linear law read off the tank's expert around its operating point,
``inflow_valve = 180 - 60 * level + 2100 * demand`` (%, level in m, demand in m3/s) and
``outflow_pump = 30`` (%); raw engineering units in and out (no normalisation). It regulates the
level near 2.5 m; outside its range the envelope clamps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from simulators.zoo import graphs

__all__ = ["WATER_TANK_LINEAR", "WATER_TANK_LINEAR_PATH", "water_tank_linear"]

WATER_TANK_LINEAR: Final = {"inputs": ("level", "demand"),
                            "outputs": ("inflow_valve", "outflow_pump")}
WATER_TANK_LINEAR_PATH: Final = (Path(__file__).resolve().parents[2] / "configs" / "drills"
                                 / "models" / "water_tank_linear.onnx")


def water_tank_linear() -> bytes:
    """The model's ONNX bytes (the same on every call)."""
    model = graphs.linear([[-60.0, 0.0], [2100.0, 0.0]], [180.0, 30.0])
    return graphs.serialize(model)


if __name__ == "__main__":  # python -m simulators.zoo.own: rewrite the committed file
    WATER_TANK_LINEAR_PATH.write_bytes(water_tank_linear())
    print(WATER_TANK_LINEAR_PATH, graphs.sha256_hex(water_tank_linear()))

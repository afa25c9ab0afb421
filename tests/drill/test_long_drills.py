"""Long drills: each fault held for 25 simulated minutes on both plants, and the process must
stay inside its safe range.

The short drills (120 s) end long before a safe state that drains the tank shows it: the water
tank's SAFE_STOP once ran the tank dry about 13 minutes after a frozen level tripped it. Here
the same scenarios run with ``--duration-s`` (the ``long_cards`` fixture in conftest.py) so that
25 minutes follow the injection at 60 s: a frozen sensor and a silent AI are never lifted; after
a 20 s PLC disconnect the trip's latched SAFE_STOP is held (nobody resets it), so the safe
state itself must hold the process.
"""

from __future__ import annotations

import pytest

from simulators.drill.cli import find_scenario
from simulators.drill.scenario import load_scenario
from tests.drill.conftest import HELD_S, INJECTED_AT_S, LONG


def test_the_long_drills_cover_each_fault_on_both_plants():
    kinds = set()
    for name in LONG:
        path = find_scenario(name)
        assert path is not None, name
        sc = load_scenario(path)
        (inj,) = sc.injections
        assert inj.at_s == INJECTED_AT_S
        kinds.add((sc.plant, inj.kind.value))
    assert kinds == {(plant, kind) for plant in ("water_tank", "boiler")
                     for kind in ("sensor_freeze", "plc_disconnect", "ai_silent")}


@pytest.mark.parametrize("name", LONG)
def test_the_process_stays_in_its_safe_range_for_25_minutes(long_cards, name):
    card = long_cards[name]
    assert card["duration_s"] - card["injected_at_s"] >= HELD_S
    assert card["detected"], card["reasons"]
    assert card["writes_checked"] > 1000  # the plant's record covers the whole run
    assert card["unsafe_writes"] == 0, (card["unsafe_by_constraint"], card["unsafe_examples"])
    assert not card["left_safe_range"], card["reasons"]
    assert card["false_trips"] == 0, card["first_trip"]
    assert card["passed"], card["reasons"]

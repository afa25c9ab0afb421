"""prove: history replayed offline through the live envelope and input detectors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import yaml

from gateway.commissioning.learn import LearnOptions, learn
from gateway.commissioning.prove import prove
from gateway.commissioning.sources import History, read_csv
from gateway.commissioning.writer import write_site
from gateway.config import load_config
from tests.commissioning.conftest import WATER

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Site


def learned_site(tmp_path: Path, site: Site, history: History,
                 holdout: float = 0.0) -> Site:
    out = tmp_path / "learned.yaml"
    write_site(learn(site, history, LearnOptions(holdout=holdout)),
               yaml.safe_load(WATER.read_text()), out)
    return load_config(out)


def test_a_learned_envelope_never_trips_on_its_own_history(tmp_path: Path, water_site: Site,
                                                           water_day: Path,
                                                           engine: str) -> None:
    history = read_csv(water_day)
    result = prove(learned_site(tmp_path, water_site, history), history, engine=engine)
    assert result.n_commands == history.n_samples - 1  # every command but the first
    assert result.trips == 0
    assert result.count("reject") == 0
    assert result.json()["passed"] is True


def test_a_held_back_part_shows_how_it_generalises(tmp_path: Path, water_site: Site,
                                                   water_day: Path) -> None:
    history = read_csv(water_day)
    site = learned_site(tmp_path, water_site, history, holdout=0.5)
    seen, held = history.split(0.5)
    on_seen = prove(site, seen)
    on_held = prove(site, held, "held back")
    assert on_seen.trips == 0
    # Judged on its own, with its own first command unjudged.
    assert on_held.n_commands == held.n_samples - 1
    assert on_held.label == "held back"
    assert on_held.t_first_s == held.time_s[0]


def edited(history: History, **cells: list[tuple[int, float]]) -> History:
    values = history.values.copy()
    for name, changes in cells.items():
        for row, value in changes:
            values[row, history.names.index(name)] = value
    return History(history.time_s, history.names, values, history.sources)


def test_a_spoofed_reading_and_an_interlock_breach_trip_with_their_times(
        water_site: Site, water_day: Path, engine: str) -> None:
    history = read_csv(water_day)
    # At row 1000 the level reads 0.25 m, a jump from about 2.5 m within one second.
    forged = edited(history, level=[(1000, 0.25)])
    result = prove(water_site, forged, engine=engine)
    at = float(history.time_s[1000])
    rate = result.tallies["input.rate.level"]
    assert (rate.kind, rate.action, rate.first_s) == ("detector", "trip", at)
    # The distrusted reading is NaN for the envelope, as in the supervisor, and NaN makes
    # every condition on it hold (fail safe): both level interlocks and the constraints on
    # the level are violated by the pump's and the valve's commands at that moment.
    assert {(t.name, t.action, t.first_s, t.count) for t in result.tallies.values()} == {
        ("input.rate.level", "trip", at, 1), ("low_level_stops_pump", "trip", at, 1),
        ("high_level_closes_inflow", "clamp", at, 1), ("pump_dry_run", "reject", at, 1),
        ("predict.level", "reject", at, 1)}
    assert result.trips == 2
    assert prove(water_site, history, engine=engine).trips == 0


def test_a_clamped_command_reports_how_far_it_was_moved(water_site: Site, water_day: Path,
                                                        engine: str) -> None:
    history = read_csv(water_day)
    col = history.names.index("inflow_valve")
    before = float(history.values[1999, col])
    # A 30 % jump in one second: the hand-written step limit (10 per write) clamps it by 20.
    forged = edited(history, inflow_valve=[(2000, before + 30.0)])
    result = prove(water_site, forged, engine=engine)
    step = result.tallies["inflow_valve.step"]
    assert step.action == "clamp" and step.kind == "constraint"
    # Only the jump up: the move back down the row after heads for the safe state (closed,
    # the level being above 0.8 m), and such moves are never rate limited.
    assert step.count == 1
    at, moved, detail = step.worst[0]
    assert at == float(history.time_s[2000])
    assert moved == pytest.approx(20.0, abs=1e-9)
    assert f"inflow_valve={before + 30.0:.6g}" in detail
    assert result.trips == 0


def test_a_gap_in_the_readings_is_stale(water_site: Site, water_day: Path) -> None:
    history = read_csv(water_day)
    # Three missing seconds of level: the last reading ages past stale_after_ms (2 s).
    forged = edited(history, level=[(500, np.nan), (501, np.nan), (502, np.nan)])
    result = prove(water_site, forged)
    stale = result.tallies["input.stale.level"]
    assert stale.first_s == float(history.time_s[502])  # 3 s old there, 2 s at row 501
    assert stale.count == 1


def test_tags_missing_from_the_history_are_not_judged(water_site: Site, water_day: Path
                                                      ) -> None:
    history = read_csv(water_day)
    keep = [i for i, n in enumerate(history.names) if n != "uptime_s"]
    partial = History(history.time_s, tuple(history.names[i] for i in keep),
                      history.values[:, keep], history.sources)
    result = prove(water_site, partial)
    assert result.not_judged == ("uptime_s",)
    assert result.trips == 0


def test_a_device_whose_sensors_the_history_lacks_is_not_lost(water_site: Site,
                                                              water_day: Path) -> None:
    # None of the PLC's sensors recorded: none is judged by the input detectors, and the
    # device is not "lost" (they name a device whose every sensor tag is bad; prove leaves
    # that to the sensors' own findings). The envelope still judges the commands.
    history = read_csv(water_day)
    sensors = {t.name for t in water_site.sensors}
    keep = [i for i, n in enumerate(history.names) if n not in sensors]
    partial = History(history.time_s, tuple(history.names[i] for i in keep),
                      history.values[:, keep], history.sources)
    result = prove(water_site, partial)
    assert set(result.not_judged) >= sensors
    assert not any(name.startswith(("device.", "input.")) for name in result.tallies), \
        list(result.tallies)

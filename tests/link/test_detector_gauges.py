"""The detectors' statistics against their thresholds (gateway.runtime.view.DetectorGauges),
as the core fills them for each view and as they reach the communications process through the
mirror (``CommsLink.publish`` -> ``MirrorReader`` -> ``view_of``)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np

from gateway.comms.pump import view_of
from gateway.link.mirror import MirrorLayout, MirrorReader, MirrorWriter
from gateway.runtime.view import DetectorGauges
from gateway.supervisor.decision import Proposal
from gateway.supervisor.modes import Mode, RequestKind
from tests.ops.test_margins import view
from tests.supervisor.plant import Loop

NAMES = ("violation_rate", "deadline", "ai_silent", "divergence.inflow_valve",
         *(f"input.{kind}.{sensor}" for sensor in ("level", "inflow_rate", "demand", "uptime_s")
           for kind in ("stale", "range")))
READINGS = (2.5, 0.01, 0.004, 1000.0)


def test_the_water_tanks_gauges_and_their_thresholds() -> None:
    loop = Loop("python")
    gauges = DetectorGauges(loop.sup)
    site = loop.sup.site
    assert gauges.names == NAMES
    limits = dict(zip(gauges.names, gauges.limits, strict=True))
    assert limits["violation_rate"] == site.detection.violation_max
    assert limits["divergence.inflow_valve"] == site.detection.divergence_threshold
    assert limits["ai_silent"] == site.controller.silence_timeout_ms / 1000.0
    assert limits["input.stale.level"] == site.stale_after_ms(site.sensors[0]) / 1000.0
    # Before the AI was ever heard its silence is unknown (NaN), not a reassuring zero.
    values = dict(zip(NAMES, gauges.values(0.0, None, READINGS, (-0.05,) * 4), strict=True))
    assert math.isnan(values["ai_silent"])
    assert values["input.stale.level"] == 0.05
    # The level's range is 0..5 m, widened by the input range margin on both sides.
    margin = site.detection.input_range_margin * 5.0
    assert limits["input.range.level"] == 0.0
    assert math.isclose(values["input.range.level"], -(2.5 + margin))  # room left inside
    over = gauges.values(0.0, None, (7.0, *READINGS[1:]), (0.0,) * 4)
    assert math.isclose(over[NAMES.index("input.range.level")], 7.0 - 5.0 - margin)
    unknown = gauges.values(0.0, None, (math.nan, *READINGS[1:]), (0.0,) * 4)
    assert math.isnan(unknown[NAMES.index("input.range.level")])
    assert values["violation_rate"] == 0.0 and values["divergence.inflow_valve"] == 0.0


def test_a_diverging_ai_drives_its_statistic_above_the_threshold() -> None:
    """In SHADOW an AI that opens the inflow valve, within its rate limit, all the way while
    the fallback holds the level: the CUSUM statistic rises, cycle after cycle, and the
    supervisor trips when it passes the threshold the gauge shows."""
    loop = Loop("python")
    gauges = DetectorGauges(loop.sup)
    at = gauges.names.index("divergence.inflow_valve")
    loop.request(RequestKind.TO_SHADOW)
    seen = []
    tripped = False
    for _ in range(400):
        inflow = min(float(loop.sup.ai_previous[0]) + 0.9, 100.0)  # 9 %/s: within its rate
        proposal = Proposal(np.array([inflow, 30.0, 0.0]), produced_at_s=loop.now_s)
        decision = loop.step(proposal=proposal)
        seen.append(gauges.values(decision.at_s, proposal, READINGS,
                                  (decision.at_s,) * 4)[at])
        if any(e.name == "divergence.inflow_valve" for e in decision.events):
            tripped = True
            break
    assert tripped
    assert seen[-1] > gauges.limits[at] >= seen[-2]  # it trips as the gauge crosses
    assert all(b >= a for a, b in itertools.pairwise(seen))  # it built up


def test_the_ai_s_silence_counts_only_where_it_is_judged() -> None:
    """Silence grows with the time since the AI's last proposal while it is judged (SHADOW,
    AUTO); in MANUAL nobody waits for the AI: not known, rather than "too long"."""
    loop = Loop("python")
    gauges = DetectorGauges(loop.sup)
    at = gauges.names.index("ai_silent")
    loop.request(RequestKind.TO_SHADOW)
    proposal = Proposal(np.array([30.0, 30.0, 0.0]), produced_at_s=loop.now_s)
    heard_s = loop.now_s
    decision = loop.step(proposal=proposal)
    assert loop.sup.mode is Mode.SHADOW
    assert gauges.values(decision.at_s, proposal, READINGS, (0.0,) * 4)[at] == 0.0
    later = heard_s + 3.0
    assert math.isclose(gauges.values(later, None, READINGS, (later,) * 4)[at], 3.0)
    loop.request(RequestKind.TO_MANUAL)
    assert math.isnan(gauges.values(later, None, READINGS, (later,) * 4)[at])


def test_gauges_cross_the_mirror_by_name() -> None:
    loop = Loop("python")
    gauges = DetectorGauges(loop.sup)
    layout = MirrorLayout.for_site(loop.sup.site)
    values = (7.0, 1.0, math.nan, 25.0, 0.1, -2.0, 0.2, -1.0, 0.3, -1.0, 0.4, -5.0)
    plant = replace(view(), detector_names=gauges.names, detector_values=values,
                    detector_limits=gauges.limits)
    w = MirrorWriter(None, layout)
    reader = MirrorReader(w.name, layout)
    try:
        w.publish(cycle=plant.cycle, heartbeat=plant.heartbeat, wall_s=plant.at_wall_s,
                  mode=plant.mode, latched=plant.latched, sensor_values=plant.sensor_values,
                  sensor_good=plant.sensor_good, sensor_read_s=plant.sensor_at_s,
                  applied=plant.applied, proposal=plant.proposal, source=[2, 2, 2],
                  detector_names=plant.detector_names, detector_values=plant.detector_values,
                  detector_limits=plant.detector_limits)
        snap = reader.read()
        assert snap is not None
        got = view_of(snap)
    finally:
        reader.close()
        w.close()
    assert got.detector_names == gauges.names
    assert got.detector_limits == gauges.limits
    assert got.detector_values[:2] == (7.0, 1.0) and math.isnan(got.detector_values[2])
    assert got.detector_values[3:] == values[3:]

"""The supervisor's step on the example water tank, on both envelope engines.

Each detector has a case it must catch and a normal case it must not flag; failover happens in
the step that sees the anomaly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.supervisor.decision import Proposal, ProposalAnomaly, Snapshot, Source
from gateway.supervisor.detectors import CanaryCases
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode, RequestKind
from tests.supervisor.plant import Loop, good_policy


def trips(loop: Loop) -> list[str]:
    return [e.name for d in loop.decisions for e in d.events if e.kind is EventKind.TRIP]


def test_starts_in_manual_on_fallback(engine):
    loop = Loop(engine)
    d = loop.step(np.array([90.0, 0.0, 0.0]))
    assert d.mode is Mode.MANUAL
    assert d.source is Source.FALLBACK
    np.testing.assert_array_equal(d.command, d.fallback)
    assert d.verdict is not None  # the AI is judged even while it is not in control


def test_operator_path_to_auto_and_ai_in_control(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    assert loop.sup.mode is Mode.AUTO
    for _ in range(600):  # one simulated minute of clean operation
        d = loop.step(good_policy(loop))
    assert d.mode is Mode.AUTO
    assert d.source is Source.AI
    assert trips(loop) == []
    assert 2.0 < loop.tank.level_m < 3.0


def test_to_auto_needs_a_clean_shadow_period(engine):
    loop = Loop(engine)
    loop.request(RequestKind.TO_SHADOW)
    loop.step(good_policy(loop))
    loop.request(RequestKind.TO_AUTO)
    d = loop.step(good_policy(loop))
    assert d.mode is Mode.SHADOW
    assert any(e.kind is EventKind.REQUEST_REFUSED for e in d.events)


def test_unauthorised_request_is_refused(engine):
    loop = Loop(engine)
    loop.request(RequestKind.TO_SHADOW, authorised=False)
    d = loop.step(good_policy(loop))
    assert d.mode is Mode.MANUAL
    assert [e.kind for e in d.events] == [EventKind.REQUEST_REFUSED]


# --------------------------------------------------------------------- envelope trip


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_ai_output_fails_over_in_the_same_step(engine, bad):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    d = loop.step(np.array([bad, 30.0, 0.0]))
    assert d.mode is Mode.MANUAL
    assert d.source is Source.FALLBACK
    assert np.isfinite(d.command).all()
    assert "envelope" in trips(loop)
    # latched: the AI stays out even when it behaves again
    for _ in range(100):
        d = loop.step(good_policy(loop))
    assert d.mode is Mode.MANUAL


def test_clamped_ai_output_is_applied_clamped_not_as_proposed(engine):
    loop = Loop(engine, gross_violation=0.0)  # a 50 % jump would be gross: judged below
    loop.to_auto(good_policy)
    prev = loop.sup.previous.copy()
    d = loop.step(np.array([prev[0] + 50.0, 30.0, 0.0]))  # far beyond the rate limit
    assert d.source is Source.AI
    assert d.clamped
    assert d.command[0] == pytest.approx(prev[0] + 2.0)  # 20 %/s for 0.1 s


# --------------------------------------------------------------------- divergence


def biased_policy(loop: Loop) -> np.ndarray:
    """Stealthy: inside every limit, but holds the inflow high whatever the level."""
    prev = loop.sup.previous
    return np.array([min(prev[0] + 1.0, 70.0), 30.0, 0.0])


def test_divergence_catches_a_stealthy_bias_before_the_danger_limit(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    for _ in range(3000):
        d = loop.step(biased_policy(loop))
        if d.mode is not Mode.AUTO:
            break
    assert d.mode is Mode.MANUAL
    assert any(name.startswith("divergence.") for name in trips(loop))
    assert max(loop.tank.history) < 4.8  # caught before the keep-range limit


def test_divergence_sees_the_bias_through_the_wire_gates_rounding(engine):
    # The runtime writes what the register can hold (0.01 % steps) and tells the supervisor
    # with record_write nearly every cycle; the reference PID must still not follow the AI.
    loop = Loop(engine)
    loop.to_auto(good_policy)
    for _ in range(3000):
        d = loop.step(biased_policy(loop))
        if d.mode is not Mode.AUTO:
            break
        loop.sup.record_write(np.round(d.command, 2) + 0.001)  # as encoded, never equal
    assert d.mode is Mode.MANUAL
    assert any(name.startswith("divergence.") for name in trips(loop))
    assert max(loop.tank.history) < 4.8


def different_policy(loop: Loop) -> np.ndarray:
    """A sensible AI that is not the fallback: its own setpoint (2.6 m) and gain."""
    level = loop.tank.level_m
    inflow = min(max(30.0 + 25.0 * (2.6 - level), 0.0), 100.0)
    prev = loop.sup.previous
    return np.array([min(max(inflow, prev[0] - 1.0), prev[0] + 1.0), 30.0, 0.0])


def test_divergence_does_not_flag_a_sensible_different_policy_for_ten_minutes(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    rng = np.random.default_rng(7)
    largest = 0.0
    for _ in range(6000):
        loop.tank.demand = 0.0005 * math.sin(loop.now_s / 60.0)  # slow demand swings
        ai = different_policy(loop)
        ai[0] = min(max(ai[0] + rng.normal(0, 0.3), 0.0), 100.0)
        loop.step(ai)
        largest = max(largest, abs(ai[0] - loop.sup.bank.reference[0]) / 100.0)
    assert largest > 0.05  # the scenario really disagrees with the fallback...
    assert loop.sup.mode is Mode.AUTO  # ...and it is not a false trip
    assert trips(loop) == []


# --------------------------------------------------------------------- violation rate


def test_violation_rate_trips_on_persistent_clamping(engine):
    loop = Loop(engine, gross_violation=0.0)  # the rate detector alone
    loop.to_auto(good_policy)
    for _ in range(200):
        d = loop.step(np.array([120.0, 30.0, 0.0]))  # above max every cycle: clamped
        if d.mode is not Mode.AUTO:
            break
    assert "violation_rate" in trips(loop)


def test_occasional_clamps_do_not_trip(engine):
    loop = Loop(engine, gross_violation=0.0)  # the rate detector alone
    loop.to_auto(good_policy)
    for k in range(3000):
        ai = good_policy(loop)
        if k % 100 == 0:
            ai[1] = 130.0  # one clamped proposal every 10 s
        loop.step(ai)
    assert loop.sup.mode is Mode.AUTO
    assert trips(loop) == []


# --------------------------------------------------------------------- gross violation


def test_gross_violation_fails_over_in_the_step_that_sees_it(engine):
    # A hijack: inflow from its ~30 % to 100 % and the pump stopped, in one cycle.
    loop = Loop(engine)
    loop.to_auto(good_policy)
    prev = loop.sup.previous.copy()
    d = loop.step(np.array([100.0, 0.0, 0.0]))
    assert d.mode is Mode.MANUAL
    assert d.source is Source.FALLBACK
    assert "envelope.gross" in trips(loop)
    trip = next(e for e in d.events if e.kind is EventKind.TRIP)
    assert ("actuator", "inflow_valve") in trip.evidence or ("actuator", "outflow_pump") in (
        trip.evidence)
    assert abs(d.command[0] - prev[0]) <= 2.0 + 1e-9  # the fallback, within the rate limit


def test_small_clamps_are_not_gross(engine):
    # 5 % beyond the rate window each time: clamped, counted, never gross.
    loop = Loop(engine)
    loop.to_auto(good_policy)
    for k in range(300):
        ai = good_policy(loop)
        if k % 50 == 0:
            ai[0] = loop.sup.previous[0] + 7.0  # 2 % allowed per cycle: 5 % of range beyond
        d = loop.step(ai)
        assert d.clamped or k % 50 != 0
    assert loop.sup.mode is Mode.AUTO
    assert trips(loop) == []


def test_gross_is_not_judged_while_the_ai_is_quarantined(engine):
    # In MANUAL the AI is judged against the fallback's trajectory: disagreeing with it is not
    # an attack, and a reset must not be latched again by it at once.
    loop = Loop(engine)
    for _ in range(20):
        loop.step(np.array([90.0, 30.0, 0.0]))  # 60 % away from the fallback's 30 %
    assert "envelope.gross" not in trips(loop)


def test_a_quarantined_ai_that_disagrees_does_not_latch_manual_again(engine):
    # After a trip the operator resets and wants to watch the AI in SHADOW. While the gateway
    # sits in MANUAL the AI is judged against the fallback's trajectory; counting those clamps
    # (or its disagreement with the fallback) as trips would latch at once after every reset,
    # and the staged re-enable could never begin.
    loop = Loop(engine)
    for _ in range(600):  # a minute in MANUAL, the AI far from the fallback's 30 %
        loop.step(np.array([90.0, 30.0, 0.0]))
    assert trips(loop) == []
    loop.request(RequestKind.TO_SHADOW)
    d = loop.step(np.array([90.0, 30.0, 0.0]))
    kinds = [e.kind for e in d.events]
    assert EventKind.REQUEST_REFUSED not in kinds  # not latched: SHADOW begins
    assert kinds[0] is EventKind.MODE_CHANGE and ("to", "shadow") in d.events[0].evidence
    # On trial it is judged on its own trajectory from where the plant is: slamming the inflow
    # from 30 % to 90 % is caught in that very step.
    assert kinds[1:] == [EventKind.TRIP, EventKind.MODE_CHANGE]
    assert trips(loop) == ["envelope.gross"]
    assert d.mode is Mode.MANUAL
    assert d.source is Source.FALLBACK


# --------------------------------------------------------------------- inputs


@pytest.mark.parametrize("fault", ["stale", "quality", "range", "nan"])
def test_sensor_faults_go_to_safe_stop_with_safe_values(engine, fault):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    level = loop.tank.level_m
    ok4, t4 = np.array([True] * 4), np.array([0.1] * 4)

    def sensed(level_m: float) -> np.ndarray:
        return np.array([level_m, 0.01, 0.004, 1000.0])  # level, inflow, demand, uptime

    snap = {
        "stale": Snapshot(sensed(level), ok4, np.array([5.0, 0.1, 0.1, 0.1])),
        "quality": Snapshot(sensed(level), np.array([False, True, True, True]), t4),
        "range": Snapshot(sensed(7.5), ok4, t4),
        "nan": Snapshot(sensed(math.nan), ok4, t4),
    }[fault]
    d = loop.step(good_policy(loop), snapshot=snap)
    assert d.mode is Mode.SAFE_STOP
    # The untrusted level is unknown, and unknown counts as the dangerous side: both level
    # interlocks hold, so the safe state closes the inflow and stops the pump (its plain safe
    # value, 20 %, would drain the tank past the dry-run limit unseen).
    np.testing.assert_array_equal(d.command, [0.0, 0.0, 0.0])
    assert any(name.startswith("input.") for name in trips(loop))


def test_fresh_good_inputs_do_not_trip(engine):
    loop = Loop(engine)
    for _ in range(6000):
        loop.step(None, snapshot=loop.tank.snapshot(age_s=0.9))  # old but within 1 s
    assert trips(loop) == []


# --------------------------------------------------------------------- controller health


def test_repeated_deadline_misses_trip_and_each_miss_uses_the_fallback(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    late = Proposal(None, ProposalAnomaly.DEADLINE_MISSED)
    limit = loop.sup.site.detection.deadline_misses_max
    for _ in range(limit):
        d = loop.step(proposal=late)
        assert d.mode is Mode.AUTO
        assert d.source is Source.FALLBACK
    d = loop.step(proposal=late)
    assert d.mode is Mode.MANUAL
    assert "deadline" in trips(loop)


def test_isolated_deadline_misses_do_not_trip(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    for k in range(2000):
        if k % 50 == 0:
            loop.step(proposal=Proposal(None, ProposalAnomaly.DEADLINE_MISSED))
        else:
            loop.step(good_policy(loop))
    assert loop.sup.mode is Mode.AUTO


def test_silent_external_ai_trips(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    last = Proposal(good_policy(loop), produced_at_s=loop.now_s)
    for _ in range(9):  # 0.9 s old at most: still within the 1 s silence timeout
        d = loop.step(proposal=last)
    assert d.mode is Mode.AUTO
    for _ in range(3):
        d = loop.step(proposal=last)
    assert d.mode is Mode.MANUAL
    assert "ai_silent" in trips(loop)


def test_wrong_output_shape_trips(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    d = loop.step(np.array([30.0, 30.0]))
    assert d.mode is Mode.MANUAL
    assert "controller.wrong_output_shape" in trips(loop)


# --------------------------------------------------------------------- canary


def canary_cases() -> CanaryCases:
    return CanaryCases(np.array([[2.5, 0.01], [4.0, 0.01]]), np.array([[30.0, 30.0],
                                                                        [0.0, 40.0]]), 1e-6)


def test_canary_deviation_trips(engine):
    loop = Loop(engine, canary=canary_cases())
    loop.to_auto(good_policy)
    d = loop.step(good_policy(loop))
    swapped = np.array([[30.0, 30.0], [10.0, 40.0]])
    d = loop.step(proposal=Proposal(good_policy(loop), produced_at_s=loop.now_s,
                                    canary=swapped))
    assert d.mode is Mode.MANUAL
    assert "canary" in trips(loop)


def test_matching_canary_does_not_trip_and_is_asked_periodically(engine):
    loop = Loop(engine, canary=canary_cases())
    due = 0
    for _ in range(1300):  # 130 s; the period is 60 s
        d = loop.step(proposal=Proposal(good_policy(loop), produced_at_s=loop.now_s,
                                        canary=canary_cases().outputs))
        due += d.canary_due
    assert due == 3  # at 0 s, 60 s and 120 s
    assert trips(loop) == []


# --------------------------------------------------------------------- bypass, reset


def test_bypass_suppresses_one_detector_and_expires(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    loop.request(RequestKind.BYPASS, detector="ai_silent", duration_s=2.0)
    stale = Proposal(good_policy(loop), produced_at_s=loop.now_s)
    for _ in range(15):  # 1.5 s: silent after 1 s, but bypassed
        d = loop.step(proposal=stale)
    assert d.mode is Mode.AUTO
    for _ in range(10):  # the bypass expires at 2 s
        d = loop.step(proposal=stale)
    assert d.mode is Mode.MANUAL
    kinds = [e.kind for dd in loop.decisions for e in dd.events]
    assert EventKind.BYPASS_START in kinds
    assert EventKind.BYPASS_END in kinds


def test_reset_then_shadow_again(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    loop.step(np.array([math.nan, 30.0, 0.0]))
    loop.request(RequestKind.TO_SHADOW)
    d = loop.step(good_policy(loop))
    assert d.mode is Mode.MANUAL  # refused: latched
    loop.request(RequestKind.RESET_TRIP)
    loop.request(RequestKind.TO_SHADOW)
    d = loop.step(good_policy(loop))
    assert d.mode is Mode.SHADOW


# --------------------------------------------------------------------- fallback and gate


def test_fallback_is_bumpless_on_takeover(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    for _ in range(50):
        loop.step(good_policy(loop))
    before = loop.sup.previous.copy()
    d = loop.step(np.array([math.nan, 30.0, 0.0]))
    assert d.source is Source.FALLBACK
    assert abs(d.command[0] - before[0]) < 2.0  # no jump at takeover


def test_fallback_that_violates_gets_safe_values_for_offenders(engine):
    loop = Loop(engine)
    loop.tank.level_m = 0.25  # below 0.3 m: the dry-run interlock (trip policy) holds
    d = loop.step(None)
    # The fixed 30 % pump fallback violates `outflow_pump <= 0`: the pump stops at once (a
    # move toward the interlock is never rate limited; it used to be sent to its plain safe
    # value, 20 %, against the interlock) while the other actuators keep their fallback values.
    assert d.command[1] == 0.0
    assert d.sources[0] is Source.FALLBACK


def test_safe_stop_writes_safe_values(engine):
    loop = Loop(engine)
    loop.request(RequestKind.TO_SAFE_STOP)
    d = loop.step(good_policy(loop))
    assert d.mode is Mode.SAFE_STOP
    np.testing.assert_array_equal(d.command, loop.sup.gate.safe_state(d.sensors))
    assert d.sources == (Source.SAFE,) * 3


def test_step_never_raises_on_garbage_proposals(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    garbage = [np.array([1e308, -1e308, 1e308]), np.array([], dtype=np.float64),
               np.zeros(3, dtype=np.float32), np.zeros((3, 1)), np.array([np.nan] * 3)]
    for values in garbage:
        d = loop.step(proposal=Proposal(values, produced_at_s=loop.now_s))  # type: ignore[arg-type]
        assert np.isfinite(d.command).all()


def test_operator_setpoint_holds_in_manual_and_is_released_on_leaving(engine):
    loop = Loop(engine)
    loop.sup.set_operator_setpoint(1, 45.0)  # outflow pump
    for _ in range(30):
        d = loop.step(None)
    assert d.command[1] == 45.0  # reached within the pump's rate limit, then held
    loop.request(RequestKind.TO_SHADOW)
    d = loop.step(good_policy(loop))
    assert loop.sup.bank.overrides == {}
    for _ in range(30):
        d = loop.step(good_policy(loop))
    assert d.command[1] == 30.0  # back to the fixed fallback


def test_record_write_moves_the_rate_reference(engine):
    loop = Loop(engine)
    loop.sup.record_write(np.array([30.0, 40.0, 0.0]))
    loop.sup.set_operator_setpoint(1, 40.0)
    d = loop.step(None)
    assert d.command[1] == 40.0  # no ramp back from 30: the write is the new reference


def test_shadow_judges_the_ai_on_its_own_trajectory(engine):
    # The AI wants the pump at 45 % while the fallback holds it at 30 %: in SHADOW it ramps
    # toward 45 on its own trajectory (clamped only while ramping), then is clean, and AUTO
    # can be granted; judged against the fallback's 30 % it would be clamped forever.
    loop = Loop(engine)
    loop.request(RequestKind.TO_SHADOW)
    verdicts = []
    for _ in range(int(loop.sup.site.operation.clean_shadow_s / 0.1) + 20):
        ai = good_policy(loop)
        ai[1] = 45.0
        verdicts.append(loop.step(ai).verdict)
    assert all(v is not None and v.ok for v in verdicts[-30:])
    assert loop.decisions[-1].command[1] == 30.0  # the fallback stayed in control
    loop.request(RequestKind.TO_AUTO)
    ai = good_policy(loop)
    ai[1] = 45.0
    d = loop.step(ai)
    assert d.mode is Mode.AUTO
    assert d.command[1] == pytest.approx(32.5)  # from the applied 30 % at 25 %/s


def test_an_ai_that_never_spoke_cannot_take_shadow_or_auto(engine):
    # The example tank's AI is external: before its first write there is no proposal at all.
    loop = Loop(engine)
    for _ in range(100):  # ten seconds of MANUAL without an AI: normal at start-up
        d = loop.step(None)
    assert d.mode is Mode.MANUAL and trips(loop) == []
    loop.request(RequestKind.TO_SHADOW)
    d = loop.step(None)
    assert d.mode is Mode.MANUAL  # silent for longer than silence_timeout_ms: back at once
    assert "ai_silent" in trips(loop)


def test_a_silent_gap_shorter_than_the_timeout_is_tolerated(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    for _ in range(5):  # half a second without a proposal (timeout 1 s)
        d = loop.step(None)
    d = loop.step(good_policy(loop))
    assert d.mode is Mode.AUTO and trips(loop) == []


def test_rate_factor_slows_what_is_applied_but_never_the_safe_values(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    loop.sup.set_rate_factor(0.5)
    prev = loop.sup.previous.copy()
    d = loop.step(np.array([prev[0] + 1.9, 30.0, 0.0]))  # inside the 2 %/cycle limit
    assert d.source is Source.AI
    assert d.command[0] == pytest.approx(prev[0] + 1.0)  # half of 20 %/s for 0.1 s
    loop.sup.set_rate_factor(1.0)
    prev = loop.sup.previous.copy()
    d = loop.step(np.array([prev[0] + 1.9, 30.0, 0.0]))
    assert d.command[0] == pytest.approx(prev[0] + 1.9)
    loop.sup.set_rate_factor(0.1)
    loop.request(RequestKind.TO_SAFE_STOP)
    d = loop.step(good_policy(loop))
    np.testing.assert_array_equal(d.command, loop.sup.gate.safe_state(d.sensors))  # at once


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, math.nan])
def test_rate_factor_must_be_in_zero_one(engine, bad):
    with pytest.raises(ValueError, match="rate factor"):
        Loop(engine).sup.set_rate_factor(bad)

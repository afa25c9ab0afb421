"""An operator can always take control (issue 15, "What was seen" 7): detectors that judge the
AI do not latch while the AI is neither in control nor on trial, a reset succeeds once its
cause has cleared (and names the cause otherwise), MANUAL is reachable from SAFE_STOP whenever
sensing is healthy, and every request is answered in the same call."""

from __future__ import annotations

import math

import numpy as np

from gateway.supervisor.decision import Proposal
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind
from tests.supervisor.plant import Loop, good_policy


def events_of(loop: Loop, kind: EventKind, since: int = 0) -> list[str]:
    return [e.name for d in loop.decisions[since:] for e in d.events if e.kind is kind]


def ask(loop: Loop, kind: RequestKind, **kw: object) -> list[EventKind]:
    req = OperatorRequest(kind, "op", True, **kw)  # type: ignore[arg-type]
    return [e.kind for e in loop.sup.apply_request(req)]


def test_a_silent_external_ai_does_not_latch_in_manual(engine):
    # The external AI wrote once, at t=0, and went silent; the gateway stays in MANUAL.
    loop = Loop(engine)
    stale = Proposal(good_policy(loop), produced_at_s=0.0)
    for _ in range(40):  # 4 s: silent after 1 s
        d = loop.step(proposal=stale)
    assert d.mode is Mode.MANUAL
    assert not loop.sup.modes.latched
    assert events_of(loop, EventKind.TRIP) == []
    # Still on record, once, as an observation.
    assert events_of(loop, EventKind.ANOMALY) == ["ai_silent"]


def test_reset_after_an_ai_trip_does_not_latch_again(engine):
    loop = Loop(engine)
    loop.to_auto(good_policy)
    stale = Proposal(good_policy(loop), produced_at_s=loop.now_s)
    for _ in range(20):  # silent after 1 s: trip to MANUAL, latched
        d = loop.step(proposal=stale)
    assert d.mode is Mode.MANUAL
    assert loop.sup.modes.latched
    assert events_of(loop, EventKind.TRIP) == ["ai_silent"]
    assert ask(loop, RequestKind.RESET_TRIP) == [EventKind.RESET]
    since = len(loop.decisions)
    for _ in range(30):  # the AI stays silent; it is out of control, so nothing latches
        d = loop.step(proposal=stale)
    assert not loop.sup.modes.latched
    assert events_of(loop, EventKind.TRIP, since) == []
    # On trial again, its silence trips at once: the detector still judges the AI.
    assert ask(loop, RequestKind.TO_SHADOW) == [EventKind.MODE_CHANGE]
    d = loop.step(proposal=stale)
    assert d.mode is Mode.MANUAL
    assert loop.sup.modes.latched


def test_envelope_and_controller_findings_outside_auto_and_shadow_are_observations(engine):
    loop = Loop(engine)
    for _ in range(5):  # in MANUAL: a NaN proposal (an envelope trip), then a wrong shape
        d = loop.step(np.array([math.nan, 30.0, 0.0]))
    for _ in range(5):
        d = loop.step(proposal=Proposal(np.zeros(2), produced_at_s=loop.now_s))
    assert not loop.sup.modes.latched
    assert events_of(loop, EventKind.TRIP) == []
    assert events_of(loop, EventKind.ANOMALY) == ["envelope", "controller.wrong_output_shape"]
    assert d.mode is Mode.MANUAL


def _sensing_trip(loop: Loop) -> None:
    for _ in range(3):
        loop.step(good_policy(loop), snapshot=loop.tank.snapshot(good=False))
    assert loop.sup.mode is Mode.SAFE_STOP
    assert loop.sup.modes.latched


def test_to_manual_from_safe_stop_with_a_latch_once_sensing_is_healthy(engine):
    loop = Loop(engine)
    _sensing_trip(loop)
    # While the level reads bad, SAFE_STOP stays and the refusal names the detector.
    events = loop.sup.apply_request(OperatorRequest(RequestKind.TO_MANUAL, "op", True))
    assert [e.kind for e in events] == [EventKind.REQUEST_REFUSED]
    assert "input.quality.level" in events[0].reason
    assert "sensing" in events[0].reason
    loop.step(good_policy(loop))  # the level reads good again
    assert ask(loop, RequestKind.TO_MANUAL) == [EventKind.MODE_CHANGE]
    assert loop.sup.mode is Mode.MANUAL
    assert loop.sup.modes.latched  # the AI stays out until a reset
    d = loop.step(good_policy(loop))
    assert d.mode is Mode.MANUAL
    assert ask(loop, RequestKind.TO_SHADOW) == [EventKind.REQUEST_REFUSED]


def test_reset_is_refused_naming_the_cause_until_it_clears(engine):
    loop = Loop(engine)
    _sensing_trip(loop)
    events = loop.sup.apply_request(OperatorRequest(RequestKind.RESET_TRIP, "op", True))
    assert [e.kind for e in events] == [EventKind.REQUEST_REFUSED]
    assert "input.quality.level" in events[0].reason
    assert loop.sup.modes.latched
    loop.step(good_policy(loop))
    assert ask(loop, RequestKind.RESET_TRIP) == [EventKind.RESET]
    assert not loop.sup.modes.latched
    d = loop.step(good_policy(loop))
    assert d.mode is Mode.SAFE_STOP  # a reset does not move the mode
    assert not loop.sup.modes.latched
    assert ask(loop, RequestKind.RESET_TRIP) == [EventKind.REQUEST_REFUSED]  # nothing latched


def test_requests_are_answered_in_the_same_call_and_reach_the_next_decision(engine):
    loop = Loop(engine)
    loop.step(good_policy(loop))
    events = loop.sup.apply_request(OperatorRequest(RequestKind.TO_SAFE_STOP, "op", True))
    assert [e.kind for e in events] == [EventKind.MODE_CHANGE]
    assert loop.sup.mode is Mode.SAFE_STOP  # applied now, not at the next step
    d = loop.step(good_policy(loop))
    assert [e.kind for e in d.events] == [EventKind.MODE_CHANGE]  # audited with that step


def test_bypass_of_an_unknown_detector_or_beyond_the_maximum_is_refused(engine):
    loop = Loop(engine, plausibility=True)
    known = loop.sup.detector_names
    assert {"ai_silent", "deadline", "violation_rate", "envelope.gross", "canary",
            "input.stale.level", "input.frozen.level", "divergence.inflow_valve"} <= set(known)
    events = loop.sup.apply_request(OperatorRequest(RequestKind.BYPASS, "op", True,
                                                    detector="nosuch", duration_s=10.0))
    assert [e.kind for e in events] == [EventKind.REQUEST_REFUSED]
    assert "nosuch" in events[0].reason and "ai_silent" in events[0].reason
    max_s = loop.sup.site.operation.bypass_max_s
    events = loop.sup.apply_request(OperatorRequest(RequestKind.BYPASS, "op", True,
                                                    detector="ai_silent", duration_s=1e9))
    assert [e.kind for e in events] == [EventKind.REQUEST_REFUSED]
    assert f"{max_s:g}" in events[0].reason
    assert loop.sup.modes.bypasses == {}
    assert ask(loop, RequestKind.BYPASS, detector="ai_silent", duration_s=60.0) == [
        EventKind.BYPASS_START]
    assert set(loop.sup.modes.bypasses) == {"ai_silent"}

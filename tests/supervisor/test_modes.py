"""Unit tests for the mode machine: one rule per test, virtual time throughout."""

from __future__ import annotations

import math

import pytest

from gateway.supervisor.events import Event, EventKind
from gateway.supervisor.modes import (
    Mode,
    ModeConfig,
    ModeMachine,
    OperatorRequest,
    RequestKind,
)

CLEAN_S = 60.0
BYPASS_MAX_S = 600.0


def make(start: Mode = Mode.MANUAL) -> ModeMachine:
    return ModeMachine(
        ModeConfig(start_mode=start, clean_shadow_s=CLEAN_S, bypass_max_s=BYPASS_MAX_S)
    )


def req(
    kind: RequestKind,
    *,
    authorised: bool = True,
    detector: str | None = None,
    duration_s: float | None = None,
    reason: str = "",
) -> OperatorRequest:
    return OperatorRequest(
        kind=kind,
        requester="alice",
        authorised=authorised,
        detector=detector,
        duration_s=duration_s,
        reason=reason,
    )


def mode_of(m: ModeMachine) -> Mode:
    # A call, so that mypy does not carry a narrowed `m.mode` across state-changing calls.
    return m.mode


def kinds(events: list[Event]) -> list[EventKind]:
    return [e.kind for e in events]


def only_refusal(events: list[Event]) -> Event:
    assert kinds(events) == [EventKind.REQUEST_REFUSED]
    assert events[0].requester == "alice"
    return events[0]


def to_auto(m: ModeMachine, t0: float = 0.0) -> float:
    """Drive a fresh MANUAL machine to AUTO; return the time reached."""
    m.request(t0, req(RequestKind.TO_SHADOW))
    t = t0 + CLEAN_S
    assert kinds(m.request(t, req(RequestKind.TO_AUTO))) == [EventKind.MODE_CHANGE]
    assert mode_of(m) is Mode.AUTO
    return t


# -- Mode and config -------------------------------------------------------------------------


def test_safety_rank_orders_modes() -> None:
    assert [m.safety_rank for m in (Mode.AUTO, Mode.SHADOW, Mode.MANUAL, Mode.SAFE_STOP)] == [
        0,
        1,
        2,
        3,
    ]


def test_config_defaults_to_manual_start() -> None:
    assert ModeConfig(clean_shadow_s=1.0, bypass_max_s=1.0).start_mode is Mode.MANUAL


def test_config_accepts_string_start_mode() -> None:
    cfg = ModeConfig(start_mode="shadow", clean_shadow_s=1.0, bypass_max_s=1.0)  # type: ignore[arg-type]
    assert cfg.start_mode is Mode.SHADOW


@pytest.mark.parametrize("start", [Mode.AUTO, "auto", "bogus"])
def test_config_refuses_auto_or_unknown_start_mode(start: object) -> None:
    with pytest.raises(ValueError, match="start_mode"):
        ModeConfig(start_mode=start, clean_shadow_s=1.0, bypass_max_s=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["clean_shadow_s", "bypass_max_s"])
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, True, "5"])
def test_config_refuses_bad_durations(field: str, bad: object) -> None:
    kwargs: dict[str, object] = {"clean_shadow_s": 1.0, "bypass_max_s": 1.0, field: bad}
    with pytest.raises(ValueError, match=field):
        ModeConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("start", [Mode.MANUAL, Mode.SHADOW, Mode.SAFE_STOP])
def test_machine_starts_in_configured_mode(start: Mode) -> None:
    m = make(start)
    assert mode_of(m) is start
    assert not m.latched
    assert m.trip_reason is None
    assert m.bypasses == {}


# -- authorisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(RequestKind))
def test_unauthorised_request_is_refused_and_logged(kind: RequestKind) -> None:
    m = make()
    m.trip(0.0, "det", "boom", Mode.MANUAL)
    m.request(0.0, req(RequestKind.BYPASS, detector="other", duration_s=10.0))
    before = (m.mode, m.latched, m.bypasses, m.shadow_clean_since_s)
    ev = only_refusal(
        m.request(1.0, req(kind, authorised=False, detector="other", duration_s=10.0))
    )
    assert "not authorised" in ev.reason
    assert ev.at_s == 1.0
    assert (m.mode, m.latched, m.bypasses, m.shadow_clean_since_s) == before


# -- trips ----------------------------------------------------------------------------------------


def test_trip_latches_and_moves_toward_safety() -> None:
    m = make()
    t = to_auto(m)
    events = m.trip(t + 1, "cusum", "drift", Mode.MANUAL)
    assert kinds(events) == [EventKind.TRIP, EventKind.MODE_CHANGE]
    trip, change = events
    assert (trip.name, trip.reason, trip.requester) == ("cusum", "drift", None)
    assert change.requester is None
    assert dict(change.evidence) == {"from": "auto", "to": "manual"}
    assert "cusum" in change.reason
    assert mode_of(m) is Mode.MANUAL
    assert m.latched
    assert m.trip_reason == "cusum: drift"
    assert m.shadow_clean_since_s is None


def test_trip_in_target_mode_latches_without_mode_change() -> None:
    m = make()
    assert kinds(m.trip(0.0, "d", "r", Mode.MANUAL)) == [EventKind.TRIP]
    assert m.latched
    assert mode_of(m) is Mode.MANUAL


def test_trip_never_loosens_safe_stop() -> None:
    m = make(Mode.SAFE_STOP)
    assert kinds(m.trip(0.0, "d", "r", Mode.MANUAL)) == [EventKind.TRIP]
    assert mode_of(m) is Mode.SAFE_STOP
    assert m.latched


@pytest.mark.parametrize("target", [Mode.AUTO, Mode.SHADOW, "manual"])
def test_trip_toward_ai_is_a_programming_error(target: object) -> None:
    m = make()
    with pytest.raises(ValueError, match="target"):
        m.trip(0.0, "d", "r", target)  # type: ignore[arg-type]
    assert not m.latched
    assert m.last_now_s is None  # nothing was touched, not even the clock


def test_second_trip_while_latched_reports_but_keeps_first_reason() -> None:
    m = make()
    m.trip(0.0, "first", "r1", Mode.MANUAL)
    events = m.trip(1.0, "second", "r2", Mode.MANUAL)
    assert kinds(events) == [EventKind.TRIP]
    assert events[0].reason == "r2"
    assert dict(events[0].evidence)["already_latched_by"] == "first: r1"
    assert m.trip_reason == "first: r1"


def test_second_trip_while_latched_may_still_tighten() -> None:
    m = make()
    m.trip(0.0, "first", "r1", Mode.MANUAL)
    events = m.trip(1.0, "sensing", "lost", Mode.SAFE_STOP)
    assert kinds(events) == [EventKind.TRIP, EventKind.MODE_CHANGE]
    assert mode_of(m) is Mode.SAFE_STOP
    assert m.trip_reason == "first: r1"


def test_shadow_before_reset_is_refused_then_allowed_after_reset() -> None:
    m = make()
    m.trip(0.0, "d", "r", Mode.MANUAL)
    ev = only_refusal(m.request(1.0, req(RequestKind.TO_SHADOW)))
    assert "reset" in ev.reason
    assert mode_of(m) is Mode.MANUAL

    reset = m.request(2.0, req(RequestKind.RESET_TRIP, reason="checked"))
    assert kinds(reset) == [EventKind.RESET]
    assert reset[0].requester == "alice"
    assert dict(reset[0].evidence)["trip_reason"] == "d: r"
    assert not m.latched
    assert m.trip_reason is None
    assert mode_of(m) is Mode.MANUAL  # a reset never moves the mode

    assert kinds(m.request(3.0, req(RequestKind.TO_SHADOW))) == [EventKind.MODE_CHANGE]
    assert mode_of(m) is Mode.SHADOW


def test_reset_without_latch_is_refused() -> None:
    m = make()
    ev = only_refusal(m.request(0.0, req(RequestKind.RESET_TRIP)))
    assert "no trip" in ev.reason


def test_reset_in_safe_stop_stays_in_safe_stop() -> None:
    m = make()
    m.trip(0.0, "d", "r", Mode.SAFE_STOP)
    m.request(1.0, req(RequestKind.RESET_TRIP))
    assert mode_of(m) is Mode.SAFE_STOP
    assert not m.latched


# -- operator moves toward safety ------------------------------------------------------------


@pytest.mark.parametrize("start", [Mode.AUTO, Mode.SHADOW, Mode.MANUAL])
def test_to_safe_stop_from_anywhere(start: Mode) -> None:
    m = make()
    if start is Mode.AUTO:
        to_auto(m)
    elif start is Mode.SHADOW:
        m.request(0.0, req(RequestKind.TO_SHADOW))
    events = m.request(100.0, req(RequestKind.TO_SAFE_STOP, reason="storm"))
    assert kinds(events) == [EventKind.MODE_CHANGE]
    assert events[0].requester == "alice"
    assert dict(events[0].evidence) == {"from": start.value, "to": "safe_stop"}
    assert "storm" in events[0].reason
    assert mode_of(m) is Mode.SAFE_STOP
    assert not m.latched  # an operator stop is not a trip


def test_to_manual_from_auto_and_shadow() -> None:
    m = make()
    to_auto(m)
    assert kinds(m.request(100.0, req(RequestKind.TO_MANUAL))) == [EventKind.MODE_CHANGE]
    assert mode_of(m) is Mode.MANUAL
    m.request(101.0, req(RequestKind.TO_SHADOW))
    assert kinds(m.request(102.0, req(RequestKind.TO_MANUAL))) == [EventKind.MODE_CHANGE]
    assert mode_of(m) is Mode.MANUAL
    assert m.shadow_clean_since_s is None


def test_request_for_current_mode_changes_nothing() -> None:
    m = make()
    assert m.request(0.0, req(RequestKind.TO_MANUAL)) == []
    m.request(0.0, req(RequestKind.TO_SAFE_STOP))
    assert m.request(0.0, req(RequestKind.TO_SAFE_STOP)) == []
    assert mode_of(m) is Mode.SAFE_STOP


def test_leaving_operator_safe_stop_goes_through_manual() -> None:
    m = make(Mode.SAFE_STOP)
    ev = only_refusal(m.request(0.0, req(RequestKind.TO_SHADOW)))
    assert "manual first" in ev.reason
    only_refusal(m.request(0.0, req(RequestKind.TO_AUTO)))
    assert kinds(m.request(0.0, req(RequestKind.TO_MANUAL))) == [EventKind.MODE_CHANGE]
    assert mode_of(m) is Mode.MANUAL


def test_leaving_tripped_safe_stop_needs_healthy_sensing_not_a_reset() -> None:
    # Issue 15: an operator can always reach MANUAL while sensing is healthy; the latch
    # stays (the AI stays out until a reset).
    m = make()
    m.trip(0.0, "sensing", "lost", Mode.SAFE_STOP)
    fault = ("input.stale.level: level: stale: 3.000 s old (limit 1.0 s)",)
    ev = only_refusal(m.request(1.0, req(RequestKind.TO_MANUAL), fault))
    assert "input.stale.level" in ev.reason and "sensing" in ev.reason
    assert mode_of(m) is Mode.SAFE_STOP
    ev = only_refusal(m.request(1.5, req(RequestKind.RESET_TRIP), fault))
    assert "has not cleared" in ev.reason and "input.stale.level" in ev.reason
    assert m.latched
    assert kinds(m.request(3.0, req(RequestKind.TO_MANUAL))) == [EventKind.MODE_CHANGE]
    assert mode_of(m) is Mode.MANUAL
    assert m.latched
    only_refusal(m.request(3.5, req(RequestKind.TO_SHADOW)))
    assert kinds(m.request(4.0, req(RequestKind.RESET_TRIP))) == [EventKind.RESET]
    assert kinds(m.request(5.0, req(RequestKind.TO_SHADOW))) == [EventKind.MODE_CHANGE]


def test_to_manual_from_unlatched_safe_stop_waits_for_sensing_too() -> None:
    m = make()
    m.request(0.0, req(RequestKind.TO_SAFE_STOP))
    only_refusal(m.request(1.0, req(RequestKind.TO_MANUAL), ("input.quality.level: bad",)))
    # A move toward safety is never held back by sensing.
    m2 = make()
    assert kinds(m2.request(0.0, req(RequestKind.TO_SAFE_STOP), ("x: bad",))) == [
        EventKind.MODE_CHANGE]


def test_bypass_names_a_known_detector_when_the_config_lists_them() -> None:
    m = ModeMachine(ModeConfig(clean_shadow_s=10.0, bypass_max_s=60.0,
                               detectors=frozenset({"ai_silent", "deadline"})))
    ev = only_refusal(m.request(0.0, req(RequestKind.BYPASS, detector="nosuch",
                                         duration_s=5.0)))
    assert "unknown detector 'nosuch'" in ev.reason and "ai_silent, deadline" in ev.reason
    ev = only_refusal(m.request(0.0, req(RequestKind.BYPASS, detector="deadline",
                                         duration_s=61.0)))
    assert "bypass_max_s 60 s" in ev.reason
    assert kinds(m.request(0.0, req(RequestKind.BYPASS, detector="deadline",
                                    duration_s=60.0))) == [EventKind.BYPASS_START]
    with pytest.raises(ValueError, match="detectors"):
        ModeConfig(clean_shadow_s=1.0, bypass_max_s=1.0, detectors=frozenset())


# -- the way back to the AI ------------------------------------------------------------------


def test_to_shadow_starts_clean_period() -> None:
    m = make()
    events = m.request(5.0, req(RequestKind.TO_SHADOW))
    assert kinds(events) == [EventKind.MODE_CHANGE]
    assert dict(events[0].evidence) == {"from": "manual", "to": "shadow"}
    assert m.shadow_clean_since_s == 5.0


def test_to_shadow_only_from_manual() -> None:
    m = make()
    to_auto(m)
    only_refusal(m.request(100.0, req(RequestKind.TO_SHADOW)))
    assert mode_of(m) is Mode.AUTO
    m2 = make()
    m2.request(0.0, req(RequestKind.TO_SHADOW))
    only_refusal(m2.request(1.0, req(RequestKind.TO_SHADOW)))
    assert m2.shadow_clean_since_s == 0.0  # a refused request does not restart the period


def test_to_auto_refused_before_clean_period_then_granted() -> None:
    m = make()
    m.request(10.0, req(RequestKind.TO_SHADOW))
    ev = only_refusal(m.request(10.0 + CLEAN_S - 15.0, req(RequestKind.TO_AUTO)))
    assert "15.000 s remain" in ev.reason
    assert mode_of(m) is Mode.SHADOW
    events = m.request(10.0 + CLEAN_S, req(RequestKind.TO_AUTO))
    assert kinds(events) == [EventKind.MODE_CHANGE]
    assert dict(events[0].evidence) == {"from": "shadow", "to": "auto"}
    assert events[0].requester == "alice"
    assert mode_of(m) is Mode.AUTO
    assert m.shadow_clean_since_s is None


@pytest.mark.parametrize("start", [Mode.MANUAL, Mode.SAFE_STOP])
def test_to_auto_only_from_shadow(start: Mode) -> None:
    m = make(start)
    m.request(0.0, req(RequestKind.TO_AUTO))
    ev = only_refusal(m.request(1000.0, req(RequestKind.TO_AUTO)))
    assert "only from shadow" in ev.reason
    assert mode_of(m) is start


def test_to_auto_from_auto_is_refused() -> None:
    m = make()
    t = to_auto(m)
    only_refusal(m.request(t + 1, req(RequestKind.TO_AUTO)))
    assert mode_of(m) is Mode.AUTO


def test_anomaly_in_shadow_restarts_clean_period() -> None:
    m = make()
    m.request(0.0, req(RequestKind.TO_SHADOW))
    m.anomaly(40.0)
    assert m.shadow_clean_since_s == 40.0
    only_refusal(m.request(CLEAN_S, req(RequestKind.TO_AUTO)))
    only_refusal(m.request(40.0 + CLEAN_S - 0.001, req(RequestKind.TO_AUTO)))
    assert kinds(m.request(40.0 + CLEAN_S, req(RequestKind.TO_AUTO))) == [EventKind.MODE_CHANGE]


def test_anomaly_outside_shadow_does_nothing() -> None:
    m = make()
    m.anomaly(1.0)
    assert m.shadow_clean_since_s is None
    assert mode_of(m) is Mode.MANUAL


def test_trip_in_shadow_ends_the_period() -> None:
    m = make()
    m.request(0.0, req(RequestKind.TO_SHADOW))
    m.trip(30.0, "d", "r", Mode.MANUAL)
    assert mode_of(m) is Mode.MANUAL
    m.request(31.0, req(RequestKind.RESET_TRIP))
    m.request(32.0, req(RequestKind.TO_SHADOW))
    only_refusal(m.request(CLEAN_S + 1.0, req(RequestKind.TO_AUTO)))
    assert kinds(m.request(32.0 + CLEAN_S, req(RequestKind.TO_AUTO))) == [EventKind.MODE_CHANGE]


def test_start_in_shadow_starts_period_at_first_time_seen() -> None:
    m = make(Mode.SHADOW)
    assert m.shadow_clean_since_s is None
    m.tick(100.0)
    assert m.shadow_clean_since_s == 100.0
    only_refusal(m.request(100.0 + CLEAN_S - 1, req(RequestKind.TO_AUTO)))
    assert kinds(m.request(100.0 + CLEAN_S, req(RequestKind.TO_AUTO))) == [EventKind.MODE_CHANGE]


# -- time ---------------------------------------------------------------------------------------


def test_backwards_time_does_not_shorten_clean_period() -> None:
    m = make()
    m.request(100.0, req(RequestKind.TO_SHADOW))
    m.tick(50.0)  # clock jumps back 50 s: taken as 100.0
    assert m.last_now_s == 100.0
    # 60 s of the jumped-back clock are only 10 s past the last seen time: not clean enough.
    only_refusal(m.request(50.0 + CLEAN_S, req(RequestKind.TO_AUTO)))
    assert mode_of(m) is Mode.SHADOW
    assert kinds(m.request(100.0 + CLEAN_S, req(RequestKind.TO_AUTO))) == [EventKind.MODE_CHANGE]


def test_backwards_time_stamps_events_with_last_seen_time() -> None:
    m = make()
    m.tick(10.0)
    (ev,) = m.trip(3.0, "d", "r", Mode.MANUAL)
    assert ev.at_s == 10.0


def test_anomaly_at_backwards_time_restarts_at_last_seen() -> None:
    m = make()
    m.request(0.0, req(RequestKind.TO_SHADOW))
    m.tick(50.0)
    m.anomaly(20.0)
    assert m.shadow_clean_since_s == 50.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_time_is_last_seen(bad: float) -> None:
    m = make()
    m.request(10.0, req(RequestKind.TO_SHADOW))
    only_refusal(m.request(bad, req(RequestKind.TO_AUTO)))
    assert m.last_now_s == 10.0
    assert mode_of(m) is Mode.SHADOW


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_time_before_any_time_refuses_moves_toward_ai(bad: float) -> None:
    m = make()
    ev = only_refusal(m.request(bad, req(RequestKind.TO_SHADOW)))
    assert "no finite time" in ev.reason
    only_refusal(m.request(bad, req(RequestKind.BYPASS, detector="d", duration_s=1.0)))
    # ...but moves toward safety still happen.
    assert kinds(m.trip(bad, "d", "r", Mode.SAFE_STOP)) == [EventKind.TRIP, EventKind.MODE_CHANGE]
    assert mode_of(m) is Mode.SAFE_STOP


# -- bypasses -------------------------------------------------------------------------------------


def test_bypass_suppresses_that_detector_only() -> None:
    m = make()
    t = to_auto(m)
    start = m.request(t, req(RequestKind.BYPASS, detector="cusum", duration_s=30.0, reason="x"))
    assert kinds(start) == [EventKind.BYPASS_START]
    assert start[0].name == "cusum"
    assert start[0].requester == "alice"
    assert dict(start[0].evidence)["expires_s"] == t + 30.0
    assert m.bypasses == {"cusum": t + 30.0}
    assert m.is_bypassed("cusum", t + 29.0)
    assert not m.is_bypassed("stale", t + 29.0)

    suppressed = m.trip(t + 10.0, "cusum", "drift", Mode.MANUAL)
    assert kinds(suppressed) == [EventKind.ANOMALY]
    assert suppressed[0].name == "cusum"
    assert "bypass" in suppressed[0].reason
    assert mode_of(m) is Mode.AUTO
    assert not m.latched

    applied = m.trip(t + 11.0, "stale", "old input", Mode.MANUAL)
    assert kinds(applied) == [EventKind.TRIP, EventKind.MODE_CHANGE]
    assert mode_of(m) is Mode.MANUAL
    assert m.latched


def test_bypass_expires_by_itself_at_the_right_time() -> None:
    m = make()
    m.request(100.0, req(RequestKind.BYPASS, detector="d", duration_s=30.0))
    assert m.tick(129.999) == []
    assert m.is_bypassed("d", 129.999)
    assert not m.is_bypassed("d", 130.0)
    (end,) = m.tick(130.0)
    assert (end.kind, end.name, end.reason, end.requester) == (
        EventKind.BYPASS_END,
        "d",
        "expired",
        None,
    )
    assert end.at_s == 130.0
    assert m.bypasses == {}
    assert m.tick(131.0) == []
    assert kinds(m.trip(131.0, "d", "r", Mode.SAFE_STOP)) == [
        EventKind.TRIP,
        EventKind.MODE_CHANGE,
    ]


def test_bypass_is_inactive_at_expiry_even_before_tick() -> None:
    m = make()
    m.request(0.0, req(RequestKind.BYPASS, detector="d", duration_s=5.0))
    assert kinds(m.trip(5.0, "d", "r", Mode.MANUAL)) == [EventKind.TRIP]
    assert m.latched


def test_tick_expires_several_in_expiry_order() -> None:
    m = make()
    m.request(0.0, req(RequestKind.BYPASS, detector="b", duration_s=20.0))
    m.request(0.0, req(RequestKind.BYPASS, detector="a", duration_s=10.0))
    m.request(0.0, req(RequestKind.BYPASS, detector="c", duration_s=50.0))
    assert [e.name for e in m.tick(25.0)] == ["a", "b"]
    assert m.bypasses == {"c": 50.0}


def test_bypass_at_max_is_allowed_longer_is_refused() -> None:
    m = make()
    ok = m.request(0.0, req(RequestKind.BYPASS, detector="d", duration_s=BYPASS_MAX_S))
    assert kinds(ok) == [EventKind.BYPASS_START]
    ev = only_refusal(
        m.request(0.0, req(RequestKind.BYPASS, detector="e", duration_s=BYPASS_MAX_S + 0.1))
    )
    assert "duration_s" in ev.reason
    assert m.bypasses == {"d": BYPASS_MAX_S}


@pytest.mark.parametrize("duration", [None, 0.0, -1.0, math.nan, math.inf, True])
def test_bypass_bad_duration_refused(duration: float | None) -> None:
    m = make()
    only_refusal(m.request(0.0, req(RequestKind.BYPASS, detector="d", duration_s=duration)))
    assert m.bypasses == {}


@pytest.mark.parametrize("detector", [None, ""])
def test_bypass_needs_detector(detector: str | None) -> None:
    m = make()
    ev = only_refusal(m.request(0.0, req(RequestKind.BYPASS, detector=detector, duration_s=1.0)))
    assert "detector" in ev.reason


def test_bypass_replaces_earlier_bypass_of_same_detector() -> None:
    m = make()
    m.request(0.0, req(RequestKind.BYPASS, detector="d", duration_s=10.0))
    (ev,) = m.request(5.0, req(RequestKind.BYPASS, detector="d", duration_s=10.0))
    assert dict(ev.evidence)["replaces_expiry_s"] == 10.0
    assert m.bypasses == {"d": 15.0}


def test_end_bypass_early() -> None:
    m = make()
    m.request(0.0, req(RequestKind.BYPASS, detector="d", duration_s=100.0))
    (end,) = m.request(10.0, req(RequestKind.END_BYPASS, detector="d"))
    assert (end.kind, end.name, end.requester) == (EventKind.BYPASS_END, "d", "alice")
    assert m.bypasses == {}
    assert not m.is_bypassed("d", 11.0)
    assert m.tick(200.0) == []  # no second BYPASS_END
    ev = only_refusal(m.request(11.0, req(RequestKind.END_BYPASS, detector="d")))
    assert "no bypass" in ev.reason


def test_bypassed_trip_in_shadow_restarts_clean_period() -> None:
    m = make()
    m.request(0.0, req(RequestKind.TO_SHADOW))
    m.request(0.0, req(RequestKind.BYPASS, detector="d", duration_s=100.0))
    assert kinds(m.trip(30.0, "d", "r", Mode.MANUAL)) == [EventKind.ANOMALY]
    assert mode_of(m) is Mode.SHADOW
    assert m.shadow_clean_since_s == 30.0


def test_bypass_does_not_clear_latch() -> None:
    m = make()
    m.trip(0.0, "d", "r", Mode.MANUAL)
    m.request(1.0, req(RequestKind.BYPASS, detector="d", duration_s=10.0))
    assert m.latched
    only_refusal(m.request(2.0, req(RequestKind.TO_SHADOW)))


def test_is_bypassed_does_not_advance_clock() -> None:
    m = make()
    m.request(0.0, req(RequestKind.BYPASS, detector="d", duration_s=10.0))
    assert not m.is_bypassed("d", 50.0)
    assert m.last_now_s == 0.0
    assert m.is_bypassed("d", -5.0)  # backwards: taken as the last seen time 0.0


# -- restore after a restart ------------------------------------------------------------


@pytest.mark.parametrize(("recorded", "start", "expected"), [
    (Mode.AUTO, Mode.MANUAL, Mode.MANUAL),
    (Mode.SHADOW, Mode.MANUAL, Mode.MANUAL),
    (Mode.SHADOW, Mode.SHADOW, Mode.MANUAL),
    (Mode.MANUAL, Mode.SAFE_STOP, Mode.SAFE_STOP),
    (Mode.SAFE_STOP, Mode.MANUAL, Mode.SAFE_STOP),
])
def test_restore_never_loosens_the_mode(recorded: Mode, start: Mode, expected: Mode) -> None:
    m = make(start)
    done = m.restore(5.0, recorded, False, None, {})
    assert m.mode is expected and done.mode is expected
    assert not m.latched


def test_restore_latches_and_keeps_an_earlier_reason() -> None:
    m = make()
    m.restore(5.0, Mode.MANUAL, True, "divergence: drifted", {})
    assert m.latched and m.trip_reason == "divergence: drifted"
    # A latch is never cleared by a restore that says it was not latched.
    m.restore(6.0, Mode.MANUAL, False, None, {})
    assert m.latched
    # Still needs an authorised reset.
    assert kinds(m.request(7.0, req(RequestKind.TO_SHADOW))) == [EventKind.REQUEST_REFUSED]


def test_restore_bypasses_with_their_time_left_cut_and_expired() -> None:
    m = make()
    done = m.restore(100.0, Mode.MANUAL, False, None,
                     {"a": 30.0, "b": 0.0, "c": -5.0, "d": math.nan, "e": BYPASS_MAX_S * 3})
    assert m.bypasses == {"a": 130.0, "e": 100.0 + BYPASS_MAX_S}
    assert done.cut == ("e",)
    assert m.is_bypassed("a", 129.0) and not m.is_bypassed("a", 130.0)

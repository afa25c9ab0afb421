"""Random sequences of time, trips, anomalies, ticks and operator requests against the machine.

A small independent model (plain attributes, the rules written out again) predicts the state
and the events of every step; the invariants of the mode machine are checked after each step
against what the step was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gateway.supervisor.events import Event, EventKind
from gateway.supervisor.modes import (
    Mode,
    ModeConfig,
    ModeMachine,
    OperatorRequest,
    RequestKind,
)

CLEAN_S = 30.0
BYPASS_MAX_S = 300.0
DETECTORS = ("a", "b", "c")
RANK = {Mode.AUTO: 0, Mode.SHADOW: 1, Mode.MANUAL: 2, Mode.SAFE_STOP: 3}

durations = st.one_of(
    st.none(),
    st.sampled_from([0.0, -1.0, math.nan, math.inf, BYPASS_MAX_S, BYPASS_MAX_S + 1e-6]),
    st.floats(min_value=-10.0, max_value=BYPASS_MAX_S * 1.5),
    st.floats(min_value=1.0, max_value=BYPASS_MAX_S),
)
time_steps = st.one_of(
    st.floats(min_value=-60.0, max_value=250.0),  # includes backwards jumps
    st.sampled_from([0.0, CLEAN_S, math.nan, math.inf]),
)


@dataclass
class Step:
    """What the latest step was, for the invariants."""

    before: Mode
    events: list[Event]
    request: OperatorRequest | None = None
    is_tick: bool = False
    expect_refused: bool = False
    clean_elapsed_s: float | None = None  # model's clean-shadow time before the step


class ModeMachineModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m: ModeMachine
        self.step: Step | None = None
        # The independent model.
        self.mode = Mode.MANUAL
        self.latched = False
        self.clock: float | None = None  # last finite, non-decreasing time
        self.clean_since: float | None = None
        self.bypasses: dict[str, float] = {}
        # What the supervisor says is wrong with sensing now (empty: healthy).
        self.faults: tuple[str, ...] = ()
        self.now = 1000.0  # raw time fed to the machine (may be non-finite)
        self.base = 1000.0  # finite time the next step is added to

    # -- model helpers ----------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if math.isfinite(now) and (self.clock is None or now >= self.clock):
            self.clock = now
        if self.mode is Mode.SHADOW and self.clean_since is None and self.clock is not None:
            self.clean_since = self.clock

    def _set_mode(self, new: Mode) -> None:
        self.mode = new
        self.clean_since = self.clock if new is Mode.SHADOW else None

    def _clean_elapsed(self) -> float | None:
        if self.mode is not Mode.SHADOW or self.clean_since is None or self.clock is None:
            return None
        return self.clock - self.clean_since

    # -- rules ------------------------------------------------------------------------------

    @initialize(start=st.sampled_from([Mode.MANUAL, Mode.SHADOW, Mode.SAFE_STOP]))
    def start(self, start: Mode) -> None:
        self.m = ModeMachine(
            ModeConfig(start_mode=start, clean_shadow_s=CLEAN_S, bypass_max_s=BYPASS_MAX_S)
        )
        self.mode = start

    @rule(unhealthy=st.booleans())
    def sensing(self, unhealthy: bool) -> None:
        self.faults = ("input.stale.level: level: stale",) if unhealthy else ()
        self.step = None

    @rule(dt=time_steps)
    def time_passes(self, dt: float) -> None:
        now = self.base + dt
        self.now = now
        if math.isfinite(now):
            self.base = now
        self.step = None

    @precondition(lambda self: bool(self.bypasses))
    @rule(data=st.data(), dt=st.floats(min_value=0.0, max_value=CLEAN_S))
    def trip_bypassed(self, data: st.DataObject, dt: float) -> None:
        # Time passes, then a trip from a detector that has a bypass (expired or not): without
        # this rule, a bypassed trip part-way through a clean-shadow period is rare.
        self.time_passes(dt)
        detector = data.draw(st.sampled_from(sorted(self.bypasses)))
        self.trip(detector, Mode.MANUAL)

    # MANUAL targets are favoured: SAFE_STOP trips would keep most runs in SAFE_STOP.
    @rule(
        detector=st.sampled_from(DETECTORS),
        to=st.sampled_from([Mode.MANUAL] * 3 + [Mode.SAFE_STOP]),
    )
    def trip(self, detector: str, to: Mode) -> None:
        before = self.mode
        self._advance(self.now)
        elapsed = self._clean_elapsed()
        events = self.m.trip(self.now, detector, "random", to)
        expiry = self.bypasses.get(detector)
        if expiry is not None and self.clock is not None and self.clock < expiry:
            expected = [EventKind.ANOMALY]
            if self.mode is Mode.SHADOW:
                self.clean_since = self.clock
        else:
            expected = [EventKind.TRIP]
            self.latched = True
            if RANK[to] > RANK[self.mode]:
                self._set_mode(to)
                expected.append(EventKind.MODE_CHANGE)
        assert [e.kind for e in events] == expected
        self.step = Step(before, events, clean_elapsed_s=elapsed)

    @rule()
    def anomaly(self) -> None:
        before = self.mode
        self._advance(self.now)
        self.m.anomaly(self.now)
        if self.mode is Mode.SHADOW and self.clock is not None:
            self.clean_since = self.clock
        self.step = Step(before, [])

    @rule()
    def tick(self) -> None:
        before = self.mode
        self._advance(self.now)
        events = self.m.tick(self.now)
        clock = self.clock
        gone = {d for d, x in self.bypasses.items() if clock is not None and x <= clock}
        for d in gone:
            del self.bypasses[d]
        assert all(e.kind is EventKind.BYPASS_END for e in events)
        assert sorted(e.name for e in events) == sorted(gone)
        self.step = Step(before, events, is_tick=True)

    @rule(
        kind=st.sampled_from(list(RequestKind)),
        authorised=st.sampled_from([True, True, True, False]),
        detector=st.sampled_from([None, "", *DETECTORS, *DETECTORS]),
        duration=durations,
    )
    def request(
        self, kind: RequestKind, authorised: bool, detector: str | None, duration: float | None
    ) -> None:
        self._request(OperatorRequest(kind, "op", authorised, detector, duration, "why"))

    @rule(
        kind=st.sampled_from(
            [
                RequestKind.RESET_TRIP,
                RequestKind.TO_MANUAL,
                RequestKind.TO_SHADOW,
                RequestKind.TO_AUTO,
                RequestKind.TO_AUTO,
            ]
        ),
        dt=st.one_of(
            st.sampled_from([0.0, CLEAN_S / 2, CLEAN_S - 1.0, CLEAN_S, CLEAN_S + 1.0]),
            st.floats(min_value=0.0, max_value=2 * CLEAN_S),
        ),
    )
    def recover(self, kind: RequestKind, dt: float) -> None:
        # Time passes, then an authorised step on the way back to the AI: without this rule
        # trips and refusals dominate random runs and SHADOW -> AUTO is rarely exercised.
        self.time_passes(dt)
        self._request(OperatorRequest(kind, "op", True))

    @rule(
        detector=st.sampled_from(DETECTORS),
        duration=st.floats(min_value=1.0, max_value=BYPASS_MAX_S),
    )
    def bypass(self, detector: str, duration: float) -> None:
        # A valid bypass, so that trips of bypassed detectors (also in SHADOW) are common.
        self._request(OperatorRequest(RequestKind.BYPASS, "op", True, detector, duration))

    def _request(self, req: OperatorRequest) -> None:
        before = self.mode
        self._advance(self.now)
        elapsed = self._clean_elapsed()
        events = self.m.request(self.now, req, self.faults)
        expected = self._model_request(req)
        assert [e.kind for e in events] == expected, (req, events)
        self.step = Step(
            before,
            events,
            request=req,
            expect_refused=expected == [EventKind.REQUEST_REFUSED],
            clean_elapsed_s=elapsed,
        )

    def _model_request(self, req: OperatorRequest) -> list[EventKind]:
        refused = [EventKind.REQUEST_REFUSED]
        change = [EventKind.MODE_CHANGE]
        if not req.authorised:
            return refused
        clock = self.clock
        kind = req.kind
        if kind is RequestKind.TO_SAFE_STOP:
            if self.mode is Mode.SAFE_STOP:
                return []
            self._set_mode(Mode.SAFE_STOP)
            return change
        if kind is RequestKind.TO_MANUAL:
            if self.mode is Mode.MANUAL:
                return []
            if self.mode is Mode.SAFE_STOP and self.faults:
                return refused
            self._set_mode(Mode.MANUAL)
            return change
        if kind is RequestKind.RESET_TRIP:
            if not self.latched or self.faults:
                return refused
            self.latched = False
            return [EventKind.RESET]
        if kind is RequestKind.TO_SHADOW:
            if self.latched or self.mode is not Mode.MANUAL or clock is None:
                return refused
            self._set_mode(Mode.SHADOW)
            return change
        if kind is RequestKind.TO_AUTO:
            elapsed = self._clean_elapsed()
            if self.latched or elapsed is None or elapsed < CLEAN_S:
                return refused
            self._set_mode(Mode.AUTO)
            return change
        if kind is RequestKind.BYPASS:
            d = req.duration_s
            if (
                not req.detector
                or d is None
                or not math.isfinite(d)
                or not 0.0 < d <= BYPASS_MAX_S
                or clock is None
            ):
                return refused
            self.bypasses[req.detector] = clock + d
            return [EventKind.BYPASS_START]
        assert kind is RequestKind.END_BYPASS
        if req.detector is None or req.detector not in self.bypasses:
            return refused
        del self.bypasses[req.detector]
        return [EventKind.BYPASS_END]

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        assert self.m.mode is self.mode
        assert self.m.latched is self.latched
        assert self.m.bypasses == self.bypasses
        assert self.m.last_now_s == self.clock
        assert self.m.shadow_clean_since_s == self.clean_since
        assert (self.m.trip_reason is not None) is self.latched
        # A query at the pending time does not advance the clock but is corrected like it.
        t = self.clock
        if math.isfinite(self.now) and (t is None or self.now >= t):
            t = self.now
        for d in DETECTORS:
            active = d in self.bypasses and t is not None and t < self.bypasses[d]
            assert self.m.is_bypassed(d, self.now) is active

    @invariant()
    def looser_only_by_authorised_request(self) -> None:
        # (1) Toward AUTO only through an authorised request in this very step: TO_SHADOW
        # (MANUAL -> SHADOW), TO_AUTO (SHADOW -> AUTO), or TO_MANUAL out of an operator's
        # SAFE_STOP (the explicit request that leaving SAFE_STOP requires).
        step = self.step
        if step is None or RANK[self.mode] >= RANK[step.before]:
            return
        req = step.request
        assert req is not None, "mode loosened without an operator request"
        assert req.authorised
        allowed = {
            RequestKind.TO_SHADOW: (Mode.MANUAL, Mode.SHADOW),
            RequestKind.TO_AUTO: (Mode.SHADOW, Mode.AUTO),
            RequestKind.TO_MANUAL: (Mode.SAFE_STOP, Mode.MANUAL),
        }
        assert allowed.get(req.kind) == (step.before, self.mode)

    @invariant()
    def auto_only_after_clean_shadow(self) -> None:
        # (2) AUTO entered only from SHADOW after >= CLEAN_S clean (model-measured) seconds.
        step = self.step
        if step is None or self.mode is not Mode.AUTO or step.before is Mode.AUTO:
            return
        assert step.before is Mode.SHADOW
        assert step.clean_elapsed_s is not None
        assert step.clean_elapsed_s >= CLEAN_S

    @invariant()
    def latched_means_ai_out(self) -> None:
        # (3)
        if self.m.latched:
            assert self.m.mode in (Mode.MANUAL, Mode.SAFE_STOP)
            assert self.m.shadow_clean_since_s is None

    @invariant()
    def one_mode_change_event_per_change(self) -> None:
        # (4)
        step = self.step
        if step is None:
            return
        changes = [e for e in step.events if e.kind is EventKind.MODE_CHANGE]
        if self.mode is step.before:
            assert changes == []
        else:
            assert len(changes) == 1
            (ev,) = changes
            assert dict(ev.evidence) == {"from": step.before.value, "to": self.mode.value}
            auto = step.request is None
            assert (ev.requester is None) is auto
            assert ev.reason

    @invariant()
    def no_bypass_outlives_expiry_after_tick(self) -> None:
        # (5)
        step = self.step
        if step is None or not step.is_tick:
            return
        clock = self.m.last_now_s
        if clock is not None:
            assert all(expiry > clock for expiry in self.m.bypasses.values())

    @invariant()
    def every_refusal_is_logged(self) -> None:
        # (6)
        step = self.step
        if step is None or step.request is None:
            return
        refusals = [e for e in step.events if e.kind is EventKind.REQUEST_REFUSED]
        if step.expect_refused or not step.request.authorised:
            assert len(refusals) == 1
            assert len(step.events) == 1
            assert refusals[0].requester == step.request.requester
            assert refusals[0].reason
        else:
            assert refusals == []

    @invariant()
    def events_are_stamped_with_the_clock(self) -> None:
        step = self.step
        if step is None or self.clock is None:
            return
        assert all(e.at_s == self.clock for e in step.events)


ModeMachineModel.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestModeMachine = ModeMachineModel.TestCase

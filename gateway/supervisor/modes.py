"""The mode machine: which controller's output reaches the equipment, and how that may change.

Modes, from least to most safe: ``AUTO`` (AI output applied), ``SHADOW`` (AI computed and
judged, fallback applied), ``MANUAL`` (fallback applied, AI quarantined), ``SAFE_STOP`` (safe
values). Whatever the mode, every written value is still checked against the envelope; the
mode only picks the candidate.

Two kinds of input move the machine, in the spirit of a safety instrumented system
(IEC 61511):

* Detector trips (:meth:`ModeMachine.trip`) are automatic and only ever move toward safety.
  A trip *latches*: the AI stays out until an authorised operator resets the trip, and a reset
  does not move the mode (the operator then brings the AI back explicitly).
* Operator requests (:meth:`ModeMachine.request`), authorised by the ops layer. The only way
  back to the AI is ``MANUAL -> SHADOW -> AUTO``, with ``clean_shadow_s`` seconds of shadow
  operation free of anomalies and trips in between. Nothing automatic ever moves toward
  ``AUTO`` or ``SHADOW``, or out of ``SAFE_STOP``. An operator can always reach ``MANUAL``
  while sensing is healthy, latched or not; a reset succeeds once the trip's cause has
  cleared and is refused with the cause named otherwise (see :meth:`ModeMachine.request`).

Every change is returned as :class:`~gateway.supervisor.events.Event` values, refusals
included, so nothing the machine decides is silent. The machine is pure: no I/O, and time is
injected as ``now_s`` (monotonic seconds). A ``now_s`` earlier than the latest one seen is
taken as the latest one seen (time never runs backwards inside the machine, so a clock jump
can only lengthen the clean-shadow period, never shorten it); a non-finite ``now_s`` is
likewise taken as the latest one seen, and requests that need a real time (``TO_SHADOW``,
``TO_AUTO``, ``BYPASS``) are refused while no finite time has been seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from gateway.supervisor.events import Event, EventKind

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "Mode",
    "ModeConfig",
    "ModeMachine",
    "OperatorRequest",
    "RequestKind",
    "Restored",
]

_MODE_EVENT_NAME: Final = "mode"
_TRIP_EVENT_NAME: Final = "trip"


class Mode(StrEnum):
    """Operating mode. Values match the config's ``start_mode`` spelling."""

    AUTO = "auto"
    SHADOW = "shadow"
    MANUAL = "manual"
    SAFE_STOP = "safe_stop"

    @property
    def safety_rank(self) -> int:
        """0 for AUTO up to 3 for SAFE_STOP: a higher rank is safer."""
        return _SAFETY_RANK[self]


_SAFETY_RANK: Final[dict[Mode, int]] = {
    Mode.AUTO: 0,
    Mode.SHADOW: 1,
    Mode.MANUAL: 2,
    Mode.SAFE_STOP: 3,
}


class RequestKind(StrEnum):
    """What an operator asks the mode machine to do."""

    TO_SHADOW = "to_shadow"
    TO_AUTO = "to_auto"
    TO_MANUAL = "to_manual"
    TO_SAFE_STOP = "to_safe_stop"
    RESET_TRIP = "reset_trip"
    BYPASS = "bypass"
    END_BYPASS = "end_bypass"


@dataclass(frozen=True)
class OperatorRequest:
    """One operator action, already authenticated by the ops layer.

    ``authorised`` is the ops layer's verdict; the machine refuses (and reports) an
    unauthorised request without looking further. ``detector`` names the detector for
    ``BYPASS`` and ``END_BYPASS``; ``duration_s`` is the bypass length in seconds. Bad values
    are not raised here: the machine refuses the request with a ``REQUEST_REFUSED`` event,
    because operator input must never stop the control loop.
    """

    kind: RequestKind
    requester: str
    authorised: bool
    detector: str | None = None
    duration_s: float | None = None
    reason: str = ""


def _check_positive(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"`{key}` must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"`{key}` must be finite and > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModeConfig:
    """Mode policy.

    ``start_mode`` is the mode at construction (a :class:`Mode` or its string value; AUTO is
    refused: the AI must earn its way in through SHADOW). ``clean_shadow_s`` is how long, in
    seconds, SHADOW must run without anomalies or trips before TO_AUTO is granted.
    ``bypass_max_s`` is the longest bypass an operator may set, in seconds. Both must be
    finite and > 0. ``bypass_max_concurrent`` caps the bypasses in force at once (IEC 61511:
    every bypass is a reduced protection). A bypass longer than ``bypass_second_approval_s``
    (None: never) takes effect only when a second, different requester asks for the same
    detector and duration within ``second_approval_window_s``. ``detectors`` names the
    detectors that may be bypassed (the supervisor's
    :attr:`~gateway.supervisor.core.Supervisor.detector_names`); None accepts any name.
    Raises ``ValueError`` naming the field.
    """

    start_mode: Mode = Mode.MANUAL
    clean_shadow_s: float
    bypass_max_s: float
    detectors: frozenset[str] | None = None
    bypass_max_concurrent: int = 3
    bypass_second_approval_s: float | None = None
    second_approval_window_s: float = 300.0

    def __post_init__(self) -> None:
        try:
            start = Mode(self.start_mode)
        except ValueError:
            raise ValueError(
                f"`start_mode` must be one of {[m.value for m in Mode]}, got {self.start_mode!r}"
            ) from None
        if start is Mode.AUTO:
            raise ValueError("`start_mode` must not be auto: the AI enters through shadow")
        object.__setattr__(self, "start_mode", start)
        _check_positive("clean_shadow_s", self.clean_shadow_s)
        _check_positive("bypass_max_s", self.bypass_max_s)
        if isinstance(self.bypass_max_concurrent, bool) or not isinstance(
                self.bypass_max_concurrent, int) or self.bypass_max_concurrent < 1:
            raise ValueError(f"`bypass_max_concurrent` must be an integer >= 1, got "
                             f"{self.bypass_max_concurrent!r}")
        if self.bypass_second_approval_s is not None:
            _check_positive("bypass_second_approval_s", self.bypass_second_approval_s)
        _check_positive("second_approval_window_s", self.second_approval_window_s)
        if self.detectors is not None:
            names = frozenset(self.detectors)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError("`detectors` must be None or non-empty detector names")
            object.__setattr__(self, "detectors", names)


class ModeMachine:
    """The supervisor's mode state and the rules that change it.

    State: :attr:`mode`, :attr:`latched` and :attr:`trip_reason` (the first trip since the
    last reset), :attr:`shadow_clean_since_s` (start of the current clean-shadow period; None
    outside SHADOW) and :attr:`bypasses` (detector name -> expiry time in seconds).

    Every method that takes ``now_s`` returns the events it caused (possibly none), in order.
    The only exceptions raised are ``ValueError`` for programming errors (a trip target that
    is not MANUAL or SAFE_STOP).
    """

    __slots__ = (
        "_bypasses",
        "_config",
        "_last_now_s",
        "_latched",
        "_mode",
        "_pending_bypass",
        "_shadow_clean_since_s",
        "_trip_reason",
    )

    def __init__(self, config: ModeConfig) -> None:
        self._config = config
        self._mode: Mode = config.start_mode
        self._latched = False
        self._trip_reason: str | None = None
        # Starting in SHADOW, the clean period starts at the first finite time seen.
        self._shadow_clean_since_s: float | None = None
        self._bypasses: dict[str, float] = {}
        # Long bypasses awaiting their second approver: detector -> (first requester,
        # duration_s, when the request lapses).
        self._pending_bypass: dict[str, tuple[str, float, float]] = {}
        self._last_now_s: float | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def config(self) -> ModeConfig:
        return self._config

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def latched(self) -> bool:
        """True while a trip is latched (until an authorised RESET_TRIP)."""
        return self._latched

    @property
    def trip_reason(self) -> str | None:
        """``"<detector>: <reason>"`` of the trip that latched, None when not latched."""
        return self._trip_reason

    @property
    def shadow_clean_since_s(self) -> float | None:
        """Start of the current clean-shadow period in seconds; None outside SHADOW."""
        return self._shadow_clean_since_s

    @property
    def bypasses(self) -> dict[str, float]:
        """A copy of the bypasses not yet expired by :meth:`tick`: detector -> expiry (s)."""
        return dict(self._bypasses)

    @property
    def last_now_s(self) -> float | None:
        """Latest finite time seen, in seconds (the machine's clock); None before any."""
        return self._last_now_s

    def is_bypassed(self, detector: str, now_s: float) -> bool:
        """True if ``detector`` has a bypass whose expiry is after ``now_s``.

        ``now_s`` is corrected like everywhere else (backwards or non-finite -> latest seen),
        but a query does not advance the machine's clock.
        """
        expiry = self._bypasses.get(detector)
        if expiry is None:
            return False
        t = self._effective(now_s)
        return t is not None and t < expiry

    # -- inputs --------------------------------------------------------------------------

    def trip(self, now_s: float, detector: str, reason: str, target: Mode) -> list[Event]:
        """A detector demands a move to ``target`` (MANUAL or SAFE_STOP) and a latch.

        The mode moves to ``target`` only if that is safer than the current mode (a trip never
        loosens). If ``detector`` is bypassed at ``now_s`` the trip is not applied and an
        ANOMALY event says so; in SHADOW it still restarts the clean-shadow period, since the
        AI's behaviour alarmed a detector. While already latched, the trip is reported (TRIP)
        and may still tighten the mode, but :attr:`trip_reason` keeps the first trip.

        Raises ``ValueError`` if ``target`` is not MANUAL or SAFE_STOP.
        """
        if not isinstance(target, Mode) or target not in (Mode.MANUAL, Mode.SAFE_STOP):
            raise ValueError(f"`target` of a trip must be manual or safe_stop, got {target!r}")
        t = self._advance(now_s)
        at = _at(t, now_s)
        target_ev = ("target", target.value)
        expiry = self._bypasses.get(detector)
        if expiry is not None and t is not None and t < expiry:
            if self._mode is Mode.SHADOW:
                self._shadow_clean_since_s = t
            return [
                Event(
                    at,
                    EventKind.ANOMALY,
                    detector,
                    f"trip of bypassed detector not applied: {reason}",
                    None,
                    (target_ev, ("bypass_expires_s", expiry)),
                )
            ]
        events: list[Event]
        if self._latched:
            first = self._trip_reason or ""
            events = [
                Event(
                    at,
                    EventKind.TRIP,
                    detector,
                    reason,
                    None,
                    (target_ev, ("already_latched_by", first)),
                )
            ]
        else:
            self._latched = True
            self._trip_reason = f"{detector}: {reason}"
            events = [Event(at, EventKind.TRIP, detector, reason, None, (target_ev,))]
        if target.safety_rank > self._mode.safety_rank:
            events.append(self._change_mode(at, target, f"trip by {detector}: {reason}", None))
        return events

    def anomaly(self, now_s: float) -> None:
        """The AI misbehaved without tripping (e.g. a clamp): restart the clean-shadow period.

        Outside SHADOW there is no clean period to restart, and nothing happens.
        """
        t = self._advance(now_s)
        if self._mode is Mode.SHADOW and t is not None:
            self._shadow_clean_since_s = t

    def tick(self, now_s: float) -> list[Event]:
        """Expire bypasses whose expiry is at or before ``now_s``; call once per cycle."""
        t = self._advance(now_s)
        if t is None or not self._bypasses:
            return []
        expired = sorted(
            ((expiry, det) for det, expiry in self._bypasses.items() if expiry <= t),
        )
        events: list[Event] = []
        for expiry, det in expired:
            del self._bypasses[det]
            events.append(
                Event(t, EventKind.BYPASS_END, det, "expired", None, (("expired_at_s", expiry),))
            )
        return events

    def request(self, now_s: float, req: OperatorRequest,
                sensing_faults: Sequence[str] = ()) -> list[Event]:
        """Apply an operator request, or refuse it with a REQUEST_REFUSED event whose reason
        says why.

        ``sensing_faults`` describes what is wrong with sensing now (the input-health findings
        of the latest step that are not bypassed, e.g. ``"input.stale.level: ..."``); empty
        means sensing is healthy. It is the cause of a trip that persists; every other cause
        (an AI command that broke a trip constraint, an AI that went silent) ended when the AI
        was taken out of control, and its detector does not latch again until the AI is back
        on trial.

        Rules (any refusal changes nothing):

        * not ``authorised``: refused.
        * TO_SAFE_STOP: granted from any mode.
        * TO_MANUAL: granted from AUTO and SHADOW; from SAFE_STOP whenever sensing is healthy,
          latched or not (the latch stays: the AI stays out until a reset), and refused with
          the faults named while it is not (the fallback controllers read the same sensors).
        * A request for the current mode (TO_MANUAL in MANUAL, TO_SAFE_STOP in SAFE_STOP)
          changes nothing and returns no event.
        * RESET_TRIP: clears the latch, mode unchanged; refused if nothing is latched, and
          refused with the faults named while sensing is unhealthy (the trip would latch
          again at the next step).
        * TO_SHADOW: only from MANUAL and only when not latched; starts the clean period.
        * TO_AUTO: only from SHADOW, after ``clean_shadow_s`` of clean shadow time; the
          refusal says how many seconds remain.
        * BYPASS: needs a ``detector`` the config names (when it names any; the refusal lists
          them) and ``duration_s`` in ``(0, bypass_max_s]`` (the refusal states the maximum);
          sets expiry ``now_s + duration_s``, replacing an earlier bypass of that detector.
        * END_BYPASS: ends the detector's bypass; refused if it has none.
        """
        t = self._advance(now_s)
        at = _at(t, now_s)
        if not req.authorised:
            return [self._refuse(at, req, "requester not authorised")]
        mode = self._mode
        match req.kind:
            case RequestKind.TO_SAFE_STOP:
                if mode is Mode.SAFE_STOP:
                    return []
                return [self._operator_change(at, Mode.SAFE_STOP, req)]
            case RequestKind.TO_MANUAL:
                if mode is Mode.MANUAL:
                    return []
                if mode is Mode.SAFE_STOP and sensing_faults:
                    return [self._refuse(at, req, f"{_sensing_text(sensing_faults)}; the plant "
                                                  "stays in safe_stop until sensing is healthy")]
                return [self._operator_change(at, Mode.MANUAL, req)]
            case RequestKind.RESET_TRIP:
                if self._latched and sensing_faults:
                    return [self._refuse(at, req, f"the cause has not cleared: "
                                                  f"{_sensing_text(sensing_faults)}")]
                return [self._reset(at, req)]
            case RequestKind.TO_SHADOW:
                if self._latched:
                    return [self._refuse(at, req, f"{self._latch_text()}; reset the trip first")]
                if mode is not Mode.MANUAL:
                    hint = "; go to manual first" if mode is Mode.SAFE_STOP else ""
                    return [
                        self._refuse(at, req, f"allowed only from manual, mode is {mode}{hint}")
                    ]
                if t is None:
                    return [self._refuse(at, req, "no finite time seen yet")]
                event = self._operator_change(at, Mode.SHADOW, req)
                self._shadow_clean_since_s = t
                return [event]
            case RequestKind.TO_AUTO:
                return [self._to_auto(t, at, req)]
            case RequestKind.BYPASS:
                return [self._bypass(t, at, req)]
            case RequestKind.END_BYPASS:
                return [self._end_bypass(at, req)]
            case _:
                return [self._refuse(at, req, f"unknown request kind {req.kind!r}")]

    # -- helpers -------------------------------------------------------------------------

    def _effective(self, now_s: float) -> float | None:
        last = self._last_now_s
        if not math.isfinite(now_s) or (last is not None and now_s < last):
            return last
        return float(now_s)

    def _advance(self, now_s: float) -> float | None:
        t = self._effective(now_s)
        if t is not None:
            self._last_now_s = t
            if self._mode is Mode.SHADOW and self._shadow_clean_since_s is None:
                self._shadow_clean_since_s = t  # started in SHADOW: the clean period begins
        return t

    def _latch_text(self) -> str:
        return f"trip latched ({self._trip_reason})"

    def _change_mode(self, at: float, new: Mode, reason: str, requester: str | None) -> Event:
        old = self._mode
        self._mode = new
        # Leaving SHADOW ends the clean period; entering SHADOW sets it (the caller does).
        self._shadow_clean_since_s = None
        return Event(
            at,
            EventKind.MODE_CHANGE,
            _MODE_EVENT_NAME,
            f"{old} -> {new}: {reason}",
            requester,
            (("from", old.value), ("to", new.value)),
        )

    def _operator_change(self, at: float, new: Mode, req: OperatorRequest) -> Event:
        why = f"operator request {req.kind}" + (f": {req.reason}" if req.reason else "")
        return self._change_mode(at, new, why, req.requester)

    def _refuse(self, at: float, req: OperatorRequest, why: str) -> Event:
        evidence: tuple[tuple[str, float | str], ...] = (
            ("request", str(req.kind)),
            ("mode", self._mode.value),
        )
        if req.detector is not None:
            evidence += (("detector", req.detector),)
        if req.reason:
            evidence += (("request_reason", req.reason),)
        return Event(
            at,
            EventKind.REQUEST_REFUSED,
            str(req.kind),
            f"{req.kind} refused: {why}",
            req.requester,
            evidence,
        )

    def _reset(self, at: float, req: OperatorRequest) -> Event:
        if not self._latched:
            return self._refuse(at, req, "no trip is latched")
        reason = self._trip_reason or ""
        self._latched = False
        self._trip_reason = None
        return Event(
            at,
            EventKind.RESET,
            _TRIP_EVENT_NAME,
            f"trip reset, mode stays {self._mode}" + (f": {req.reason}" if req.reason else ""),
            req.requester,
            (("trip_reason", reason), ("mode", self._mode.value)),
        )

    def _to_auto(self, t: float | None, at: float, req: OperatorRequest) -> Event:
        if self._mode is not Mode.SHADOW:
            return self._refuse(at, req, f"allowed only from shadow, mode is {self._mode}")
        if self._latched:  # unreachable while trips always leave SHADOW; kept as a guard
            return self._refuse(at, req, f"{self._latch_text()}; reset the trip first")
        since = self._shadow_clean_since_s
        if t is None or since is None:
            return self._refuse(at, req, "clean-shadow period has not started")
        need = self._config.clean_shadow_s
        clean = t - since
        if clean < need:
            return self._refuse(
                at,
                req,
                f"shadow clean for {clean:.3f} s of {need:.3f} s; {need - clean:.3f} s remain",
            )
        return self._operator_change(at, Mode.AUTO, req)

    def _bypass(self, t: float | None, at: float, req: OperatorRequest) -> Event:
        detector = req.detector
        if not detector:
            return self._refuse(at, req, "a detector name is required")
        known = self._config.detectors
        if known is not None and detector not in known:
            return self._refuse(at, req, f"unknown detector {detector!r}; known detectors: "
                                         f"{', '.join(sorted(known))}")
        duration = req.duration_s
        max_s = self._config.bypass_max_s
        if (
            duration is None
            or isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not math.isfinite(duration)
            or not 0.0 < duration <= max_s
        ):
            return self._refuse(at, req, f"duration_s must be in (0, {max_s:g}] (bypass_max_s "
                                         f"{max_s:g} s), got {duration!r}")
        if t is None:
            return self._refuse(at, req, "no finite time seen yet")
        cap = self._config.bypass_max_concurrent
        in_force = {d for d, e in self._bypasses.items() if e > t}
        if detector not in in_force and len(in_force) >= cap:
            return self._refuse(at, req, f"{len(in_force)} bypasses already in force "
                                         f"(bypass_max_concurrent {cap}): "
                                         f"{', '.join(sorted(in_force))}")
        approvers: tuple[tuple[str, float | str], ...] = ()
        second_after = self._config.bypass_second_approval_s
        if second_after is not None and float(duration) > second_after:
            pending = self._pending_bypass.get(detector)
            if (pending is None or pending[2] <= t or pending[1] != float(duration)
                    or pending[0] == req.requester):
                window = self._config.second_approval_window_s
                if pending is not None and pending[0] == req.requester and pending[2] > t:
                    why = "the second approver must be someone else"
                else:
                    self._pending_bypass[detector] = (req.requester, float(duration), t + window)
                    why = (f"a bypass over {second_after:g} s needs a second approver: another "
                           f"person must request the same bypass ({detector}, "
                           f"{float(duration):g} s) within {window:g} s")
                return self._refuse(at, req, why)
            del self._pending_bypass[detector]
            approvers = (("first_approver", pending[0]), ("second_approver", req.requester))
        expiry = t + float(duration)
        evidence: tuple[tuple[str, float | str], ...] = (
            ("duration_s", float(duration)),
            ("expires_s", expiry),
            *approvers,
        )
        previous = self._bypasses.get(detector)
        if previous is not None:
            evidence += (("replaces_expiry_s", previous),)
        self._bypasses[detector] = expiry
        return Event(
            at,
            EventKind.BYPASS_START,
            detector,
            f"bypass for {float(duration)} s" + (f": {req.reason}" if req.reason else ""),
            req.requester,
            evidence,
        )

    def _end_bypass(self, at: float, req: OperatorRequest) -> Event:
        detector = req.detector
        if not detector or detector not in self._bypasses:
            return self._refuse(at, req, f"no bypass of detector {detector!r}")
        expiry = self._bypasses.pop(detector)
        return Event(
            at,
            EventKind.BYPASS_END,
            detector,
            "ended by operator" + (f": {req.reason}" if req.reason else ""),
            req.requester,
            (("expires_s", expiry),),
        )

    # -- restart -------------------------------------------------------------------------
    # Kept apart from request handling: restoring is not a request, needs no authorisation,
    # and only ever tightens (except for bypasses, which are restored as recorded, cut to
    # their remaining time).

    def restore(self, now_s: float, mode: Mode, latched: bool, trip_reason: str | None,
                bypasses_left_s: Mapping[str, float]) -> Restored:
        """Take back the state a previous run of the gateway recorded (call once, at start,
        before the first step). Returns what was actually restored.

        Never toward less safety than the record or the current state: the mode becomes the
        safer of the current mode and the recorded one, with AUTO and SHADOW recorded taken as
        MANUAL (the AI earns its way back through SHADOW after a restart); a recorded latch
        latches (keeping the current trip reason if already latched). A bypass comes back
        with its remaining time ``bypasses_left_s[detector]`` (seconds from ``now_s``), cut
        to ``bypass_max_s``; one with no time left (<= 0, or not finite) is not restored,
        nor are any while no finite time is known. No events are returned: the runtime
        records the restore as a whole (what the record said, and what was restored).
        """
        recorded = Mode(mode)
        if recorded in (Mode.AUTO, Mode.SHADOW):
            recorded = Mode.MANUAL
        if recorded.safety_rank > self._mode.safety_rank:
            self._mode = recorded
            self._shadow_clean_since_s = None
        if latched and not self._latched:
            self._latched = True
            self._trip_reason = trip_reason or "restored after restart"
        t = self._advance(now_s)
        restored: dict[str, float] = {}
        cut: list[str] = []
        for detector, left_s in bypasses_left_s.items():
            if (t is None or isinstance(left_s, bool) or not isinstance(left_s, int | float)
                    or not math.isfinite(left_s) or left_s <= 0.0):
                continue
            if left_s > self._config.bypass_max_s:
                cut.append(detector)
            self._bypasses[detector] = t + min(float(left_s), self._config.bypass_max_s)
            restored[detector] = self._bypasses[detector] - t
        return Restored(self._mode, self._latched, self._trip_reason, restored, tuple(cut))


    @property
    def latch(self) -> tuple[bool, str | None]:
        """Whether a trip is latched, and its reason (for a forensic checkpoint)."""
        return self._latched, self._trip_reason

    def replay_latch(self, latched: bool, trip_reason: str | None) -> None:
        """Set the trip latch as a recorded run had it. For forensic replay only, like
        :meth:`replay_from`; a live gateway never calls it."""
        self._latched = bool(latched)
        self._trip_reason = trip_reason if latched else None

    def replay_from(self, mode: Mode, shadow_clean_since_s: float | None = None) -> None:
        """Put the machine in ``mode`` as a recorded run was, AUTO included, with the clean
        shadow period begun at ``shadow_clean_since_s`` (kept unless given). For forensic
        replay only, which reproduces a window of a run in which the AI had earned control;
        a live gateway never calls it (it starts through :meth:`restore`, which only ever
        tightens). No events: the replay compares decisions, not how the mode was reached."""
        self._mode = Mode(mode)
        if shadow_clean_since_s is not None:
            self._shadow_clean_since_s = shadow_clean_since_s


@dataclass(frozen=True)
class Restored:
    """What :meth:`ModeMachine.restore` restored: the mode and latch now in force, and each
    restored bypass's remaining seconds (``cut``: those cut to ``bypass_max_s``)."""

    mode: Mode
    latched: bool
    trip_reason: str | None
    bypasses_left_s: Mapping[str, float]
    cut: tuple[str, ...] = ()


def _sensing_text(faults: Sequence[str]) -> str:
    return "sensing is unhealthy (" + "; ".join(faults) + ")"


def _at(t: float | None, now_s: float) -> float:
    # Before any finite time is seen, an event carries the (non-finite) time it was given
    # rather than an invented one.
    return t if t is not None else float(now_s)

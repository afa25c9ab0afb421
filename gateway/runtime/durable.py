"""The gateway's safety state across restarts, kept in the audit chain.

What must survive a restart: the mode, a latched trip and its reason, the bypasses in force
with their expiry, the quarantined model, and the open incidents (those live in the chain
already, as ``incident`` records). The durable copy is the audit database itself, not a state
file beside it:

- it is already the durable, hash-chained record of every change (``synchronous=FULL``); a
  second file would be a second truth that can disagree with it, and would need the same
  cross-check anyway;
- a ``state`` record (:meth:`SafetyState.to_json`) is appended in the cycle whose events
  changed the state, in the same ordered stream as the events themselves, and shipped to the
  writer at once; the ``start`` and ``shutdown`` records carry the state too;
- reading it back is a backward scan from the head for the last record that carries a state.

Restoring cross-checks that state against the incidents: an open incident the state does not
list (opened after the state was written, in a run that ended before the next one reached the
disk) latches the trip it records. Bypass expiry is stored as wall-clock time (monotonic
clocks restart with the process); an expired bypass is not restored.

A run that ends without its ``shutdown`` record ended uncleanly: :func:`read_previous` finds
where its records stop (see :class:`Previous`).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.audit.store import AuditError, open_read
from gateway.supervisor.modes import Mode

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Mapping

    from gateway.incident.model import Incident

__all__ = ["STATE_KINDS", "Previous", "RestorePlan", "SafetyState", "plan_restore",
           "read_previous"]

# Records that carry a state, and those that begin and end a run.
STATE_KINDS = ("state", "start", "shutdown")
_RUN_KINDS = ("config_load", "shutdown")


@dataclass(frozen=True)
class SafetyState:
    """The safety state of a running gateway. ``bypasses``: ``(detector, expiry)`` with the
    expiry in wall-clock UTC seconds; ``quarantined``: ``(model sha256, reason)``."""

    mode: Mode
    latched: bool
    trip_reason: str | None
    bypasses: tuple[tuple[str, float], ...] = ()
    quarantined: tuple[str, str] | None = None
    open_incidents: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "latched": self.latched,
                "trip_reason": self.trip_reason,
                "bypasses": {d: {"expires_wall_s": e} for d, e in self.bypasses},
                "quarantined": None if self.quarantined is None else {
                    "sha256": self.quarantined[0], "reason": self.quarantined[1]},
                "open_incidents": list(self.open_incidents)}

    @classmethod
    def from_json(cls, data: object) -> SafetyState:
        """Raises ``ValueError`` for anything malformed."""
        if not isinstance(data, dict):
            raise ValueError("state is not an object")
        mode = Mode(str(data.get("mode")))
        latched = data.get("latched")
        if not isinstance(latched, bool):
            raise ValueError("latched is not a boolean")
        reason = data.get("trip_reason")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("trip_reason is not text")
        raw = data.get("bypasses", {})
        if not isinstance(raw, dict):
            raise ValueError("bypasses is not an object")
        bypasses = []
        for det, value in raw.items():
            expiry = value.get("expires_wall_s") if isinstance(value, dict) else None
            if not isinstance(expiry, int | float) or isinstance(expiry, bool):
                raise ValueError(f"bypass {det!r} has no expiry")
            bypasses.append((str(det), float(expiry)))
        q = data.get("quarantined")
        quarantined = None
        if q is not None:
            if not (isinstance(q, dict) and isinstance(q.get("sha256"), str)
                    and isinstance(q.get("reason"), str)):
                raise ValueError("quarantined is malformed")
            quarantined = (q["sha256"], q["reason"])
        incidents = data.get("open_incidents", [])
        if not isinstance(incidents, list) or not all(isinstance(i, str) for i in incidents):
            raise ValueError("open_incidents is not a list of ids")
        return cls(mode, latched, reason, tuple(bypasses), quarantined, tuple(incidents))


@dataclass(frozen=True)
class Previous:
    """What the audit chain says about the runs before this one.

    ``clean`` is None when no run wrote to this chain before; True when the last run's
    ``config_load`` (its first record) is followed by its ``shutdown``; False otherwise: an
    unclean end. ``last_seq``/``last_at_s``/``last_kind``: the chain's head before this run
    (the last record that reached the disk); ``run_seq``: the previous run's first record.
    ``state`` is the last recorded state (None: none recorded, or unreadable, see
    ``problem``) and ``state_seq`` its record."""

    clean: bool | None
    last_seq: int = 0
    last_at_s: float = 0.0
    last_kind: str = ""
    run_seq: int = 0
    state: SafetyState | None = None
    state_seq: int = 0
    stopped_by: str | None = None
    problem: str | None = None

    def unclean_window(self, now_wall_s: float) -> dict[str, Any]:
        """The records an unclean end may have lost: those the previous run appended after
        its last committed record (``after_seq`` at ``after_wall_s``) and before it died,
        which is before this run's first record (``until_wall_s``). They never got a
        sequence number: the chain itself has no gap, the loss is between two seqs."""
        return {"after_seq": self.last_seq, "after_kind": self.last_kind,
                "after_wall_s": self.last_at_s, "until_wall_s": now_wall_s,
                "previous_run_from_seq": self.run_seq,
                "may_be_missing": (
                    "records the previous run appended after seq "
                    f"{self.last_seq}: at least those of its last cycle not yet handed to "
                    "its audit writer, and those its writer had received but not committed "
                    "(about one flush interval's, more if the writer was behind, down or "
                    "killed with it); among them possibly a trip, a mode change or an "
                    "operator action of its last moments")}


def read_previous(path: str | os.PathLike[str]) -> Previous:
    """Read the chain at ``path`` (read-only; the writer may be open). A missing or unusable
    database gives ``Previous(None)`` with ``problem`` set."""
    try:
        conn, _ = open_read(path)
    except AuditError as exc:
        return Previous(None, problem=str(exc))
    try:
        head = conn.execute("SELECT seq, at_s, kind FROM records ORDER BY seq DESC LIMIT 1"
                            ).fetchone()
        if head is None:
            return Previous(None)
        run = conn.execute(
            f"SELECT seq, kind, payload FROM records WHERE kind IN ({_marks(_RUN_KINDS)}) "
            "ORDER BY seq DESC LIMIT 1", _RUN_KINDS).fetchone()
        state_row = conn.execute(
            f"SELECT seq, payload FROM records WHERE kind IN ({_marks(STATE_KINDS)}) "
            "ORDER BY seq DESC LIMIT 1", STATE_KINDS).fetchone()
        run_seq = 0
        if run is not None and run[1] == "shutdown":
            first = conn.execute("SELECT seq FROM records WHERE kind = 'config_load' AND "
                                 "seq < ? ORDER BY seq DESC LIMIT 1", (run[0],)).fetchone()
            run_seq = first[0] if first is not None else 0
        elif run is not None:
            run_seq = run[0]
    except sqlite3.Error as exc:
        return Previous(None, problem=f"{path}: cannot read: {exc}")
    finally:
        conn.close()
    clean = None if run is None else run[1] == "shutdown"
    stopped_by = None
    if run is not None and run[1] == "shutdown":
        with contextlib.suppress(ValueError, AttributeError):
            cause = json.loads(run[2]).get("signal")
            stopped_by = cause if isinstance(cause, str) else None
    state: SafetyState | None = None
    problem = None
    state_seq = 0
    if state_row is not None:
        try:
            payload = json.loads(state_row[1])
            if not isinstance(payload, dict):
                raise ValueError("payload is not an object")
            if "state" in payload:  # an old shutdown record has none: no state recorded
                state = SafetyState.from_json(payload["state"])
                state_seq = state_row[0]
        except ValueError as exc:
            problem = f"state record seq {state_row[0]} unreadable: {exc}"
    return Previous(clean, head[0], float(head[1]), head[2], run_seq, state, state_seq,
                    stopped_by, problem)


def _marks(values: tuple[str, ...]) -> str:
    return ", ".join("?" * len(values))


@dataclass(frozen=True)
class RestorePlan:
    """What to restore (before the mode machine's own safety rules): ``bypasses_left_s`` are
    seconds left from now; ``expired`` the recorded bypasses not restored; ``quarantined``
    the quarantine to keep (None when lifted, with ``quarantine_lifted`` saying why);
    ``latched_by_incidents``: open incidents the recorded state did not know of, which latch
    the trip they record."""

    mode: Mode
    latched: bool
    trip_reason: str | None
    bypasses_left_s: Mapping[str, float]
    expired: tuple[str, ...]
    quarantined: tuple[str, str] | None
    quarantine_lifted: str | None
    open_incidents: tuple[str, ...]
    latched_by_incidents: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "latched": self.latched,
                "trip_reason": self.trip_reason,
                "bypasses_left_s": dict(self.bypasses_left_s),
                "bypasses_expired": list(self.expired),
                "quarantined": None if self.quarantined is None else {
                    "sha256": self.quarantined[0], "reason": self.quarantined[1]},
                "quarantine_lifted": self.quarantine_lifted,
                "open_incidents": list(self.open_incidents),
                "latched_by_incidents": list(self.latched_by_incidents)}


def plan_restore(state: SafetyState | None, open_incidents: Iterable[Incident],
                 loaded_sha256: str | None, now_wall_s: float) -> RestorePlan:
    """Pure: what a starting gateway takes back from ``state`` (the last recorded one, None
    if none) and the chain's open incidents, at wall-clock time ``now_wall_s``, with the
    model ``loaded_sha256`` loaded.

    A quarantine stays while the quarantined model is the one loaded (loading another
    version is how it is lifted). An open incident the state does not list latches its
    trip, and brings the mode at least to the one its trip left (MANUAL or SAFE_STOP)."""
    if state is None:
        state = SafetyState(Mode.MANUAL, False, None)
    mode = state.mode
    latched = state.latched
    reason = state.trip_reason
    known = set(state.open_incidents)
    incidents = tuple(open_incidents)
    unknown = tuple(i for i in incidents if i.id not in known)
    for incident in unknown:
        if not latched:
            latched = True
            reason = (f"{incident.trigger.detector}: {incident.trigger.reason} "
                      f"(incident {incident.id})")
        try:
            after = Mode(incident.mode_after_trip)
        except ValueError:
            after = Mode.MANUAL
        if after.safety_rank > mode.safety_rank:
            mode = after
    left: dict[str, float] = {}
    expired: list[str] = []
    for detector, expiry in state.bypasses:
        rest = expiry - now_wall_s
        if math.isfinite(rest) and rest > 0.0:
            left[detector] = rest
        else:
            expired.append(detector)
    quarantined = state.quarantined
    lifted = None
    if quarantined is not None and quarantined[0] != loaded_sha256:
        lifted = (f"model {quarantined[0]} was quarantined ({quarantined[1]}); the model "
                  f"loaded now is {loaded_sha256 or 'none'}")
        quarantined = None
    return RestorePlan(mode, latched, reason, left, tuple(expired), quarantined, lifted,
                       tuple(i.id for i in incidents), tuple(i.id for i in unknown))

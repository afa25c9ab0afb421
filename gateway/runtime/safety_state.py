"""The safety state across restarts: what the previous run left, what this one takes back, and
a record whenever it changes (see ``gateway.runtime.durable`` for the rules)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.runtime.durable import Previous, RestorePlan, SafetyState, plan_restore, read_previous

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.incident.manager import IncidentManager
    from gateway.runtime.records import Records
    from gateway.supervisor.core import Supervisor

log = logging.getLogger("gateway.runtime")


class DurableState:
    """Mode, latch, trip reason, bypasses, quarantine and open incidents, as recorded.

    ``quarantined`` is the model quarantined by the playbook (its sha256 and why): requests
    that would give it control again (SHADOW, AUTO) are refused while it is the loaded model.
    """

    def __init__(self, records: Callable[[], Records], clock: Callable[[], float],
                 wall_clock: Callable[[], float]) -> None:
        self._records = records
        self.clock = clock
        self.wall_clock = wall_clock
        self.previous: Previous = Previous(None, problem="not read yet")
        self.restored: RestorePlan | None = None
        self.quarantined: tuple[str, str] | None = None
        self.supervisor: Supervisor | None = None
        self.incidents: IncidentManager | None = None
        self._key: tuple[object, ...] | None = None

    def read_previous(self) -> None:
        """Read how the previous run ended and the state it recorded; record an unclean end.
        Called once the writer has the database (a dead run's writer has then finished its
        last commits) and before this run's first record."""
        records = self._records()
        audit = records.audit
        if audit is None:
            self.previous = Previous(None, problem="no audit log: nothing to restore from")
            return
        previous = read_previous(audit.path)
        self.previous = previous
        if previous.problem is not None:
            log.error("restart: %s", previous.problem)
        if previous.clean is False:
            window = previous.unclean_window(self.wall_clock())
            log.error("restart: the previous run ended uncleanly (no shutdown record after "
                      "its start at seq %d); records after seq %d (%s) may be missing",
                      previous.run_seq, previous.last_seq, previous.last_kind)
            records.unclean_end(window)

    def restore(self, sup: Supervisor, incidents: IncidentManager | None,
                model_sha256: str | None, start_s: float) -> None:
        """Take back the recorded safety state (never toward less safety) and write the
        start record saying what was restored."""
        self.supervisor = sup
        self.incidents = incidents
        previous = self.previous
        open_incidents = incidents.open_incidents if incidents is not None else ()
        restored = None
        if previous.state is not None or open_incidents:
            plan = plan_restore(previous.state, open_incidents, model_sha256, self.wall_clock())
            self.restored = plan
            done = sup.modes.restore(start_s, plan.mode, plan.latched, plan.trip_reason,
                                     plan.bypasses_left_s)
            self.quarantined = plan.quarantined
            restored = plan.to_json() | {
                "recorded_mode": None if previous.state is None else previous.state.mode.value,
                "from_seq": previous.state_seq, "mode": done.mode.value,
                "latched": done.latched, "trip_reason": done.trip_reason,
                "bypasses_left_s": dict(done.bypasses_left_s), "bypasses_cut": list(done.cut)}
            log.warning("restart: restored mode=%s latched=%s trip=%s bypasses=%s "
                        "quarantined=%s open_incidents=%s", done.mode, done.latched,
                        done.trip_reason, sorted(done.bypasses_left_s),
                        plan.quarantined[0] if plan.quarantined else None,
                        ",".join(plan.open_incidents) or "none")
            if plan.quarantine_lifted is not None:
                log.warning("restart: quarantine lifted: %s", plan.quarantine_lifted)
            if incidents is not None:
                incidents.restarted(f"gateway restarted; mode {done.mode}"
                                    + (f", trip latched ({done.trip_reason})" if done.latched
                                       else "") + "; incident still open")
        state = self.to_json()
        self._key = self._tuple()
        self._records().run_start({
            "restored": restored, "state": state,
            "previous": {"clean": previous.clean, "last_seq": previous.last_seq,
                         "last_kind": previous.last_kind, "stopped_by": previous.stopped_by,
                         "state_seq": previous.state_seq, "problem": previous.problem}})

    def _open_ids(self) -> tuple[str, ...]:
        if self.incidents is None:
            return ()
        return tuple(i.id for i in self.incidents.open_incidents)

    def _tuple(self) -> tuple[object, ...]:
        sup = self.supervisor
        assert sup is not None
        modes = sup.modes
        return (modes.mode, modes.latched, modes.trip_reason,
                tuple(sorted(modes.bypasses.items())), self.quarantined, self._open_ids())

    def to_json(self) -> dict[str, Any]:
        """The safety state as recorded: bypass expiry in wall-clock seconds."""
        sup = self.supervisor
        assert sup is not None
        modes = sup.modes
        now, wall = self.clock(), self.wall_clock()
        return SafetyState(
            modes.mode, modes.latched, modes.trip_reason,
            tuple((d, wall + (e - now)) for d, e in sorted(modes.bypasses.items())),
            self.quarantined, self._open_ids()).to_json()

    def note(self) -> None:
        """Record the safety state if it changed since last recorded (cheap when not)."""
        if self.supervisor is None:
            return
        key = self._tuple()
        if key != self._key:
            self._key = key
            self._records().state(self.to_json())

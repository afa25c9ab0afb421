"""Incidents in the running gateway: opened on trips, following the playbook, living in the
audit log; the playbook's actions (mode requests, notifications, quarantine, rate limits)
applied as the decisions come. Escalations and reporting clocks run on the notifier's timer,
off the control path (:data:`ESCALATION_PERIOD_S`); the cycle only wakes it when a decision
carries events, so that a new incident's first escalation step goes out at once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.incident.manager import IncidentManager, Notify, QuarantineModel, RateLimit, Request
from gateway.runtime.requests_log import request_result

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Site
    from gateway.incident.model import Incident
    from gateway.incident.notify import Notifier
    from gateway.runtime.records import Records
    from gateway.runtime.safety_state import DurableState
    from gateway.supervisor.core import Supervisor
    from gateway.supervisor.decision import Decision

log = logging.getLogger("gateway.runtime")

# How often the escalation plans and reporting clocks are looked at (wall-clock seconds).
ESCALATION_PERIOD_S = 1.0


def danger_limits(site: Site) -> dict[str, tuple[float, float]]:
    """The site's danger limits by sensor: the ranges its prediction keeps sensors in (the
    playbook's ``danger_limits`` take precedence over these)."""
    prediction = site.envelope.prediction
    if prediction is None:
        return {}
    return {k.sensor: (k.min, k.max) for k in prediction.keep if k.min < k.max}


def start_incidents(site: Site, playbook_path: Path | None, records: Records,
                    model_path: str | None, model_sha256: str | None
                    ) -> tuple[IncidentManager, Notifier] | None:
    """The incident manager (with the incidents still open in the audit log) and its
    notifier; None when the playbook is unusable (an alarm, not a stop)."""
    from gateway.config import ConfigError
    from gateway.incident.notify import Notifier
    from gateway.incident.playbook import DEFAULT_PLAYBOOK, load_playbook
    from gateway.runtime.records import file_sha256

    path = playbook_path or DEFAULT_PLAYBOOK
    try:
        playbook = load_playbook(path)
    except ConfigError as exc:
        # Checked by `run` before start; a playbook broken since is an alarm, not a stop.
        log.error("playbook unusable, incidents are not opened: %s", exc)
        records.alarm(f"playbook unusable: {exc}")
        return None
    existing: tuple[Incident, ...] = ()
    if records.audit is not None:
        from gateway.audit import AuditError
        from gateway.incident.store import load_incidents

        try:
            existing = tuple(load_incidents(records.audit.path))
        except (OSError, ValueError, AuditError) as exc:  # cannot fold: afresh, loudly
            log.error("previous incidents unreadable: %s", exc)
    manager = IncidentManager(
        site.site.name, playbook, records.audit, model_path=model_path,
        model_sha256=model_sha256, config_sha256=file_sha256(site.source),
        recorder=records.recorder, after_s=site.audit.recorder_after_s, existing=existing,
        danger_limits=danger_limits(site))
    return manager, Notifier(manager.notified)


class PlaybookActions:
    """Applies what the incident manager asks for after each decision."""

    def __init__(self, manager: IncidentManager, notifier: Notifier, supervisor: Supervisor,
                 records: Records, durable: DurableState, model_sha256: str | None) -> None:
        self.manager = manager
        self.notifier = notifier
        self.supervisor = supervisor
        self.records = records
        self.durable = durable
        self.model_sha256 = model_sha256
        self._timer = False

    def after(self, decision: Decision) -> None:
        manager, sup = self.manager, self.supervisor
        if not self._timer:  # the first cycle runs on the event loop: start escalations
            self._timer = True
            try:
                self.notifier.start_timer(manager.tick, ESCALATION_PERIOD_S)
            except RuntimeError as exc:  # no event loop: a bug of the caller, not a stop
                log.error("escalations and reporting clocks not running: %s", exc)
                self.records.alarm(f"escalations not running: {exc}")
        if decision.events:
            self.notifier.wake()  # an incident may have opened: escalate at once, off the cycle
        for action in manager.on_decision(decision):
            if isinstance(action, Request):
                req = action.operator_request()
                events = sup.apply_request(req)
                self.records.request(req, "playbook", request_result(events)
                                     + f" ({action.reason})")
            elif isinstance(action, Notify):
                self.notifier.submit(action)
            elif isinstance(action, QuarantineModel):
                sha = self.model_sha256
                if sha is None:
                    manager.applied(action, False, "no model is loaded")
                else:
                    self.durable.quarantined = (sha, f"{action.incident_id}: {action.reason}")
                    log.warning("model quarantined sha256=%s incident=%s", sha,
                                action.incident_id)
                    manager.applied(action, True, "SHADOW and AUTO refused while this model "
                                                  "is loaded; load another version to lift it")
            elif isinstance(action, RateLimit):
                sup.set_rate_factor(min(sup.rate_factor, action.factor))
                manager.applied(action, True, f"every actuator's rate limit x{action.factor:g} "
                                              "until the incident is resolved")
        if sup.rate_factor < 1.0 and not manager.open_incidents:
            sup.set_rate_factor(1.0)  # the incidents that asked for it are resolved
            log.info("rate limiting lifted: no incident open")

"""Incident response: incidents opened on a trip, playbooks, notifications, evidence bundles.

- :mod:`gateway.incident.model` — :class:`Incident`, its phases and timeline; how audit records
  fold into it.
- :mod:`gateway.incident.playbook` — YAML playbooks: trigger → containment, notifications,
  checklist.
- :mod:`gateway.incident.manager` — :class:`IncidentManager`, driven by the supervisor's
  decisions every cycle; returns actions for the runtime.
- :mod:`gateway.incident.notify` — :class:`Notifier`: log, webhook and command hooks, off the
  control path.
- :mod:`gateway.incident.store` — incidents read back from the audit database.
- :mod:`gateway.incident.export` — evidence bundles and the post-incident report.
- :mod:`gateway.incident.cli` — ``safety-gateway incidents ...``.

This package imports only the model; import the other modules by name (the command line reads
no numpy or matplotlib just to build its parser).
"""

from __future__ import annotations

from gateway.incident.model import (
    BadRequest,
    ChecklistPhase,
    Incident,
    IncidentError,
    Phase,
    UnknownIncident,
)

__all__ = ["BadRequest", "ChecklistPhase", "Incident", "IncidentError", "Phase",
           "UnknownIncident"]

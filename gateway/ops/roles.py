"""Who may ask for what, by role: one table for every entry point (Modbus, OPC UA, `ctl`, and
later the dashboard), so that no interface grants more than another."""

from __future__ import annotations

from gateway.adapters.base import Role
from gateway.supervisor.modes import RequestKind

# Resets and bypasses weaken protection: administrators only.
REQUESTS: dict[Role, frozenset[RequestKind]] = {
    Role.ADMIN: frozenset(RequestKind),
    Role.OPERATOR: frozenset({RequestKind.TO_MANUAL, RequestKind.TO_SAFE_STOP,
                              RequestKind.TO_SHADOW, RequestKind.TO_AUTO}),
}

# Incident work through a running gateway: closing an incident is an administrator's call.
INCIDENT_ROLES: dict[str, frozenset[Role]] = {
    "note": frozenset({Role.OPERATOR, Role.ADMIN}),
    "acknowledge": frozenset({Role.OPERATOR, Role.ADMIN}),
    "check": frozenset({Role.OPERATOR, Role.ADMIN}),
    "severity": frozenset({Role.OPERATOR, Role.ADMIN}),
    "reported": frozenset({Role.OPERATOR, Role.ADMIN}),
    "review": frozenset({Role.OPERATOR, Role.ADMIN}),
    "action_done": frozenset({Role.OPERATOR, Role.ADMIN}),
    "resolve": frozenset({Role.ADMIN}),
    # Resolving with required items open, and approving what is said to the outside.
    "force_resolve": frozenset({Role.ADMIN}),
    "approve_draft": frozenset({Role.ADMIN}),
    # Recorded before the dashboard serves an evidence bundle: the same people may download.
    "evidence": frozenset({Role.OPERATOR, Role.ADMIN}),
}

# Who may download an incident's evidence bundle from the dashboard: it holds the site's
# configuration and an excerpt of the audit chain, which is for the people who run the plant
# and answer for it, not for every account that may look at the page (viewers) nor for an AI.
AUDIT_READERS: frozenset[Role] = INCIDENT_ROLES["evidence"]

# Who may write setpoints (an AI's writes are proposals; an operator's, setpoints).
WRITERS: frozenset[Role] = frozenset({Role.AI, Role.OPERATOR, Role.ADMIN})


def may_request(role: Role, kind: RequestKind) -> bool:
    """Whether ``role`` may make an operator request of ``kind``."""
    return kind in REQUESTS.get(role, frozenset())

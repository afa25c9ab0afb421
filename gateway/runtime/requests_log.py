"""How an operator request's outcome is told: one line for the audit log and the requester."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.supervisor.events import EventKind

if TYPE_CHECKING:
    from gateway.supervisor.events import Event


def request_result(events: list[Event]) -> str:
    """What a request changed (``applied: ...``), or why not (``refused: ...``)."""
    refused = [e for e in events if e.kind is EventKind.REQUEST_REFUSED]
    if refused:
        return "refused: " + refused[0].reason
    if not events:
        return "applied: nothing to change"
    return "applied: " + "; ".join(e.reason for e in events)

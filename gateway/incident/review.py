"""The post-incident review: root cause, contributing factors, what went well and badly, and
action items with owners and due dates, tracked to closure.

Pure values, read from ``review`` and ``action_done`` records by
:mod:`gateway.incident.model`'s fold. A later review of the same incident revises the earlier
one (root cause, factors, lessons) and adds its action items after the earlier ones; action
items are numbered from 1 across the incident's reviews. What must be closed before an
incident may be resolved is :class:`gateway.incident.model.ResolveRequirements`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["ActionItem", "Review", "parse_due"]


def parse_due(text: str) -> dt.date:
    """A due date written ``YYYY-MM-DD``. Raises ``ValueError`` naming the expected form."""
    try:
        return dt.date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise ValueError(f"due date {text!r} is not a date written YYYY-MM-DD") from None


@dataclass(frozen=True, slots=True)
class ActionItem:
    """Action item ``number`` (from 1): ``text``, its ``owner``, its ``due`` date; ``done_by``,
    ``done_wall_s`` and ``note`` once closed."""

    number: int
    text: str
    owner: str
    due: dt.date
    done_by: str | None = None
    done_wall_s: float | None = None
    note: str = ""

    @property
    def done(self) -> bool:
        return self.done_by is not None

    def overdue(self, today: dt.date) -> bool:
        return not self.done and today > self.due


@dataclass(frozen=True, slots=True)
class Review:
    """The post-incident review as last revised, by ``who`` at ``wall_s``."""

    root_cause: str
    factors: tuple[str, ...]
    went_well: tuple[str, ...]
    went_badly: tuple[str, ...]
    who: str
    wall_s: float
    revisions: int = 1

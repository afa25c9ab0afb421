"""The names a site and the centre agree on: subjects, streams, buckets, message ids.

Every subject a site publishes starts with ``sg.site.<site_id>.``, so one permission
(``sg.site.<site_id>.>``) confines a site to its own subjects and a subject filter selects a
site. Audit records carry the message id ``<site_id>:<seq>``: JetStream drops a duplicate by
it, and the id of the previous record (``Nats-Expected-Last-Msg-Id``) makes the stream refuse
a record that does not follow the one it holds, so a gap or a reorder is refused, not stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.config.schema import SITE_ID_PATTERN

PREFIX: Final = "sg.site"
"""The root of every site subject."""

MSG_ID: Final = "Nats-Msg-Id"
EXPECTED_LAST_MSG_ID: Final = "Nats-Expected-Last-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
"""JetStream's publish headers: deduplication, and the message the stream must hold last (by
its id, or by the stream sequence of the subject's last message; see
:mod:`gateway.fleet.publisher` for which the publisher uses when)."""

STATUS_STREAM: Final = "SG_STATUS"
"""The central stream of every site's latest status heartbeat and metrics snapshot (one message
kept per subject). A site's own stream (:attr:`SiteSubjects.stream`) holds its audit records,
events and heads; the two never share a subject (JetStream forbids overlapping streams)."""

ASSIGNMENTS_BUCKET: Final = "sg_assignments"
"""Key-value bucket of per-site model assignments; the key is the site id."""
MODELS_BUCKET: Final = "sg_models"
"""Object store of approved, signed model versions."""


class SiteIdError(ValueError):
    """A string that cannot name a site's subjects."""


def check_site_id(site_id: str) -> str:
    """``site_id`` unchanged, or :class:`SiteIdError`: it must be one subject token."""
    if SITE_ID_PATTERN.fullmatch(site_id) is None:
        raise SiteIdError(f"{site_id!r} is not a site id (1 to 64 letters, digits, '_', '-')")
    return site_id


@dataclass(frozen=True)
class SiteSubjects:
    """The subjects and stream names of one site."""

    site_id: str

    def __post_init__(self) -> None:
        check_site_id(self.site_id)

    @property
    def root(self) -> str:
        return f"{PREFIX}.{self.site_id}"

    @property
    def all(self) -> str:
        """Every subject of the site (the permission and the stream filter)."""
        return f"{self.root}.>"

    @property
    def audit(self) -> str:
        """Every audit record, in chain order, one message each."""
        return f"{self.root}.audit"

    def event(self, kind: str) -> str:
        """Events: ``mode``, ``trip``, ``refusals`` (aggregated), ``incident``, ..."""
        return f"{self.root}.event.{check_token(kind)}"

    @property
    def events(self) -> str:
        return f"{self.root}.event.>"

    @property
    def status(self) -> str:
        """The status heartbeat (mode, incidents, backlog, model in use)."""
        return f"{self.root}.status"

    @property
    def metrics(self) -> str:
        return f"{self.root}.metrics"

    @property
    def heads(self) -> str:
        """The signed heads of the audit chain the site exports."""
        return f"{self.root}.heads"

    def command(self, verb: str) -> str:
        """Request/reply from the centre to the site; the site decides."""
        return f"{self.root}.cmd.{check_token(verb)}"

    @property
    def commands(self) -> str:
        return f"{self.root}.cmd.>"

    @property
    def stream_subjects(self) -> tuple[str, str, str]:
        """What the site's own stream holds: audit records, events and heads (never status,
        metrics or commands: those live in :data:`STATUS_STREAM` or are request/reply)."""
        return (self.audit, self.events, self.heads)

    @property
    def stream(self) -> str:
        """The central stream holding this site's audit records, events and heads."""
        return f"SG_{self.site_id}"

    def msg_id(self, seq: int) -> str:
        """The JetStream message id of audit record ``seq``."""
        return f"{self.site_id}:{seq}"


def seq_of_msg_id(site_id: str, msg_id: str) -> int | None:
    """The audit sequence in a message id of ``site_id``, or None if it is not one."""
    prefix = f"{site_id}:"
    if not msg_id.startswith(prefix):
        return None
    tail = msg_id[len(prefix):]
    return int(tail) if tail.isdigit() else None


def check_token(token: str) -> str:
    """``token`` unchanged if it can be one subject token, else :class:`SiteIdError`."""
    if SITE_ID_PATTERN.fullmatch(token) is None:
        raise SiteIdError(f"{token!r} is not a subject token (1 to 64 letters, digits, '_', "
                          "'-')")
    return token

"""Publish a site's audit chain to its central stream, in chain order, from the audit database.

The audit database is the outbox: the publisher reads it read-only (like every other reader of
a live database, :func:`gateway.audit.store.connect_ro`), so a link that is down for minutes or
days costs nothing but backlog. On every (re)connection it asks the stream what it holds (the
last audit record's seq, the stream's last sequence) and resumes after it.

What goes out (one publisher per site stream), batch by batch:

- ``sg.site.<id>.audit``: each record as JSON (:func:`record_message`: seq, time, kind, actor,
  source, payload text, prev_hash, hash, the database's id; record 1 also carries the database
  header, so the centre can recompute the genesis hash and re-verify the chain). Exactly once,
  in chain order: ``Nats-Msg-Id`` ``<site>:<seq>`` drops a resend, and the stream refuses a
  record that does not follow the last record it holds, so a gap or a reorder is refused,
  never stored: a batch's first record carries ``Nats-Expected-Last-Subject-Sequence`` (the
  stream sequence of the audit record the stream holds last, read from the stream), each next
  one ``Nats-Expected-Last-Msg-Id`` (the id of the record just before it in the batch). A
  refusal makes the publisher re-read the stream and resume; it is counted, logged and shown
  in :class:`PublisherState`.
- ``sg.site.<id>.event.<kind>``, after the batch's records are held, for the records the fleet
  watches (:func:`derived_event`: mode changes, trips, refused writes in their per-second
  windows, incidents, security refusals). At least once: after a broken link the last batch's
  events are sent again and the stream drops those it holds within its duplicate window; each
  names its record's seq, so a reader can drop the rest.
- ``sg.site.<id>.heads``, between batches: the signed head file the audit writer exports
  (``<db>.head.json``), once the centre holds every record up to that head.

Why not ``Nats-Expected-Last-Msg-Id`` alone: on nats-server 2.9 it names the stream's last
message (events and heads between batches change it), and after a restart the server forgets
it once the duplicate window has passed, refusing every later publish; the subject's sequence
is kept in the stream itself. Why not sequences alone: a record predicted to follow stream
sequence N is accepted if a refusal in between happens to leave the record before it at N.

Publishing is pipelined (:class:`AckInbox`, up to ``batch_max`` records in flight; the order on
one connection is the order the server stores them in), and every SQLite read runs in a worker
thread, so the communications process's servers never wait on the publisher.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.audit.signed_head import head_path
from gateway.audit.store import AuditError, Header, last_head, open_read, read_records
from gateway.fleet.subjects import (
    EXPECTED_LAST_MSG_ID,
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    MSG_ID,
    SiteSubjects,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from gateway.audit.chain import Record

log = logging.getLogger("gateway.fleet")

WRONG_LAST_SEQUENCE: Final = 10071
"""JetStream's error code for a publish refused by ``Nats-Expected-Last-Sequence``."""


class LinkState(enum.StrEnum):
    """How the site's chain reaches the centre."""

    CONNECTING = "connecting"  # not yet synchronised with the stream
    UP = "up"                  # synchronised; publishing or caught up
    DOWN = "down"              # the server does not answer; resuming when it does
    STALLED = "stalled"        # the centre holds something this site cannot continue: see problem


@dataclass(frozen=True)
class PublisherState:
    """A snapshot for the status heartbeat: the link, the site's last audit seq, the last one
    the centre acknowledged, publishes refused by the stream (gap or reorder), and why the
    publisher is stalled (None when it is not)."""

    link: LinkState
    site_last_seq: int
    acked_seq: int
    refused_total: int
    published_total: int
    problem: str | None = None

    @property
    def backlog(self) -> int:
        """Records the site holds that the centre has not acknowledged."""
        return max(0, self.site_last_seq - self.acked_seq)

    def to_json(self) -> dict[str, Any]:
        return {"link": str(self.link), "site_last_seq": self.site_last_seq,
                "acked_seq": self.acked_seq, "backlog": self.backlog,
                "refused_total": self.refused_total, "published_total": self.published_total,
                "problem": self.problem}


# ------------------------------------------------------------------------- message formats


def record_message(site_id: str, rec: Record, header: Header, published_at_s: float) -> bytes:
    """The JSON of audit record ``rec`` as the centre stores it. ``published_at_s`` (wall
    clock) is outside the hashed record: it measures the link's lag."""
    data = rec.to_json()
    data["site"] = site_id
    data["db_id"] = header.db_id
    data["published_at_s"] = published_at_s
    if rec.seq == 1:
        data["header"] = dict(header.values)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


_REFUSALS: Final = {"refused_write": "refusals", "security": "security", "incident": "incident",
                    "mode": "mode"}


def derived_event(rec: Record) -> str | None:
    """The event kind (subject token) the fleet sees for ``rec``, or None: ``mode`` for mode
    changes, ``trip`` for trips, ``refusals`` for a window of refused writes, ``incident``
    for an incident opened or changed, ``security`` for refused connections and logins."""
    kind = _REFUSALS.get(rec.kind)
    if kind is not None:
        return kind
    if rec.kind == "event":
        try:
            payload = rec.data()
        except ValueError:
            return None
        if isinstance(payload, dict) and payload.get("kind") == "trip":
            return "trip"
    return None


def event_message(site_id: str, rec: Record, published_at_s: float) -> bytes:
    """An event: the record's seq (the chain holds the evidence), time, kind, actor and parsed
    payload."""
    try:
        payload = rec.data()
    except ValueError:
        payload = rec.payload
    return json.dumps({"site": site_id, "seq": rec.seq, "at_s": rec.at_s, "kind": rec.kind,
                       "actor": rec.actor, "payload": payload,
                       "published_at_s": published_at_s},
                      sort_keys=True, separators=(",", ":")).encode()


def event_msg_id(site_id: str, seq: int) -> str:
    return f"{site_id}:{seq}:event"


def head_msg_id(site_id: str, seq: int) -> str:
    return f"{site_id}:head:{seq}"


# ------------------------------------------------------------------------- the database side


class AuditReader:
    """Read-only access to the site's audit database, one short connection per call (the
    writer may replace or move the file; nothing is held open between calls). Methods are
    blocking: call them through ``asyncio.to_thread``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def header(self) -> Header:
        """Raises :class:`~gateway.audit.store.NotAuditDatabase` (the database is missing or
        not one)."""
        conn, header = open_read(self.path)
        conn.close()
        return header

    def after(self, seq: int, limit: int) -> tuple[Header, list[Record], int]:
        """The header, up to ``limit`` records after ``seq`` in order (seqs are contiguous
        from 1), and the database's last seq (read after the records: never less than
        theirs)."""
        header = self.header()
        records = list(read_records(self.path, first_seq=seq + 1, last_seq=seq + limit))
        return header, records, last_head(self.path).seq

    def record(self, seq: int) -> Record | None:
        found = list(read_records(self.path, first_seq=seq, last_seq=seq))
        return found[0] if found else None


__all__ = ["Ack", "AckInbox", "AuditReader", "LinkState", "Publisher", "PublisherState",
           "derived_event", "event_message", "record_message"]


# ------------------------------------------------------------------------- the publisher


class Stalled(Exception):
    """The centre holds something this site cannot continue (another database, records the
    site no longer has, a record that differs): publishing stops and says why."""


class Refused(Exception):
    """The stream refused a publish (it does not follow the message the stream holds)."""


class LinkDown(Exception):
    """The server did not answer in time, or there is no stream to answer."""


@dataclass
class _Outgoing:
    subject: str
    data: bytes
    msg_id: str
    audit_seq: int | None  # the record's seq, for audit messages


@dataclass
class _Counters:
    refused_total: int = 0
    published_total: int = 0
    site_last_seq: int = 0
    acked_seq: int = 0
    problem: str | None = None
    link: LinkState = LinkState.CONNECTING
    log_quiet: set[str] = field(default_factory=set)


class Publisher:
    """Publishes the audit database at ``audit_path`` to ``site_id``'s stream over ``client``
    (connected, reconnecting by itself: see :mod:`gateway.fleet.connection`).

    :meth:`run` loops until cancelled: synchronise with the stream, then publish batches of
    up to ``batch_max`` records (and their events), then the signed head; poll the database
    every ``poll_s`` when caught up. A server that does not answer within ``ack_timeout_s``
    makes it wait ``retry_s`` and synchronise again. It never raises except cancellation."""

    def __init__(self, client: Client, site_id: str, audit_path: str | Path, *,
                 batch_max: int = 256, poll_s: float = 0.2, ack_timeout_s: float = 10.0,
                 retry_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, not {batch_max}")
        self.client = client
        self.names = SiteSubjects(site_id)
        self.reader = AuditReader(Path(audit_path))
        self.head_file = head_path(Path(audit_path))
        self.batch_max = batch_max
        self.poll_s = poll_s
        self.ack_timeout_s = ack_timeout_s
        self.retry_s = retry_s
        self.clock = clock
        self._js: JetStreamContext = client.jetstream(timeout=ack_timeout_s)
        self._c = _Counters()
        self._stream_last = 0        # the stream's last sequence, as far as we know
        self._audit_last = 0         # the stream sequence of the last audit record held
        self._synced = False
        self._resend_events: list[Record] = []  # after a resync: maybe not published yet
        self._head_seq = -1           # the last head published
        self._head_mtime_ns = -1
        self._acks: AckInbox | None = None
        self._site_last_read = False
        self._acked_known = False

    @property
    def knows_backlog(self) -> bool:
        """Whether the site's last seq has been read and the stream's last record learnt at
        least once (before, the backlog is not known)."""
        return self._site_last_read and self._acked_known

    @property
    def state(self) -> PublisherState:
        c = self._c
        link = c.link
        if link is LinkState.UP and not self.client.is_connected:
            link = LinkState.DOWN
        return PublisherState(link, c.site_last_seq, c.acked_seq, c.refused_total,
                              c.published_total, c.problem)

    async def run(self) -> None:
        """Publish until cancelled (see the class docstring)."""
        refused_in_a_row = 0
        while True:
            try:
                if not self._synced:
                    await self.sync()
                sent = await self.step()
                refused_in_a_row = 0
                if sent == 0:
                    await self.publish_head()
                    await asyncio.sleep(self.poll_s)
            except Refused as exc:
                self._c.refused_total += 1
                self._synced = False
                log.warning("fleet: the stream %s refused a publish (%s); re-reading what it "
                            "holds and resuming", self.names.stream, exc)
                refused_in_a_row += 1
                if refused_in_a_row > 1:  # something keeps racing us: do not spin
                    await asyncio.sleep(self.retry_s)
            except Stalled as exc:
                self._synced = False
                self._set_problem(LinkState.STALLED, str(exc))
                await asyncio.sleep(max(self.retry_s, 5.0))
            except LinkDown as exc:
                self._synced = False
                self._set_problem(LinkState.DOWN, str(exc))
                await self._note_site_last()  # the backlog grows while the link is down
                await asyncio.sleep(self.retry_s)
            except (AuditError, sqlite3.Error, OSError) as exc:
                # the site's own database unreadable: nothing to publish until it is back
                self._synced = False
                self._set_problem(LinkState.STALLED, f"cannot read the audit database: {exc}")
                await asyncio.sleep(self.retry_s)

    async def _note_site_last(self) -> None:
        try:
            self._c.site_last_seq = (await asyncio.to_thread(last_head, self.reader.path)).seq
            self._site_last_read = True
        except (AuditError, sqlite3.Error, OSError) as exc:
            log.debug("fleet: cannot read the audit database's last seq: %s", exc)

    def _set_problem(self, link: LinkState, problem: str) -> None:
        c = self._c
        if problem not in c.log_quiet:
            log.warning("fleet: %s", problem)
            c.log_quiet = {problem}
        else:
            log.debug("fleet: %s", problem)
        c.link = link
        c.problem = problem

    async def sync(self) -> None:
        """Read what the stream holds and resume after it. Raises :class:`LinkDown`,
        :class:`Stalled`."""
        from nats.errors import Error as NatsError
        from nats.js.errors import NotFoundError

        names = self.names
        try:
            info = await self._js.stream_info(names.stream)
            try:
                last_audit = await self._js.get_last_msg(names.stream, names.audit)
            except NotFoundError:
                last_audit = None
            try:
                last_head = await self._js.get_last_msg(names.stream, names.heads)
            except NotFoundError:
                last_head = None
        except NotFoundError as exc:
            raise LinkDown(f"the centre has no stream {names.stream} for this site "
                           f"(safety-gateway fleet init): {exc.description}") from None
        except (TimeoutError, NatsError, OSError) as exc:
            raise LinkDown(f"the fleet server does not answer: {type(exc).__name__} "
                           f"{exc}") from None
        header = await asyncio.to_thread(self.reader.header)
        acked = 0
        if last_audit is not None:
            data = _loads(last_audit.data or b"")
            acked = int(data.get("seq", 0))
            if data.get("db_id") != header.db_id:
                raise Stalled(f"the centre's stream {names.stream} holds audit database "
                              f"{data.get('db_id')}, this site writes {header.db_id} (a "
                              "replaced database): the centre must start a new stream")
            local = await asyncio.to_thread(self.reader.record, acked)
            if local is None:
                raise Stalled(f"the centre holds audit records up to seq {acked}, this site's "
                              "database has no record there (truncated or replaced)")
            if local.hash != data.get("hash"):
                raise Stalled(f"the site's audit record seq {acked} differs from the one the "
                              "centre holds (the site's database was rewritten)")
            # The events of the last batch may not have gone out before the link broke:
            # send them again (the stream drops those it holds within its duplicate window).
            _, recent, _ = await asyncio.to_thread(
                self.reader.after, max(0, acked - self.batch_max), min(acked, self.batch_max))
            self._resend_events = [r for r in recent if derived_event(r) is not None]
        self._stream_last = info.state.last_seq
        self._audit_last = 0 if last_audit is None else (last_audit.seq or 0)
        self._c.acked_seq = acked
        self._acked_known = True
        if last_head is not None:
            self._head_seq = int(_loads(last_head.data or b"").get("head", {}).get("seq", -1))
        self._synced = True
        self._c.link = LinkState.UP
        self._c.problem = None
        self._c.log_quiet = set()
        log.info("fleet: stream %s holds audit records up to seq %d; publishing from there",
                 names.stream, acked)

    async def step(self) -> int:
        """Publish the next batch; returns how many records went out (0: caught up)."""
        header, records, last = await asyncio.to_thread(self.reader.after, self._c.acked_seq,
                                                        self.batch_max)
        self._c.site_last_seq = last
        self._site_last_read = True
        now = self.clock()
        names = self.names
        site = names.site_id
        if self._resend_events:
            await self._send_events(self._resend_events, now)
            self._resend_events = []
        if not records:
            return 0
        await self._send_audit([_Outgoing(names.audit, record_message(site, rec, header, now),
                                          names.msg_id(rec.seq), rec.seq)
                                for rec in records])
        await self._send_events(records, now)
        return len(records)

    async def _send_events(self, records: list[Record], now: float) -> None:
        site = self.names.site_id
        events = []
        for rec in records:
            kind = derived_event(rec)
            if kind is not None:
                events.append(_Outgoing(self.names.event(kind), event_message(site, rec, now),
                                        event_msg_id(site, rec.seq), None))
        if events:
            await self._send_plain(events)

    async def publish_head(self) -> bool:
        """Publish the signed head file when it names a newer head the centre now holds
        every record of. Returns whether one was published."""
        try:
            mtime = self.head_file.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._head_mtime_ns:
            return False
        text = await asyncio.to_thread(self.head_file.read_bytes)
        data = _loads(text)
        head = data.get("head")
        seq = head.get("seq") if isinstance(head, dict) else None
        if not isinstance(seq, int):
            log.debug("fleet: %s is not a signed head; not published", self.head_file)
            self._head_mtime_ns = mtime
            return False
        if seq > self._c.acked_seq:
            return False  # the centre does not hold its records yet: next time
        self._head_mtime_ns = mtime
        if seq <= self._head_seq:
            return False
        await self._send_plain([_Outgoing(self.names.heads, text,
                                          head_msg_id(self.names.site_id, seq), None)])
        self._head_seq = seq
        return True

    async def _publish_all(self, out: list[_Outgoing], headers: list[dict[str, str]],
                           ) -> list[Ack]:
        """Publish pipelined and wait for every acknowledgement. Raises :class:`LinkDown`
        when a message cannot be queued or an acknowledgement does not come in time."""
        from nats.errors import Error as NatsError

        if self._acks is None:
            self._acks = AckInbox(self.client)
        futures: list[asyncio.Future[Ack]] = []
        try:
            for msg, extra in zip(out, headers, strict=True):
                futures.append(await self._acks.publish(msg.subject, msg.data,
                                                        {MSG_ID: msg.msg_id, **extra}))
        except (NatsError, OSError) as exc:
            for fut in futures:
                fut.cancel()
            raise LinkDown(f"cannot publish: {type(exc).__name__} {exc}") from None
        _, pending = await asyncio.wait(futures, timeout=self.ack_timeout_s)
        for fut in pending:
            fut.cancel()
        if pending:
            # what was acknowledged before the silence is held; the resync will find it
            raise LinkDown(f"no acknowledgement within {self.ack_timeout_s} s")
        return [fut.result() for fut in futures]

    async def _send_audit(self, out: list[_Outgoing]) -> None:
        """Publish audit records pipelined, each expecting the stream to hold the record
        before it last (nothing else enters the site's stream during a batch), and account
        the acks in order. Raises :class:`Refused`
        (after accounting the acks before the refusal) or :class:`LinkDown`."""
        # The first record follows the audit record the stream holds (by its sequence, which
        # the stream keeps across restarts); each next one follows the record just before it
        # (by its id: a sequence predicted here could coincide with an older record's once
        # one in between is refused, an id cannot).
        headers = [{EXPECTED_LAST_SUBJECT_SEQUENCE: str(self._audit_last)}]
        headers += [{EXPECTED_LAST_MSG_ID: msg.msg_id} for msg in out[:-1]]
        acks = await self._publish_all(out, headers)
        c = self._c
        for msg, ack in zip(out, acks, strict=True):
            if ack.error_code == WRONG_LAST_SEQUENCE:
                raise Refused(f"{msg.msg_id} does not follow the record the stream holds "
                              f"last: {ack.error}")
            if ack.error is not None:
                raise LinkDown(f"publish of {msg.msg_id} failed: {ack.error}")
            if ack.duplicate:
                raise Refused(f"{msg.msg_id} is already held (duplicate)")
            self._stream_last = self._audit_last = ack.seq
            c.published_total += 1
            assert msg.audit_seq is not None
            c.acked_seq = msg.audit_seq
        c.link = LinkState.UP

    async def _send_plain(self, out: list[_Outgoing]) -> None:
        """Publish events or heads (at least once: a resend within the duplicate window is
        dropped by its message id). Raises :class:`LinkDown`."""
        acks = await self._publish_all(out, [{} for _ in out])
        for msg, ack in zip(out, acks, strict=True):
            if ack.error is not None:
                raise LinkDown(f"publish of {msg.msg_id} failed: {ack.error}")
            if not ack.duplicate:
                self._stream_last = max(self._stream_last, ack.seq)
                self._c.published_total += 1


@dataclass(frozen=True)
class Ack:
    """JetStream's answer to one publish: the stream sequence it got, whether it was a
    duplicate, or the error (``error_code``: JetStream's err_code, e.g. 10071)."""

    seq: int = 0
    duplicate: bool = False
    error: str | None = None
    error_code: int | None = None


class AckInbox:
    """Pipelined JetStream publishing: each message is published with a reply subject in one
    inbox of our own, and its acknowledgement resolves a future. (nats-py 2.16's
    ``publish_async`` never resolves the future of a refused publish: its reply handler raises
    instead of failing the future.)"""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.prefix = ""
        self._futures: dict[str, asyncio.Future[Ack]] = {}
        self._next = 0

    async def publish(self, subject: str, data: bytes, headers: dict[str, str],
                      ) -> asyncio.Future[Ack]:
        """Publish and return the future of its :class:`Ack` (never an exception: a server
        that does not answer leaves it pending; the caller bounds the wait). Raises nats-py's
        errors when the message cannot even be queued (connection closed, buffer full)."""
        if not self.prefix:
            self.prefix = self.client.new_inbox()
            await self.client.subscribe(self.prefix + ".*", cb=self._answer)
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        future.add_done_callback(lambda _: self._futures.pop(token, None))
        await self.client.publish(subject, data, reply=f"{self.prefix}.{token}",
                                  headers=headers)
        return future

    async def _answer(self, msg: Any) -> None:
        future = self._futures.get(msg.subject.rsplit(".", 1)[-1])
        if future is None or future.done():
            return
        status = (msg.headers or {}).get("Status")
        if status == "503":
            future.set_result(Ack(error="no stream answers (no responders)"))
            return
        data = _loads(msg.data)
        error = data.get("error")
        if isinstance(error, dict):
            code = error.get("err_code")
            future.set_result(Ack(error=str(error.get("description", error)),
                                  error_code=code if isinstance(code, int) else None))
            return
        seq = data.get("seq")
        if not isinstance(seq, int):
            future.set_result(Ack(error=f"not a JetStream acknowledgement: {data!r}"))
            return
        future.set_result(Ack(seq=seq, duplicate=bool(data.get("duplicate", False))))


def _loads(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}

"""The audit log writer: the control loop appends, a background thread hashes and commits.

``AuditLog.append`` takes the time, checks the arguments and pushes one tuple onto a bounded
deque: it never touches the disk, takes no lock on its normal path, and never raises for disk
trouble. One writer thread (the only code that writes the database, through its own
connection) serialises payloads, assigns sequence numbers and hashes in order, and commits
them in batches, one transaction per batch.

When the storage fails (I/O error, disk full, the file deleted or replaced), the writer keeps
the records in memory, raises an alarm once per fault episode (``on_alarm``; ``alarm`` while it
lasts), retries with exponential backoff, and on recovery writes an ``alarm`` record that states
the fault and how many records were lost, so the fault is itself in the chain. Memory is
bounded by ``max_pending``: beyond it records are dropped and counted (``decision`` records
first: the last eighth of the room is kept for operator actions, mode changes and the rest),
and a record of kind ``alarm`` stating how many were lost, of which kinds and when, is put in
the chain exactly where they are missing. This is IEC 62443-3-3 SR 2.9 (audit storage
capacity) and SR 2.10 (response to audit processing failures): control never waits for the
audit log.

Threads: ``append``, ``flush`` and the properties may be called from any thread. ``on_alarm``
and ``on_clear`` run on the writer thread: they must be quick and thread-safe (to reach an
asyncio loop, use ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import atexit
import collections
import collections.abc
import contextlib
import functools
import logging
import math
import os
import re
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway.audit.chain import ExportedHead, Kind, canonical_payload, record_hash
from gateway.audit.export import HeadSink, send_head
from gateway.audit.store import AuditError, WriteStore, set_aside_orphans

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

_KIND_RE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
# Known kinds map to their plain str value (a Kind member hashes and compares as its value).
_KINDS: dict[str, str] = {k.value: k.value for k in Kind}
_DECISION = Kind.DECISION.value
_ALARM = Kind.ALARM.value
SPACE_CHECK_EVERY_S = 10.0
# How often the head is exported by default (``audit.head_export_s``): records appended after
# the last export are not covered by it (see gateway.audit.signed_head).
HEAD_EXPORT_S = 10.0
# A record is an account of an action, not a data store: bigger payloads are cut (and say
# so), so that one runaway payload cannot stall the writer or hit SQLite's length limit.
MAX_PAYLOAD_CHARS = 1 << 20

_Item = tuple[float, str, str, str, "Mapping[str, Any]"]
_Row = tuple[int, float, str, str, str, str, str, str]


class AuditSink(Protocol):
    """What the gateway needs of an audit log: :class:`AuditLog` in its own process, or
    :class:`~gateway.audit.process.AuditProcess` with the writer in a child process."""

    path: Path

    def append(self, kind: str, payload: Mapping[str, Any], actor: str = "gateway",
               source: str = "") -> None: ...

    def idle(self) -> None: ...

    def close(self, timeout_s: float = 10.0) -> bool: ...


class _Wake:
    """Wakes the one writer thread. ``set`` is a single C call, for the control loop's sake:
    ``threading.Event.set`` runs a dozen lines of Python around a Condition (measured here:
    ~20 us more per call when the loop has just woken with cold caches)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held = not set

    def set(self) -> None:
        # Releasing an unheld lock raises RuntimeError: the wake is already pending, which is
        # what this call wants.
        with contextlib.suppress(RuntimeError):
            self._lock.release()

    def wait(self, timeout_s: float) -> bool:
        """Wait until set or ``timeout_s``; True if set (consumes it)."""
        return self._lock.acquire(timeout=max(0.0, timeout_s))

    def clear(self) -> None:
        self._lock.acquire(blocking=False)


class _GapPayload(dict[str, Any]):
    """The payload of a lost-records marker (its type tells the writer to count it)."""


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    text = str(exc) or type(exc).__name__
    return f"{text} ({name})" if name else text


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"audit {name} must be a str, not {type(value).__name__}")


def close_at_exit(ref: Callable[[], AuditSink | None]) -> None:
    """An ``atexit`` hook: write what is pending if nobody closed the log (``ref`` is a weak
    reference, so that the hook does not keep the log alive)."""
    audit = ref()
    if audit is not None:
        audit.close(timeout_s=5.0)


class AuditLog:
    """An append-only, hash-chained audit log in the SQLite database at ``path``.

    Opens (creating if missing) the database and checks the tail of its chain, then starts
    the writer thread. Raises :class:`~gateway.audit.store.AuditError` if the file exists but
    must not be written: not an audit database, an unsupported version, a broken tail, or
    open for writing by another ``AuditLog``. Disk trouble at opening is not raised: the log
    starts in the alarm state and keeps retrying (check ``alarm``).

    Parameters: ``clock`` gives wall-clock UTC seconds since the epoch for ``at_s``;
    ``batch_max`` records at most per transaction; the writer commits every
    ``flush_interval_s`` seconds (right after the next append once that time is up, so that
    it works while the control loop sleeps: append at the end of a cycle), or at once when
    ``batch_max`` records are waiting, so an append is acknowledged within about one or two
    intervals;
    ``max_pending`` bounds the records held in memory; ``synchronous`` is SQLite's
    durability for each commit ("FULL": survives power loss; "NORMAL": survives a crash of the
    process, not of the machine); ``on_alarm(message)`` and ``on_clear(message)`` are called
    once at the start and at the end of each fault episode; every ``export_every_s`` seconds
    (None: only at ``close``), if it changed, and at ``close``, the head goes to each of
    ``head_sinks`` (on a thread of their own) and, with ``signed_head`` (the default), signed
    with the key at ``head_key`` (default ``<db>.head-key``, created if missing) to
    ``<db>.head.json`` beside the database and to the same name in each of ``head_dirs``
    (:mod:`gateway.audit.signed_head`); failed commits are retried after
    ``retry_initial_s``, doubling up to ``retry_max_s``; when the file system holding the
    database has less than ``min_free_bytes`` free (checked every 10 s; 0 disables), the alarm
    is raised before the disk is actually full.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 clock: Callable[[], float] = time.time,
                 batch_max: int = 1024,
                 flush_interval_s: float = 0.05,
                 max_pending: int = 20_000,
                 synchronous: Literal["FULL", "NORMAL"] = "FULL",
                 on_alarm: Callable[[str], None] | None = None,
                 on_clear: Callable[[str], None] | None = None,
                 export_every_s: float | None = HEAD_EXPORT_S,
                 head_sinks: Sequence[HeadSink] = (),
                 signed_head: bool = True,
                 head_key: str | os.PathLike[str] | None = None,
                 head_dirs: Sequence[str | os.PathLike[str]] = (),
                 retry_initial_s: float = 0.05,
                 retry_max_s: float = 5.0,
                 min_free_bytes: int = 64 * 2**20) -> None:
        if isinstance(batch_max, bool) or not isinstance(batch_max, int) or batch_max < 1:
            raise ValueError(f"batch_max must be an integer >= 1, not {batch_max!r}")
        if (isinstance(max_pending, bool) or not isinstance(max_pending, int)
                or max_pending < 16):
            raise ValueError(f"max_pending must be an integer >= 16, not {max_pending!r}")
        for name, value in (("flush_interval_s", flush_interval_s),
                            ("retry_initial_s", retry_initial_s),
                            ("retry_max_s", retry_max_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, not {value!r}")
        if export_every_s is not None and not (
                isinstance(export_every_s, (int, float)) and math.isfinite(export_every_s)
                and export_every_s > 0):
            raise ValueError(f"export_every_s must be finite and > 0, not {export_every_s!r}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self.path = Path(os.path.abspath(path))
        self._clock = clock
        self._batch_max = batch_max
        self._flush_interval_s = float(flush_interval_s)
        self._max_pending = max_pending
        # Room kept for the rarer kinds: decisions are dropped first.
        self._decision_limit = max_pending - max(1, max_pending // 8)
        self._synchronous = synchronous
        self._on_alarm = on_alarm
        self._on_clear = on_clear
        self._retry_initial_s = float(retry_initial_s)
        self._retry_max_s = float(retry_max_s)
        if isinstance(min_free_bytes, bool) or not isinstance(min_free_bytes, int) or (
                min_free_bytes < 0):
            raise ValueError(f"min_free_bytes must be an integer >= 0, not {min_free_bytes!r}")
        self._min_free_bytes = min_free_bytes
        self._next_space_check = 0.0
        self._space_low: str | None = None

        # Shared with appending threads. The deque is the hand-over: append() only appends,
        # the writer only pops from the left (both atomic under the GIL).
        self._q: collections.deque[_Item | threading.Event] = collections.deque()
        self._held_n = 0  # records the writer has taken but not yet committed
        self._lock = threading.Lock()  # the lost-record counters below, and gap markers
        self._lost_total = 0
        self._tokens_queued = 0  # flush() tokens in the deque (they are not records)
        self._lost_unmarked = 0
        self._lost_by_kind: dict[str, int] = {}
        self._lost_first_at_s = 0.0
        self._lost_last_at_s = 0.0
        self._closed = False
        self._abandoned = False  # close() gave up on a failing storage
        self._wake = _Wake()
        # Set by the writer when its batch is due: the next append wakes it, so that it
        # works right after the caller's cycle instead of at a random moment in the next.
        self._kick = False
        self._hinted = False  # idle() is in use: appends leave due batches to it
        self._stopping = False
        self._close_deadline = math.inf

        # Written by the writer thread only (read anywhere: single assignments).
        self._acked_seq = 0
        self._head: tuple[int, str, float, str] = (0, "", 0.0, "")
        self._alarm: str | None = None
        self._batches = 0
        self._episodes = 0
        self._last_commit_s = 0.0
        self._written = 0  # records committed by this instance

        # The writer thread's own state.
        self._store: WriteStore | None = None
        self._known: tuple[str, int, str] | None = None  # (db_id, seq, hash) last committed
        self._held: list[_Item] = []
        self._held_tokens: list[threading.Event] = []
        self._rows: list[_Row] | None = None
        self._rows_base: tuple[int, str] | None = None
        self._attempted: list[_Row] = []  # the rows of the last commit attempted
        self._storage_error: str | None = None
        self._fault_first_error = ""
        self._fault_since_s = 0.0
        self._fault_monotonic = 0.0
        self._fault_lost_at_start = 0
        self._fault_attempts = 0
        self._next_retry_at = 0.0
        self._lost_recorded = 0
        self._replaced: dict[str, Any] | None = None
        self._stale_sides: tuple[tuple[int, int], dict[str, tuple[int, int] | None]] | None = None

        try:
            # A fresh install has no folder for the database yet (the example sites put it in
            # reports/): create it, once, here. A folder that disappears later is a storage
            # fault like any other, not something to recreate silently.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            store = WriteStore.open(self.path, synchronous=synchronous)
        except (OSError, sqlite3.Error) as exc:
            self._storage_failed(exc)
        else:
            self._adopt(store)

        self._exporter: _Exporter | None = None
        self._export_every_s = export_every_s
        self._next_export_at = time.monotonic()
        self._exported_seq = -1
        sinks = list(head_sinks)
        if signed_head:
            from gateway.audit.signed_head import HeadDirSink, HeadKey, key_path

            key = HeadKey(head_key if head_key is not None else key_path(self.path))
            sinks.append(HeadDirSink(self.path, key))
            sinks.extend(HeadDirSink(self.path, key, folder)
                         for folder in head_dirs)
        if sinks:
            self._exporter = _Exporter(sinks)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        # Write what is pending at interpreter exit if nobody called close() (one callable per
        # instance, so that unregistering it leaves the others').
        self._atexit = functools.partial(close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ the control side

    def append(self, kind: str, payload: Mapping[str, Any], actor: str = "gateway",
               source: str = "", at_s: float | None = None) -> None:
        """Queue one record; return at once. ``at_s`` is taken now, from ``clock``, unless
        given (a record relayed from another process, which took the time when it happened).

        ``kind`` is a :class:`~gateway.audit.chain.Kind` or another lowercase name
        (``[a-z][a-z0-9_.]*``, at most 64 characters); ``payload`` is serialised later, on
        the writer thread: pass a mapping that nobody mutates afterwards. A payload that
        cannot be serialised is recorded as its ``repr`` with the error. ``actor`` is who
        (an operator's identity, or "gateway"), ``source`` from where (a client address).

        Never blocks and never raises for disk trouble: when ``max_pending`` records are
        waiting, the record is dropped and counted (see the module docstring). Raises
        ``ValueError``/``TypeError`` only for a bad kind, payload, actor or source (bugs).
        """
        if at_s is None:
            at_s = self._clock()
        plain = checked_kind(kind, payload, actor, source)
        q = self._q
        pending = len(q) + self._held_n
        if (pending >= self._decision_limit and (
                plain == _DECISION or pending >= self._max_pending)) or self._closed:
            self._drop(plain, at_s)
            return
        if self._lost_unmarked:
            self._mark_gap()
        q.append((at_s, plain, actor, source, payload))
        if (self._kick and not self._hinted) or len(q) == self._batch_max:
            self._kick = False
            self._wake.set()

    def count_lost(self, by_kind: Mapping[str, int], first_at_s: float,
                   last_at_s: float) -> None:
        """Count records lost before they reached this log (a relaying process had to drop
        them): they are reported as dropped ones are, by the record that marks the gap,
        which goes in after everything appended so far."""
        with self._lock:
            n = sum(by_kind.values())
            if n <= 0:
                return
            if self._lost_unmarked == 0:
                self._lost_first_at_s = first_at_s
            self._lost_total += n
            self._lost_unmarked += n
            self._lost_last_at_s = last_at_s
            for kind, count in by_kind.items():
                self._lost_by_kind[kind] = self._lost_by_kind.get(kind, 0) + count
        self._mark_gap()

    def idle(self) -> None:
        """The producer is about to be idle (a control loop at the end of its cycle, before
        it sleeps): a batch that is due starts now, while the loop is not running. Once this
        has been called, appends no longer start due batches themselves: a cycle that appends
        several records is not interrupted by the writer after its first one. A due batch
        still starts after another ``flush_interval_s`` without a call, and a full one
        (``batch_max``) at once. Never blocks."""
        self._hinted = True
        if self._kick:
            self._kick = False
            self._wake.set()

    def _drop(self, kind: str, at_s: float) -> None:
        with self._lock:
            if self._lost_unmarked == 0:
                self._lost_first_at_s = at_s
            self._lost_total += 1
            self._lost_unmarked += 1
            self._lost_last_at_s = at_s
            self._lost_by_kind[kind] = self._lost_by_kind.get(kind, 0) + 1
            closed = self._closed
        if closed and self._lost_unmarked == 1:
            log.warning("audit record appended after close() was dropped (kind=%s)", kind)

    def _mark_gap(self) -> None:
        """Put a record of the lost records where they are missing: after everything queued
        before them, before anything queued after."""
        with self._lock:
            if not self._lost_unmarked or self._closed:
                return
            payload = _GapPayload(
                alarm="audit_records_lost", lost_records=self._lost_unmarked,
                lost_by_kind=dict(self._lost_by_kind), first_lost_at_s=self._lost_first_at_s,
                last_lost_at_s=self._lost_last_at_s,
                reason="audit queue full (storage failing or writer overloaded)")
            self._q.append((self._lost_last_at_s, _ALARM, "gateway", "", payload))
            self._lost_unmarked = 0
            self._lost_by_kind = {}

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record appended before this call is committed (acknowledged);
        False if ``timeout_s`` passes first (the storage is failing, or the writer is
        behind). Dropped records are not waited for: they are counted in ``lost``. Never
        call it from the control loop."""
        if self._closed:
            return self.pending == 0
        token = threading.Event()
        with self._lock:
            self._tokens_queued += 1
            self._q.append(token)
        self._wake.set()
        return token.wait(timeout_s) and not self._abandoned

    def close(self, timeout_s: float = 10.0) -> bool:
        """Write what is pending (retrying a failing storage until ``timeout_s``), export the
        final head, stop the threads. True if nothing was left unwritten or lost since
        opening. Idempotent; ``append`` after it drops (and counts) the record."""
        if not self._closed:
            self._mark_gap()
            with self._lock:
                self._closed = True
            self._close_deadline = time.monotonic() + timeout_s
            self._stopping = True
            self._wake.set()
            atexit.unregister(self._atexit)
        self._thread.join(timeout_s + 1.0)
        if self._exporter is not None:
            self._exporter.stop(timeout_s=2.0)
        return not self._thread.is_alive() and self.pending == 0 and self._lost_total == 0

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ observation

    @property
    def acknowledged_seq(self) -> int:
        """The seq of the last committed record (0 before any)."""
        return self._acked_seq

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last committed record (``(0, genesis)`` for an empty
        database; ``(0, "")`` if the database could not be opened yet)."""
        seq, digest, _, _ = self._head
        return seq, digest

    def exported_head(self) -> ExportedHead:
        """The head as published by the exporters. Raises ``RuntimeError`` if no database
        has been opened yet (storage failing since the start)."""
        seq, digest, at_s, db_id = self._head
        if not digest:
            raise RuntimeError(f"{self.path}: the audit database has not been opened yet")
        return ExportedHead(seq, digest, at_s, db_id)

    @property
    def pending(self) -> int:
        """Records appended and not yet committed (nor dropped)."""
        return max(0, len(self._q) - self._tokens_queued + self._held_n)

    @property
    def lost(self) -> int:
        """Records dropped since opening (queue full, or appended after close)."""
        return self._lost_total

    @property
    def alarm(self) -> str | None:
        """The current fault, or None when the audit log is healthy."""
        return self._alarm

    @property
    def export_faults(self) -> dict[str, str]:
        """Head sinks whose last send failed, with the error."""
        return dict(self._exporter.faults) if self._exporter is not None else {}

    def stats(self) -> dict[str, Any]:
        """Figures for metrics and the dashboard."""
        return {"acknowledged_seq": self._acked_seq, "pending": self.pending,
                "lost": self._lost_total, "written": self._written,
                "batches": self._batches, "fault_episodes": self._episodes,
                "last_commit_ms": 1000.0 * self._last_commit_s, "alarm": self._alarm,
                "db_id": self._head[3]}

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            if self._storage_error is not None:
                delay = self._next_retry_at - now
                if self._stopping:
                    delay = min(delay, self._close_deadline - now)
            elif self._stopping or len(self._q) >= self._batch_max:
                delay = 0.0
            else:
                delay = self._flush_interval_s
            if (delay > 0 and not self._wake.wait(delay) and self._q
                    and self._storage_error is None and not self._stopping):
                # A batch is due: do it at the producer's next idle() (or, without those,
                # right after its next append, i.e. just after the control loop's cycle), when
                # the loop is asleep and not waiting for the GIL, rather than at a random
                # moment that may be the loop's next wake-up. If none comes, go ahead after
                # another interval.
                self._kick = True
                self._wake.wait(self._flush_interval_s)
                self._kick = False
            self._wake.clear()
            try:
                self._process()
                self._check_space()
                self._maybe_export()
            except Exception as exc:
                # A bug, not disk trouble (that is handled in _commit): log it, raise the
                # alarm, and keep the thread alive; the records stay queued.
                log.exception("audit writer: unexpected error")
                self._storage_failed(exc)
            self._update_alarm()
            if self._stopping:
                if not self._held and not self._q:
                    break
                if time.monotonic() >= self._close_deadline:
                    self._give_up()
                    break
        self._maybe_export(final=True)
        if self._store is not None:
            self._store.close()
            self._store = None

    def _give_up(self) -> None:
        self._abandoned = True
        left = len(self._held)
        for token in self._held_tokens:
            token.set()
        while self._q:
            item = self._q.popleft()
            if type(item) is tuple:
                left += 1
            else:
                assert isinstance(item, threading.Event)
                with self._lock:
                    self._tokens_queued -= 1
                item.set()  # the flush waiting on it returns (False: _abandoned)
        log.error("audit log closed with %d records unwritten (storage failing: %s)",
                  left, self._storage_error)
        with self._lock:
            self._lost_total += left
        self._held = []
        self._held_n = 0

    def _process(self) -> None:
        if self._storage_error is not None and time.monotonic() < self._next_retry_at:
            return
        if self._lost_unmarked:
            self._mark_gap()
        if self._storage_error is not None and not self._held and not self._q:
            # Nothing to write, but the fault must be cleared and recorded all the same.
            self._commit()
            return
        # Drain what is queued now; records arriving meanwhile wait for the next round, so
        # that batches stay large under load (one fsync per batch).
        budget = len(self._q) + len(self._held) + 1
        while budget > 0:
            if not self._held:
                self._take()
                if not self._held:
                    self._release_tokens()
                    if not self._q:
                        return
                    continue
            budget -= len(self._held)
            if not self._commit():
                return

    def _take(self) -> None:
        q = self._q
        held: list[_Item] = []
        tokens: list[threading.Event] = []
        limit = self._batch_max
        while len(held) < limit:
            try:
                item = q.popleft()
            except IndexError:
                break
            if type(item) is tuple:
                held.append(item)
            else:
                assert isinstance(item, threading.Event)
                with self._lock:
                    self._tokens_queued -= 1
                tokens.append(item)
                break  # commit now what the flush waits for
        self._held = held
        self._held_n = len(held)
        self._held_tokens = tokens
        self._rows = None

    def _release_tokens(self) -> None:
        for token in self._held_tokens:
            token.set()
        self._held_tokens = []

    def _commit(self) -> bool:
        """Commit the held records (plus, after a fault, the record of the fault). False on
        storage trouble (the records stay held)."""
        try:
            store = self._store
            if store is None:
                store = self._reopen()
                if self._storage_error is None:  # the failed commit had landed after all
                    return True
            if self._rows is None or self._rows_base != store.head:
                self._rows = self._build_rows(store.head)
                self._rows_base = store.head
            rows = self._rows
            if self._storage_error is not None or self._replaced is not None:
                rows = [*rows, self._fault_row(rows[-1] if rows else None, store.head)]
            if not rows:
                return True
            self._attempted = rows
            t0 = time.perf_counter()
            store.insert(rows)
            self._last_commit_s = time.perf_counter() - t0
        except (OSError, sqlite3.Error, AuditError) as exc:
            self._storage_failed(exc)
            return False
        self._committed(rows, store)
        return True

    def _committed(self, rows: list[_Row], store: WriteStore) -> None:
        last = rows[-1]
        self._known = (store.header.db_id, last[0], last[7])
        self._head = (last[0], last[7], last[1], store.header.db_id)
        self._acked_seq = last[0]
        self._batches += 1
        self._written += len(rows)
        for item in self._held:
            if type(item[4]) is _GapPayload:
                self._lost_recorded += item[4]["lost_records"]
        self._held = []
        self._held_n = 0
        self._rows = None
        self._release_tokens()
        if self._storage_error is not None:
            log.warning("audit storage recovered after %.1f s (%d attempts): %s",
                        time.monotonic() - self._fault_monotonic, self._fault_attempts,
                        self.path)
        self._storage_error = None
        self._replaced = None

    def _build_rows(self, base: tuple[int, str]) -> list[_Row]:
        seq, prev = base
        rows: list[_Row] = []
        for at_s, kind, actor, source, payload in self._held:
            text = payload_text(payload)
            if len(text) > MAX_PAYLOAD_CHARS:
                text = canonical_payload({"truncated_payload": text[:4096],
                                          "original_chars": len(text)})
            if not (isinstance(at_s, float) and math.isfinite(at_s)):
                at_s = _finite_time(at_s)
            seq += 1
            try:
                digest = record_hash(seq, at_s, kind, actor, source, text, prev)
            except UnicodeEncodeError:  # a lone surrogate in actor or source
                actor = actor.encode("utf-8", "backslashreplace").decode()
                source = source.encode("utf-8", "backslashreplace").decode()
                digest = record_hash(seq, at_s, kind, actor, source, text, prev)
            rows.append((seq, at_s, kind, actor, source, text, prev, digest))
            prev = digest
        return rows

    def _fault_row(self, last: _Row | None, base: tuple[int, str]) -> _Row:
        seq, prev = (last[0], last[7]) if last is not None else base
        now = _finite_time(self._clock())
        payload: dict[str, Any] = {"alarm": "audit_storage_fault", "state": "recovered",
                                   "since_at_s": self._fault_since_s, "recovered_at_s": now,
                                   "first_error": self._fault_first_error,
                                   "last_error": self._storage_error or "",
                                   "attempts": self._fault_attempts,
                                   "records_lost_in_episode":
                                       self._lost_total - self._fault_lost_at_start}
        if self._replaced is not None:
            payload["database"] = self._replaced
        text = canonical_payload(payload)
        seq += 1
        return (seq, now, _ALARM, "gateway", "", text, prev,
                record_hash(seq, now, _ALARM, "gateway", "", text, prev))

    def _adopt(self, store: WriteStore) -> None:
        self._store = store
        seq, digest = store.head
        self._known = (store.header.db_id, seq, digest)
        if self._acked_seq == 0 or self._head[3] != store.header.db_id:
            at_s = 0.0
            if seq:
                # The time of the last record, for exported heads.
                row = store.conn.execute("SELECT at_s FROM records WHERE seq = ?",
                                         (seq,)).fetchone()
                at_s = float(row[0]) if row else 0.0
            self._head = (seq, digest, at_s, store.header.db_id)
            self._acked_seq = seq

    def _reopen(self) -> WriteStore:
        """Open the database again after a fault, and check it is the one we wrote: the
        same identity, ending where we left it (or with our own rows from a commit whose
        outcome was unknown). If it is gone, start a new database that names the lost one
        in its header. Raises AuditError when it must not be written."""
        known = self._known
        stale = self._stale_sides
        if stale is not None:
            # The file at the path is no longer the one we wrote (deleted, moved, replaced):
            # its WAL, left behind by SQLite, must not be read as part of what is there now.
            ident, sides = stale
            try:
                st = os.stat(self.path)
                same = (st.st_dev, st.st_ino) == ident
            except FileNotFoundError:
                same = False
            if not same:
                for moved in set_aside_orphans(self.path, sides):
                    log.warning("audit: moved the WAL of the lost database aside: %s", moved)
            self._stale_sides = None
        if known is None:
            store = WriteStore.open(self.path, synchronous=self._synchronous)
            self._adopt(store)
            return store
        db_id, seq, digest = known
        try:
            store = WriteStore.open(self.path, synchronous=self._synchronous, create=False)
        except FileNotFoundError:
            continues = {"continues_db_id": db_id, "continues_seq": str(seq),
                         "continues_hash": digest}
            store = WriteStore.open(self.path, synchronous=self._synchronous,
                                    continues=continues)
            if store.created:
                self._replaced = {"lost": str(self.path), "lost_db_id": db_id,
                                  "last_acknowledged_seq": seq, "last_acknowledged_hash": digest,
                                  "new_db_id": store.header.db_id}
                log.error("audit database %s disappeared after seq %d was acknowledged; "
                          "a new database continues the chain (db_id %s)", self.path, seq,
                          store.header.db_id)
                self._adopt(store)
                return store
        try:
            self._check_same(store, db_id, seq, digest)
        except AuditError:
            store.close()
            raise
        self._store = store
        return store

    def _check_same(self, store: WriteStore, db_id: str, seq: int, digest: str) -> None:
        if store.header.db_id != db_id:
            raise AuditError(f"{self.path} was replaced by another audit database "
                             f"(db_id {store.header.db_id}, not {db_id}); not writing to it")
        tail_seq, tail_hash = store.head
        if tail_seq < seq:
            raise AuditError(f"{self.path} was replaced by an older copy: it ends at seq "
                             f"{tail_seq}, seq {seq} was acknowledged; not writing to it")
        if tail_seq == seq:
            if tail_hash != digest:
                raise AuditError(f"{self.path}: record {seq} differs from the one committed; "
                                 "not writing to it")
            return
        # Records beyond ours: the last commit, reported as failed, did land (an fsync
        # error after the write, say), or someone else wrote them.
        extra = store.records_after(seq)
        attempted = self._attempted
        if (not attempted or attempted[0][6] != digest or len(extra) != len(attempted)
                or any(rec.hash != row[7] for rec, row in zip(extra, attempted, strict=True))):
            raise AuditError(f"{self.path}: records after seq {seq} were not written by "
                             "this audit log; not writing to it")
        log.warning("audit: the %d records of a commit reported as failed were written",
                    len(extra))
        self._committed(attempted, store)

    def _storage_failed(self, exc: BaseException) -> None:
        store = self._store
        if store is not None:
            self._stale_sides = (store.ident, store.side_idents)
            # If the file was moved or deleted, SQLite will neither checkpoint nor remove
            # its WAL at close: checkpoint now, so that a moved database holds every
            # committed record itself.
            store.close(checkpoint=not store.still_at_path())
            self._store = None
        message = _describe(exc)
        if self._storage_error is None:
            self._fault_first_error = message
            self._fault_since_s = _finite_time(self._clock())
            self._fault_monotonic = time.monotonic()
            self._fault_lost_at_start = self._lost_total
            self._fault_attempts = 0
            log.warning("audit storage fault (%s): %s; records held in memory, retrying",
                        self.path, message)
        else:
            log.debug("audit storage still failing: %s", message)
        self._storage_error = message
        self._fault_attempts += 1
        backoff = min(self._retry_max_s,
                      self._retry_initial_s * 2.0 ** min(self._fault_attempts - 1, 30))
        self._next_retry_at = time.monotonic() + backoff

    def _check_space(self) -> None:
        """IEC 62443-3-3 SR 2.9 RE 1: warn before the audit storage is full. Every 10 s,
        compare the free space of the database's file system with ``min_free_bytes``;
        entering and leaving the low state are recorded in the chain too."""
        now = time.monotonic()
        if not self._min_free_bytes or now < self._next_space_check:
            return
        self._next_space_check = now + SPACE_CHECK_EVERY_S
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return  # a missing or failing file system shows as a storage fault instead
        free = st.f_bavail * st.f_frsize
        low = free < self._min_free_bytes
        if low == (self._space_low is not None):
            return
        payload = {"alarm": "audit_storage_low", "state": "raised" if low else "cleared",
                   "free_bytes": free, "threshold_bytes": self._min_free_bytes,
                   "path": str(self.path.parent)}
        self._q.append((_finite_time(self._clock()), _ALARM, "gateway", "", payload))
        if low:
            self._space_low = (f"audit storage nearly full: {free / 2**20:.1f} MiB free on "
                               f"{self.path.parent} (threshold "
                               f"{self._min_free_bytes / 2**20:.1f} MiB)")
            log.warning("%s", self._space_low)
        else:
            log.info("audit storage has room again: %.1f MiB free", free / 2**20)
            self._space_low = None

    def _update_alarm(self) -> None:
        parts = []
        if self._space_low is not None:
            parts.append(self._space_low)
        if self._storage_error is not None:
            parts.append(f"audit storage failing: {self._storage_error}; "
                         f"{len(self._held) + len(self._q)} records held in memory")
        unrecorded = self._lost_total - self._lost_recorded
        if unrecorded > 0:
            parts.append(f"{unrecorded} audit records lost (queue full)")
        message = "; ".join(parts) or None
        if message is not None:
            start = self._alarm is None
            self._alarm = message
            if start:
                self._episodes += 1
                notify(self._on_alarm, message)
        elif self._alarm is not None:
            self._alarm = None
            notify(self._on_clear, f"audit log healthy again ({self._lost_total} records "
                                  "lost since opening)")

    def _maybe_export(self, *, final: bool = False) -> None:
        exporter = self._exporter
        if exporter is None:
            return
        now = time.monotonic()
        if not final and (self._export_every_s is None or now < self._next_export_at):
            return
        self._next_export_at = now + (self._export_every_s or 0.0)
        seq, digest, at_s, db_id = self._head
        if digest and seq != self._exported_seq:
            self._exported_seq = seq
            exporter.offer(ExportedHead(seq, digest, at_s, db_id))


def checked_kind(kind: str, payload: object, actor: object, source: object) -> str:
    """The plain ``str`` of a record's ``kind``, once the kind, payload, actor and source are
    checked as :meth:`AuditLog.append` documents (``ValueError``/``TypeError`` if not)."""
    plain = _KINDS.get(kind)
    if plain is None:
        plain = _new_kind(kind)
    if type(payload) is not dict and not isinstance(payload, collections.abc.Mapping):
        raise TypeError(f"audit payload must be a mapping, not {type(payload).__name__}")
    if type(actor) is not str:
        _check_text("actor", actor)
    if type(source) is not str:
        _check_text("source", source)
    return plain


def _new_kind(kind: object) -> str:
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise ValueError(f"audit kind must be a lowercase name ([a-z][a-z0-9_.]*, at most "
                         f"64 characters), not {kind!r}")
    plain = str.__str__(kind)
    _KINDS[plain] = plain
    return plain


def _finite_time(value: object) -> float:
    """A clock reading fit for ``at_s``: 0.0 for a broken clock's NaN, inf or non-number
    (SQLite would store NaN as NULL, and the record could never be written)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number):
            return number
    return 0.0


def payload_text(payload: Mapping[str, Any]) -> str:
    """The stored text of a payload: its canonical JSON, or, when it cannot be serialised,
    that of a record of its ``repr`` and the error (never lost, never raised)."""
    try:
        return canonical_payload(payload)
    except Exception as exc:  # the caller's object: any error of its own methods
        return canonical_payload({"unserialisable_payload": _safe_repr(payload),
                                  "error": f"{type(exc).__name__}: {exc}"})


def _safe_repr(obj: object) -> str:
    try:
        return repr(obj)[:4096]
    except Exception as exc:  # a broken __repr__ of the caller's object
        return f"<{type(obj).__name__}: repr failed: {exc}>"


def notify(callback: Callable[[str], None] | None, message: str) -> None:
    """Call an alarm callback; its failure is logged, never raised into the writer."""
    if callback is None:
        return
    try:
        callback(message)
    except Exception:
        log.exception("audit alarm callback failed")


class _Exporter:
    """Sends heads to the sinks on its own thread: the newest head wins, so a slow sink
    never queues up work, and never delays the writer."""

    def __init__(self, sinks: list[HeadSink]) -> None:
        self.sinks = sinks
        self.faults: dict[str, str] = {}
        self._cond = threading.Condition()
        self._next: ExportedHead | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="audit-head-export",
                                        daemon=True)
        self._thread.start()

    def offer(self, head: ExportedHead) -> None:
        with self._cond:
            self._next = head
            self._cond.notify()

    def stop(self, timeout_s: float) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout_s)
        for sink in self.sinks:
            sink.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._next is None and not self._stop:
                    self._cond.wait()
                head, self._next = self._next, None
                stop = self._stop
            if head is not None:
                self._send(head)
            if stop:
                return

    def _send(self, head: ExportedHead) -> None:
        for sink in self.sinks:
            errors = send_head(head, [sink])
            if errors:
                if sink.name not in self.faults:
                    log.warning("audit head export failing: %s", errors[0])
                else:
                    log.debug("audit head export still failing: %s", errors[0])
                self.faults[sink.name] = errors[0]
            elif self.faults.pop(sink.name, None) is not None:
                log.info("audit head export to %s works again", sink.name)


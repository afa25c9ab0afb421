"""The audit log written by a process of its own, for the running gateway.

In the gateway's process, the audit writer thread competes with the control loop for the
interpreter lock: every SQLite step it makes hands the lock back and forth, and each of its
batches (serialising, hashing, committing a thousand records) makes the loop wait for it. With
the writer in a child process the loop's only audit work is to append a tuple and, once per
cycle (:meth:`AuditProcess.idle`), pickle what was appended and write it to a pipe without
blocking. The child runs an ordinary :class:`~gateway.audit.log.AuditLog`, with all of its
guarantees (order, hash chain, batching, disk faults held in memory, alarms, gap records).

Nothing is lost silently:

- the pipe is non-blocking: when the child does not keep up, the parent holds what it could not
  send, up to ``max_buffer_bytes``; beyond that it drops records (decisions first) and counts
  them, and the child puts a record of the loss in the chain where they are missing;
- if the gateway dies, the child sees the end of its input, commits what it received and exits;
- if the child dies, the parent raises the audit alarm once, counts every record it can no
  longer deliver as lost and logs what it knew to be unacknowledged; control goes on.

The child ignores SIGINT and SIGTERM (a Ctrl-C or a service manager signals the whole group):
it stops when the parent closes it or goes away, so that the parent's last records (the
shutdown record) still reach the disk.

Messages both ways are a 4-byte big-endian length and a pickle. Both ends are this module,
over pipes private to the two processes.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import fcntl
import functools
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gateway.audit.chain import ExportedHead, Kind, canonical_payload
from gateway.audit.log import checked_kind
from gateway.audit.store import AuditError, AuditInUse

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_DECISION = Kind.DECISION.value
_F_SETPIPE_SZ = 1031  # Linux fcntl: a bigger pipe rides out a child that is briefly busy
_PIPE_BYTES = 1 << 20
_SHIP_EVERY = 256  # records: shipped at once, without waiting for idle()
_START_TIMEOUT_S = 30.0
_STATUS_EVERY_S = 0.1  # the child's state, a few times a second at most

_Item = tuple[float, str, str, str, "Mapping[str, Any]"]


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_message(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream."""
    head = _read_exactly(stream, _LEN.size)
    if head is None:
        return None
    body = _read_exactly(stream, _LEN.unpack(head)[0])
    if body is None:
        return None
    return pickle.loads(body)  # our own child's pipe (module docstring)


def _picklable(items: list[_Item]) -> bytes:
    """``("records", items)`` framed; a payload that cannot be pickled is sent as the JSON
    it would have been stored as (or, failing that, as its repr with the error, the record
    :class:`~gateway.audit.log.AuditLog` writes for a payload it cannot serialise)."""
    try:
        return _frame(("records", items))
    except Exception:  # the caller's objects: any error of their own
        pass
    fixed: list[_Item] = []
    for item in items:
        try:
            pickle.dumps(item[4], protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            item = (*item[:4], _as_stored(item[4]))
        fixed.append(item)
    return _frame(("records", fixed))


def _as_stored(payload: Mapping[str, Any]) -> dict[str, Any]:
    import json

    try:
        plain: dict[str, Any] = json.loads(canonical_payload(payload))
    except Exception as exc:
        try:
            text = repr(payload)[:4096]
        except Exception as rexc:
            text = f"<{type(payload).__name__}: repr failed: {rexc}>"
        return {"unserialisable_payload": text, "error": f"{type(exc).__name__}: {exc}"}
    return plain


def _close_at_exit(ref: weakref.ref[AuditProcess]) -> None:
    audit = ref()
    if audit is not None:
        audit.close(timeout_s=5.0)


class AuditProcess:
    """An :class:`~gateway.audit.log.AuditLog` at ``path`` in a child process; the calls the
    gateway makes are the same: ``append``, ``idle``, ``flush``, ``close``, and the
    observations ``alarm``, ``lost``, ``pending``, ``acknowledged_seq``, ``head``,
    ``exported_head`` and ``stats``.

    Starting waits until the child has opened the database: it raises
    :class:`~gateway.audit.store.AuditError` with the child's reason where ``AuditLog`` would
    (not an audit database, a broken tail, written by another log), and ``AuditError`` too if
    the child cannot be started.

    ``append`` and ``idle`` are for one thread (the control loop); ``flush``, ``close`` and
    the observations may be called from any. ``on_alarm(message)`` and ``on_clear(message)``
    are called from a thread of this object's: quick and thread-safe, as for ``AuditLog``.
    ``max_buffer_bytes`` bounds what the parent holds when the child does not read.
    ``in_use_wait_s``: how long the child waits for a database that another audit log still
    writes (the writer of a gateway that died just before, finishing its last commits)
    before it gives up with :class:`~gateway.audit.store.AuditInUse`. ``options`` are passed
    to the child's ``AuditLog`` (``flush_interval_s``, ``synchronous``, ...).
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 clock: Callable[[], float] = time.time,
                 on_alarm: Callable[[str], None] | None = None,
                 on_clear: Callable[[str], None] | None = None,
                 max_buffer_bytes: int = 16 << 20,
                 in_use_wait_s: float = 10.0,
                 options: Mapping[str, Any] | None = None) -> None:
        self.path = Path(os.path.abspath(path))
        self._clock = clock
        self._on_alarm = on_alarm
        self._on_clear = on_clear
        self._max_buffer = max_buffer_bytes
        # Decisions are dropped first: the last eighth of the room is kept for the rest.
        self._decision_buffer = max_buffer_bytes - max_buffer_bytes // 8
        self._q: collections.deque[_Item] = collections.deque()
        self._out = bytearray()
        # _out, the lost counters, the write end (re-entrant: a failed write ends in _gone)
        self._lock = threading.RLock()
        self._hinted = False
        self._closed = False
        self._lost_here = 0  # dropped in this process (the child's count comes in status)
        self._lost_unsent: dict[str, int] = {}
        self._lost_first_at_s = 0.0
        self._lost_last_at_s = 0.0
        self._flushes: dict[int, tuple[threading.Event, list[bool]]] = {}
        self._next_token = 0
        self._status: dict[str, Any] = {}
        self._dead: str | None = None  # why the child is gone, if it went unasked
        self._closed_ok: bool | None = None

        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root,
                                                         env.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "gateway.audit.process", str(self.path)]
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                close_fds=True, bufsize=0)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot start the audit writer process: "
                             f"{exc}") from exc
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._wfd = self._proc.stdin.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._wfd, _F_SETPIPE_SZ, _PIPE_BYTES)
        self._reply = self._proc.stdout
        self._send_blocking(_frame(("open", dict(options or {}), in_use_wait_s)),
                           _START_TIMEOUT_S)
        first = self._next_message(_START_TIMEOUT_S + in_use_wait_s)
        if not (isinstance(first, tuple) and first and first[0] == "ready"):
            self._proc.kill()
            self._proc.wait()
            self._close_pipes()
            if isinstance(first, tuple) and first[:1] == ("error",):
                raise (AuditInUse if first[2] else AuditError)(str(first[1]))
            raise AuditError(f"{self.path}: the audit writer process did not start (exit "
                             f"code {self._proc.returncode}; its errors are on stderr)")
        self._status = first[1]
        os.set_blocking(self._wfd, False)
        self._reader = threading.Thread(target=self._read, name="audit-process-reader",
                                        daemon=True)
        self._reader.start()
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ the control side

    def append(self, kind: str, payload: Mapping[str, Any], actor: str = "gateway",
               source: str = "") -> None:
        """As :meth:`AuditLog.append <gateway.audit.log.AuditLog.append>`: queue one record,
        timed now, and return at once; never blocks, never raises for the writer's
        trouble."""
        at_s = self._clock()
        plain = checked_kind(kind, payload, actor, source)
        self._q.append((at_s, plain, actor, source, payload))
        if not self._hinted or len(self._q) >= _SHIP_EVERY:
            self._ship()

    def idle(self) -> None:
        """The control loop is about to sleep: send what was appended. After the first call,
        appends leave sending to it (up to a few hundred records)."""
        self._hinted = True
        if self._q or self._out:
            self._ship()

    def _ship(self) -> None:
        with self._lock:
            q = self._q
            if q:
                # popleft, not a copy and clear(): an append from another thread between the
                # two would be lost.
                items = [q.popleft() for _ in range(len(q))]
                out = self._out
                gone = self._closed or self._dead is not None
                # In order: a record of what was dropped goes where it is missing. (The size
                # is checked per call, not per record: one call adds at most a few hundred.)
                full = len(out) >= self._max_buffer
                tight = len(out) >= self._decision_buffer
                run: list[_Item] = []
                for item in items:
                    if gone or full or (tight and item[1] == _DECISION):
                        self._drop(item[1], item[0])
                        continue
                    if self._lost_unsent:
                        if run:
                            out += _picklable(run)
                            run = []
                        self._send_lost()
                    run.append(item)
                if run:
                    out += _picklable(run)
            self._write_some()

    def _drop(self, kind: str, at_s: float) -> None:
        if not self._lost_unsent:
            self._lost_first_at_s = at_s
        self._lost_last_at_s = at_s
        self._lost_unsent[kind] = self._lost_unsent.get(kind, 0) + 1
        self._lost_here += 1

    def _send_lost(self) -> None:
        if self._dead is None and not self._closed:
            self._out += _frame(("lost", self._lost_unsent, self._lost_first_at_s,
                                 self._lost_last_at_s))
            self._lost_unsent = {}

    def _write_some(self) -> None:
        """Write what the pipe takes now (lock held)."""
        out = self._out
        while out and self._dead is None:
            try:
                n = os.write(self._wfd, out)
            except BlockingIOError:
                return
            except OSError as exc:  # the child is gone (EPIPE)
                self._gone(f"cannot write to the audit writer process: {exc}")
                return
            del out[:n]

    # ------------------------------------------------------------------ flush and close

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record appended before this call is committed; False if
        ``timeout_s`` passes first or the child is gone. Never call it from the control
        loop."""
        deadline = time.monotonic() + timeout_s
        done = threading.Event()
        result = [False]
        with self._lock:
            if self._closed or self._dead is not None:
                return False
            token = self._next_token
            self._next_token += 1
            self._flushes[token] = (done, result)
        self._ship()
        with self._lock:
            self._out += _frame(("flush", token, timeout_s))
        while not done.is_set():
            with self._lock:
                self._write_some()
            left = deadline - time.monotonic()
            if left <= 0 or self._dead is not None:
                break
            done.wait(min(left, 0.01))
        with self._lock:
            self._flushes.pop(token, None)
        return done.is_set() and result[0]

    def close(self, timeout_s: float = 10.0) -> bool:
        """Send what is left, let the child write it (retrying a failing storage until
        ``timeout_s``) and wait for it to exit. True if nothing was left unwritten or lost
        since opening. Idempotent; ``append`` after it drops (and counts) the record."""
        deadline = time.monotonic() + timeout_s
        if not self._closed:
            atexit.unregister(self._atexit)
            self._ship()
            with self._lock:
                if self._lost_unsent:
                    self._send_lost()
                self._closed = True
                self._out += _frame(("close", timeout_s))
                self._wfd_blocking_flush(deadline)
                with contextlib.suppress(OSError):
                    assert self._proc.stdin is not None
                    self._proc.stdin.close()  # the end of its input: the child stops
        self._reader.join(max(0.0, deadline - time.monotonic()) + 5.0)
        try:
            self._proc.wait(max(0.0, deadline - time.monotonic()) + 5.0)
        except subprocess.TimeoutExpired:
            log.error("audit writer process did not stop; killed (pid %d)", self._proc.pid)
            self._proc.kill()
            self._proc.wait()
        if not self._reader.is_alive():
            self._close_pipes()
        return bool(self._closed_ok) and self.lost == 0

    def _close_pipes(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def _wfd_blocking_flush(self, deadline: float) -> None:
        while self._out and self._dead is None and time.monotonic() < deadline:
            self._write_some()
            if self._out:
                select.select([], [self._wfd], [], max(0.0, deadline - time.monotonic()))

    def _send_blocking(self, data: bytes, timeout_s: float) -> None:
        with self._lock:
            self._out += data
            self._wfd_blocking_flush(time.monotonic() + timeout_s)

    def __enter__(self) -> AuditProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ observation

    @property
    def alarm(self) -> str | None:
        """The current fault (the child's, or the child being gone), or None."""
        return self._dead or self._status.get("alarm")

    @property
    def lost(self) -> int:
        """Records dropped since opening, here and in the child."""
        return self._lost_here + int(self._status.get("child_lost", 0))

    @property
    def pending(self) -> int:
        """Records not yet committed, as far as this process knows (the child's count is
        refreshed a few times a second)."""
        return len(self._q) + int(self._status.get("pending", 0)) + (1 if self._out else 0)

    @property
    def acknowledged_seq(self) -> int:
        return int(self._status.get("acknowledged_seq", 0))

    def head(self) -> tuple[int, str]:
        seq, digest, _, _ = self._status.get("head", (0, "", 0.0, ""))
        return seq, digest

    def exported_head(self) -> ExportedHead:
        seq, digest, at_s, db_id = self._status.get("head", (0, "", 0.0, ""))
        if not digest:
            raise RuntimeError(f"{self.path}: the audit database has not been opened yet")
        return ExportedHead(seq, digest, at_s, db_id)

    def stats(self) -> dict[str, Any]:
        """The child's figures (as :meth:`AuditLog.stats`), with this process's losses and
        ``writer: "process"``."""
        stats = dict(self._status.get("stats", {}))
        stats.update(lost=self.lost, pending=self.pending, alarm=self.alarm,
                     writer="process", pid=self._proc.pid)
        return stats

    # ------------------------------------------------------------------ the reader thread

    def _next_message(self, timeout_s: float) -> Any:
        ready, _, _ = select.select([self._reply], [], [], timeout_s)
        if not ready:
            return None
        return _read_message(self._reply)

    def _read(self) -> None:
        while True:
            try:
                message = _read_message(self._reply)
            except Exception as exc:  # a torn message: the child died mid-way
                message = None
                log.debug("audit writer process: unreadable message: %s", exc)
            if message is None:
                break
            self._handle(message)
        if self._closed_ok is None:
            code = self._proc.wait()
            self._gone(f"the audit writer process exited unexpectedly (exit code {code})")

    def _handle(self, message: tuple[Any, ...]) -> None:
        what = message[0]
        if what == "status":
            self._status = message[1]
        elif what == "log":
            _, level, name, text = message
            logging.getLogger(name).log(level, "%s", text)
        elif what in ("alarm", "clear"):
            callback = self._on_alarm if what == "alarm" else self._on_clear
            if self._dead is None:
                _call(callback, message[1])
        elif what == "flushed":
            _, token, ok = message
            with self._lock:
                waiting = self._flushes.get(token)
            if waiting is not None:
                waiting[1][0] = bool(ok)
                waiting[0].set()
        elif what == "closed":
            self._status = message[2]
            self._closed_ok = bool(message[1])

    def _gone(self, why: str) -> None:
        """The child is gone unasked: alarm once; what it had not acknowledged is lost."""
        if self._dead is not None:
            return
        unacked = int(self._status.get("pending", 0))
        self._dead = (f"{why}; records appended from now on are lost (counted), "
                      f"and up to {unacked} it held may not have been written")
        log.error("audit log alarm: %s", self._dead)
        with self._lock:
            self._out.clear()
            waiting = list(self._flushes.values())
        for done, _ in waiting:
            done.set()
        _call(self._on_alarm, self._dead)


def _call(callback: Callable[[str], None] | None, message: str) -> None:
    if callback is None:
        return
    try:
        callback(message)
    except Exception:
        log.exception("audit alarm callback failed")


# ---------------------------------------------------------------------- the child process


class _Sender:
    """The child's end of the reply pipe, shared by its threads."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: object) -> None:
        data = _frame(message)
        view = memoryview(data)
        with self._lock, contextlib.suppress(OSError):
            while view:  # a raw pipe may take part of it
                view = view[self._stream.write(view) or 0:]


class _ForwardLogs(logging.Handler):
    def __init__(self, sender: _Sender) -> None:
        super().__init__()
        self._sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sender.send(("log", record.levelno, record.name, self.format(record)))
        except Exception:  # logging must never raise
            self.handleError(record)


def _status(audit: Any) -> dict[str, Any]:
    return {"acknowledged_seq": audit.acknowledged_seq, "alarm": audit.alarm,
            "child_lost": audit.lost, "pending": audit.pending,
            "head": audit._head, "stats": audit.stats()}  # one package


def _flush(audit: Any, sender: _Sender, token: int, timeout_s: float) -> None:
    ok = audit.flush(timeout_s)
    sender.send(("status", _status(audit)))  # so that the parent sees what was committed
    sender.send(("flushed", token, ok))


def child_main(path: str) -> int:
    """The child: open the AuditLog, feed it what arrives, report its state."""
    from gateway.audit.log import AuditLog

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115
    # Replies get a descriptor of their own; anything printed goes to stderr instead, so
    # that nothing can corrupt the message stream.
    sender = _Sender(os.fdopen(os.dup(1), "wb", buffering=0))
    os.dup2(2, 1)
    root = logging.getLogger()
    root.handlers[:] = [_ForwardLogs(sender)]
    root.setLevel(logging.INFO)
    first = _read_message(stdin)
    if not (isinstance(first, tuple) and first[:1] == ("open",)):
        return 2
    # A gateway restarted at once after a crash: its old writer may still be committing
    # what it received before it saw the end of its input. Wait for it, a while.
    give_up_at = time.monotonic() + float(first[2])
    while True:
        try:
            audit = AuditLog(path, on_alarm=lambda m: sender.send(("alarm", m)),
                             on_clear=lambda m: sender.send(("clear", m)), **first[1])
        except AuditInUse as exc:
            if time.monotonic() < give_up_at:
                time.sleep(0.1)
                continue
            sender.send(("error", str(exc), True))
            return 2
        except (AuditError, ValueError, TypeError) as exc:
            sender.send(("error", str(exc), False))
            return 2
        break
    sender.send(("ready", _status(audit)))
    last: dict[str, Any] = {}
    next_status_at = 0.0
    timeout_s = 10.0
    while True:
        ready, _, _ = select.select([stdin], [], [], _STATUS_EVERY_S)
        message = _read_message(stdin) if ready else ()
        if message is None:  # the parent is gone: write what we have, and stop
            break
        if message:
            what = message[0]
            if what == "records":
                for at_s, kind, actor, source, payload in message[1]:
                    audit.append(kind, payload, actor, source, at_s=at_s)
            elif what == "lost":
                audit.count_lost(message[1], message[2], message[3])
            elif what == "flush":
                _, token, flush_timeout_s = message
                threading.Thread(target=_flush, args=(audit, sender, token, flush_timeout_s),
                                 daemon=True).start()
            elif what == "close":
                timeout_s = float(message[1])
                break
        now = time.monotonic()
        if now >= next_status_at:
            status = _status(audit)
            if status != last:
                sender.send(("status", status))
                last = status
            next_status_at = now + _STATUS_EVERY_S
    ok = audit.close(timeout_s=timeout_s)
    sender.send(("closed", ok, _status(audit)))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))

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
- if the child dies, the parent raises the audit alarm, holds new records (within the same
  bound) and starts another child, with backoff. The new chain's first record states the
  restart, the exit code and how many records the dead child may have held unwritten (its last
  report); a message it had only partly received is counted as lost. ``close`` then returns
  False: the parent cannot prove that everything was written. Control goes on throughout.
  A failure inside the child (a bug, in its main loop or one of its threads) reaches the
  gateway's log as one record with its traceback, not as loose lines on stderr.

The child ignores every signal the gateway handles (SIGINT, SIGTERM, SIGHUP, ...: a Ctrl-C, a
closed terminal or a service manager signals the whole group; see gateway.runtime.signals):
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
import json
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gateway.audit.chain import ExportedHead, Kind
from gateway.audit.log import checked_kind, close_at_exit, notify, payload_text
from gateway.audit.store import AuditError, AuditInUse
from gateway.runtime.signals import ignore_in_child

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# By name, not __name__: the child runs this module as __main__, and its records must come
# from this logger all the same.
log = logging.getLogger("gateway.audit.process")

_LEN = struct.Struct(">I")
_DECISION = Kind.DECISION.value
_ALARM = Kind.ALARM.value
_RESTART_FIRST_S = 0.2  # then doubling, up to:
_RESTART_MAX_S = 30.0
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
    it would have been stored as (:func:`~gateway.audit.log.payload_text`: for a payload JSON
    cannot write either, the record of its repr and the error that ``AuditLog`` writes)."""
    try:
        return _frame(("records", items))
    except Exception:  # the caller's objects, any error of their own: find the culprits
        fixed = [item if _pickles(item[4]) else (*item[:4], json.loads(payload_text(item[4])))
                 for item in items]
    return _frame(("records", fixed))


def _pickles(payload: Mapping[str, Any]) -> bool:
    try:
        pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True


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

        # What is in _out, frame by frame: [bytes not yet written, frame size, records by
        # kind], so that a child's death can count the records it took with it.
        self._frames: collections.deque[tuple[list[int], int, dict[str, int]]] = (
            collections.deque())
        self._options = dict(options or {})
        self._restarts = 0  # children that died unasked and were replaced
        self._dead_unacked = 0  # what the last dead child held, as far as we knew
        self._dead_code: int | None = None
        self._stop_restarting = threading.Event()
        self._restarter: threading.Thread | None = None
        self._start_child(in_use_wait_s)
        self._atexit = functools.partial(close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    def _start_child(self, in_use_wait_s: float) -> None:
        """Start a child, wait until it has opened the database, start its reader."""
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root,
                                                         env.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "gateway.audit.process", str(self.path)]
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                close_fds=True, bufsize=0)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot start the audit writer process: "
                             f"{exc}") from exc
        assert proc.stdin is not None
        assert proc.stdout is not None
        wfd = proc.stdin.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(wfd, _F_SETPIPE_SZ, _PIPE_BYTES)
        first: Any = None
        with contextlib.suppress(OSError):
            _write_all(wfd, _frame(("open", self._options, in_use_wait_s)))
            ready, _, _ = select.select([proc.stdout], [], [],
                                        _START_TIMEOUT_S + in_use_wait_s)
            first = _read_message(proc.stdout) if ready else None
        if not (isinstance(first, tuple) and first and first[0] == "ready"):
            proc.kill()
            proc.wait()
            _close_pipes(proc)
            if isinstance(first, tuple) and first[:1] == ("error",):
                raise (AuditInUse if first[2] else AuditError)(str(first[1]))
            raise AuditError(f"{self.path}: the audit writer process did not start (exit "
                             f"code {proc.returncode}; its errors are on stderr)")
        os.set_blocking(wfd, False)
        self._proc, self._wfd, self._status = proc, wfd, first[1]
        self._reader = threading.Thread(target=self._read, args=(proc,),
                                        name="audit-process-reader", daemon=True)
        self._reader.start()

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
                gone = self._closed  # a dead child is being restarted: keep them
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
                            self._add(_picklable(run), run)
                            run = []
                        self._send_lost()
                    run.append(item)
                if run:
                    self._add(_picklable(run), run)
            self._write_some()

    def _add(self, data: bytes, items: list[_Item] | None = None) -> None:
        """Queue one framed message (lock held)."""
        kinds: dict[str, int] = {}
        for item in items or ():
            kinds[item[1]] = kinds.get(item[1], 0) + 1
        self._out += data
        self._frames.append(([len(data)], len(data), kinds))

    def _drop(self, kind: str, at_s: float) -> None:
        if not self._lost_unsent:
            self._lost_first_at_s = at_s
        self._lost_last_at_s = at_s
        self._lost_unsent[kind] = self._lost_unsent.get(kind, 0) + 1
        self._lost_here += 1

    def _send_lost(self) -> None:
        if not self._closed:
            self._add(_frame(("lost", self._lost_unsent, self._lost_first_at_s,
                              self._lost_last_at_s)))
            self._lost_unsent = {}

    def _write_some(self) -> None:
        """Write what the pipe takes now (lock held)."""
        out = self._out
        frames = self._frames
        while out and self._dead is None:
            try:
                n = os.write(self._wfd, out)
            except BlockingIOError:
                return
            except OSError as exc:  # the child is gone (EPIPE)
                self._gone(self._proc, f"cannot write to the audit writer process: {exc}")
                return
            del out[:n]
            while n:
                left = frames[0][0]
                taken = min(n, left[0])
                left[0] -= taken
                n -= taken
                if not left[0]:
                    frames.popleft()

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
            self._add(_frame(("flush", token, timeout_s)))
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
            self._stop_restarting.set()
            if self._restarter is not None:
                self._restarter.join(max(0.0, deadline - time.monotonic()))
            self._ship()
            with self._lock:
                if self._lost_unsent:
                    self._send_lost()
                self._closed = True
                self._add(_frame(("close", timeout_s)))
                self._wfd_blocking_flush(deadline)
                if self._out:  # the child is gone, or did not read in time
                    for _, _, kinds in self._frames:
                        self._lost_here += sum(kinds.values())
                    self._out.clear()
                    self._frames.clear()
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
            _close_pipes(self._proc)
        return bool(self._closed_ok) and self.lost == 0 and not self._restarts

    def _wfd_blocking_flush(self, deadline: float) -> None:
        while self._out and self._dead is None and time.monotonic() < deadline:
            self._write_some()
            if self._out:
                select.select([], [self._wfd], [], max(0.0, deadline - time.monotonic()))

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
        with self._lock:
            unsent = sum(sum(kinds.values()) for _, _, kinds in self._frames)
        return len(self._q) + unsent + int(self._status.get("pending", 0))

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

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        reply = proc.stdout
        assert reply is not None
        while True:
            try:
                message = _read_message(reply)
            except Exception as exc:  # a torn message: the child died mid-way
                message = None
                log.debug("audit writer process: unreadable message: %s", exc)
            if message is None:
                break
            self._handle(message)
        if self._closed_ok is None:
            code = proc.wait()
            self._gone(proc, f"the audit writer process exited unexpectedly (exit code "
                             f"{code})")

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
                notify(callback, message[1])
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

    def _gone(self, proc: subprocess.Popen[bytes], why: str) -> None:
        """A child is gone unasked: alarm, count what it took with it, restart one."""
        with self._lock:
            if proc is not self._proc or self._dead is not None:
                return  # an earlier child's last words, or already known
            unacked = int(self._status.get("pending", 0))
            self._dead = (f"{why}; up to {unacked} records it held may not have been "
                          "written; restarting it, records are held meanwhile")
            frames = self._frames
            if frames and frames[0][0][0] != frames[0][1]:
                # Part of this message went to the dead child: its records are lost.
                left, _, kinds = frames.popleft()
                del self._out[:left[0]]
                for kind, n in kinds.items():
                    self._lost_unsent[kind] = self._lost_unsent.get(kind, 0) + n
                    self._lost_here += n
            self._dead_unacked = unacked
            self._dead_code = proc.poll()
            waiting = list(self._flushes.values())
            if not self._closed:
                self._restarter = threading.Thread(target=self._restart,
                                                   name="audit-process-restart", daemon=True)
                self._restarter.start()
        log.error("audit log alarm: %s", self._dead)
        for done, _ in waiting:
            done.set()
        notify(self._on_alarm, self._dead)
        _close_pipes(proc)

    def _restart(self) -> None:
        delay_s = _RESTART_FIRST_S
        while not self._stop_restarting.wait(delay_s):
            try:
                self._start_child(in_use_wait_s=10.0)
            except AuditError as exc:
                log.error("audit writer process could not be restarted: %s", exc)
                delay_s = min(delay_s * 2.0, _RESTART_MAX_S)
                continue
            with self._lock:
                self._restarts += 1
                note = {"alarm": "audit_writer_restarted",
                        "exit_code": self._dead_code, "restarts": self._restarts,
                        "records_possibly_unwritten": self._dead_unacked,
                        "reason": self._dead}
                restart = _frame(("records", [(self._clock(), _ALARM, "gateway", "", note)]))
                # First in the new child's input: before what was held while it was down.
                self._out[:0] = restart
                self._frames.appendleft(([len(restart)], len(restart), {_ALARM: 1}))
                if self._lost_unsent:
                    self._send_lost()
                self._dead = None
                self._write_some()
            log.warning("audit writer process restarted (pid %d)", self._proc.pid)
            notify(self._on_clear, f"audit writer process restarted (restart {self._restarts})")
            return

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


# ---------------------------------------------------------------------- the child process


class _Sender:
    """The child's end of the reply pipe, shared by its threads."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, message: object) -> None:
        data = _frame(message)
        with self._lock, contextlib.suppress(OSError):  # OSError: the parent is gone
            _write_all(self._fd, data)


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

    # Every signal the gateway handles (a terminal's SIGHUP and a Ctrl-C reach the whole
    # group): the gateway stops this process when its own shutdown record is written.
    ignore_in_child()
    stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115
    # Replies get a descriptor of their own; anything printed goes to stderr instead, so
    # that nothing can corrupt the message stream.
    sender = _Sender(os.dup(1))
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


def _main(path: str) -> int:
    """:func:`child_main`, with its failures logged: once its log is forwarded, a traceback
    reaches the gateway's log as one record (a thread's too), not as lines on stderr."""
    def thread_failed(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        exc = args.exc_value if args.exc_value is not None else args.exc_type()
        log.error("audit writer process: thread %s failed", name,
                  exc_info=exc.with_traceback(args.exc_traceback))

    threading.excepthook = thread_failed
    try:
        return child_main(path)
    except Exception:
        log.exception("audit writer process failed")
        return 3


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))

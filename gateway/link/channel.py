"""The bounded request channel between the communications process and the safety core.

One connected Unix stream socket (the core makes a ``socket.socketpair()`` and hands one end
to its child). Each frame is a 4-byte big-endian length and a JSON object of at most
``max_frame_bytes``; a longer frame, a zero length, a body that is not a JSON object or a
message of the wrong shape closes the channel (the communications process faces the network:
the core never trusts what comes from it). NaN and infinities travel as JSON's
``NaN``/``Infinity`` extension (both ends are Python): a northbound client's NaN reaches the
envelope, which decides.

Messages, communications -> core::

    {"id": n, "op": "write", "client": C, "values": {tag: float}, "atomic": bool}
    {"id": n, "op": "request", "client": C, "kind": str, "detector": str|null,
     "duration_s": float|null}
    {"id": n, "op": "incident", "client": C, "action": str, "incident_id": str,
     "args": [str]}
    {"id": n, "op": "rollout", "action": str, "args": {str: str}}
    {"id": n, "op": "propose", "client": C, "values": {tag: float}}
    {"op": "refused", "client": C, "values": {...}, "reason": str, "code": int, "count": n}
    {"op": "calls", "window": W, "count": n}
    {"op": "refused_connection", "protocol": str, "address": str, "user": str|null,
     "event": str, "reason": str, "count": n}
    {"op": "pong", "n": k}

core -> communications::

    {"re": n, "outcomes": {tag: O}}   {"re": n, "outcome": O}   {"re": n, "judged": P}
    {"op": "ping", "n": k}
    {"op": "site", "sha256": str}   (a reload applied the site file with that hash)

with ``C = [protocol, address, user|null, role]`` and ``O = [accepted, code, reason,
refusal|null]`` (a :class:`~gateway.adapters.base.WriteOutcome`), ``P`` a
:class:`~gateway.mcp.outcome.ProposalOutcome` as JSON (the real outcome of the cycle that
judged an MCP agent's proposal) and ``W`` one window of an agent's MCP calls
(:mod:`gateway.mcp.calls`), counted like refusal reports.

:class:`ChannelClient` (communications side) is a
:class:`~gateway.adapters.base.NorthboundHandler`: the servers call it as they would call the
core. At most ``max_in_flight`` requests wait for an answer; one more is refused at once
(:attr:`~gateway.adapters.base.Refusal.BUSY`, Modbus exception 6), never queued. A closed
channel answers every waiting call and every new one with a refusal. Refused writes and
connections are aggregated per client and reason for ``window_s`` and sent as one message with
their count, so a flood costs the core at most one message per window per client and reason.

:class:`ChannelServer` (core side) reads frames in the core's event loop and hands each
request to the core's handler in a task of its own; it handles at most ``max_in_flight`` at
once (beyond that it stops reading: the socket buffers, then the client refuses), and at most
``burst`` frames per loop turn. Answers are written without waiting
(``transport.write``); a peer that lets more than ``write_limit_bytes`` pile up unread is
closed. Nothing here raises into the core's loop: a malformed frame closes the channel with
one log line. :meth:`ChannelServer.ping` and :attr:`ChannelServer.last_pong_s` tell a hung
communications process from a live one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import time
from typing import TYPE_CHECKING, Any, Final

from gateway.adapters.base import ClientInfo, NorthboundHandler, Refusal, Role, WriteOutcome
from gateway.mcp.outcome import ProposalOutcome, Result

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Mapping

__all__ = ["MAX_FRAME_BYTES", "ChannelClient", "ChannelServer", "FrameError"]

log = logging.getLogger("gateway.link.channel")

MAX_FRAME_BYTES: Final = 256 * 1024
_LEN: Final = struct.Struct(">I")
_ROLES: Final = {str(r): r for r in Role}
_REFUSALS: Final = {str(r): r for r in Refusal}
OTHER_CLIENTS: Final = "(other clients)"

BUSY: Final = WriteOutcome(False, 6, "the safety core has too many requests in flight; try "
                           "again", Refusal.BUSY)
GONE: Final = WriteOutcome(False, 4, "the safety core is not reachable", Refusal.STOPPING)
LOST: Final = WriteOutcome(False, 4, "the safety core did not answer (its channel closed); "
                           "the request may or may not have been applied", Refusal.DEVICE)
FAILED: Final = WriteOutcome(False, 4, "the safety core failed to handle the request",
                             Refusal.DEVICE)
# What a proposal's caller hears when no cycle's answer can be had (never "applied").
_PROPOSAL_FAILED: Final = ProposalOutcome(
    Result.UNKNOWN, reason="the safety core's answer could not be read; the proposal may or "
                           "may not have been taken")
_JUDGED: Final = "judged"  # a waiting call whose answer is a proposal outcome


def _proposal_answer(outcome: WriteOutcome) -> ProposalOutcome:
    """A proposal answered by the channel itself (busy, gone, lost)."""
    if outcome is LOST:
        return ProposalOutcome(Result.UNKNOWN, reason=outcome.reason)
    return ProposalOutcome(Result.REFUSED, reason=outcome.reason)


class FrameError(ValueError):
    """A frame or message that breaks the channel's protocol (the channel is then closed)."""


def encode(message: Mapping[str, Any]) -> bytes:
    """One frame: length prefix and compact JSON (NaN and infinities as JSON extensions)."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return _LEN.pack(len(body)) + body


class _Frames(asyncio.Protocol):
    """Cuts frames from the stream and hands each decoded object to ``on_message``; at most
    ``burst`` per loop turn (the rest waits for the next turn, reading paused meanwhile)."""

    def __init__(self, name: str, max_frame_bytes: int, write_limit_bytes: int, burst: int,
                 on_message: Callable[[dict[str, Any]], None],
                 on_lost: Callable[[str], None]) -> None:
        self.name = name
        self.max_frame = max_frame_bytes
        self.write_limit = write_limit_bytes
        self.burst = burst
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.hold = False  # the owner asked to stop taking frames (too many in flight)
        self.reason = ""
        self._scheduled = False
        self._reading = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.drain()

    def eof_received(self) -> bool:
        self.close("the peer closed the channel")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        reason = self.reason or (f"channel lost: {exc}" if exc else "the peer closed the channel")
        self.reason = reason
        self.on_lost(reason)

    def close(self, reason: str, *, flush: bool = False) -> None:
        """Close the channel (idempotent); ``reason`` is what :attr:`reason` then says.
        ``flush``: send what is buffered first (a graceful close); else drop it."""
        if not self.reason:
            self.reason = reason
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if flush:
                transport.close()
            else:
                transport.abort()

    def send(self, message: Mapping[str, Any]) -> bool:
        """Queue ``message`` without waiting; False if the channel is closed. A peer that
        lets more than ``write_limit`` bytes pile up is closed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(encode(message))
        if transport.get_write_buffer_size() > self.write_limit:
            log.error("%s: the peer does not read (over %d bytes waiting); closing the channel",
                      self.name, self.write_limit)
            self.close("the peer stopped reading")
            return False
        return True

    def drain(self) -> None:
        """Handle the whole frames buffered, ``burst`` at most; pause reading while held or
        while frames are left for the next loop turn."""
        self._scheduled = False
        done = 0
        buf = self.buffer
        while not self.hold and self.transport is not None and len(buf) >= 4:
            if done >= self.burst:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.drain)
                break
            (size,) = _LEN.unpack_from(buf, 0)
            if size == 0 or size > self.max_frame:
                self._fail(f"frame of {size} bytes (limit {self.max_frame})")
                return
            if len(buf) < 4 + size:
                break
            body = bytes(buf[4:4 + size])
            del buf[:4 + size]
            done += 1
            try:
                message = json.loads(body)
            except (ValueError, RecursionError) as exc:
                self._fail(f"a frame that is not JSON ({exc})")
                return
            if not isinstance(message, dict):
                self._fail("a frame that is not a JSON object")
                return
            try:
                self.on_message(message)
            except (FrameError, KeyError, TypeError, ValueError) as exc:
                self._fail(f"a malformed message ({type(exc).__name__}: {exc})")
                return
        # Reading stays paused while frames wait (held or for the next turn), so the buffer
        # never holds much more than one read's worth beyond a frame.
        want = not self.hold and not self._scheduled
        if len(buf) > self.max_frame + 4:
            want = False
        self._set_reading(want)

    def _set_reading(self, on: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or on == self._reading:
            return
        self._reading = on
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def _fail(self, what: str) -> None:
        log.error("%s: %s; closing the channel", self.name, what)
        self.close(f"protocol error: {what}")


# --------------------------------------------------------------------------- messages


def _client_json(client: ClientInfo) -> list[Any]:
    return [client.protocol, client.address, client.user, str(client.role)]


def _client(raw: Any) -> ClientInfo:
    if not (isinstance(raw, list) and len(raw) == 4):
        raise FrameError("client must be [protocol, address, user, role]")
    protocol, address, user, role = raw
    if not (isinstance(protocol, str) and isinstance(address, str)
            and (user is None or isinstance(user, str)) and role in _ROLES):
        raise FrameError("client: wrong types or unknown role")
    return ClientInfo(protocol, address, user, _ROLES[role])


def _number(raw: Any, key: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise FrameError(f"{key} must be a number")
    return float(raw)


def _text(raw: Any, key: str) -> str:
    if not isinstance(raw, str):
        raise FrameError(f"{key} must be a string")
    return raw


def _count(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise FrameError("count must be an integer >= 1")
    return raw


def _values(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise FrameError("values must be an object")
    return {_text(k, "a tag"): _number(v, "a value") for k, v in raw.items()}


def _outcome_json(outcome: WriteOutcome) -> list[Any]:
    return [bool(outcome.accepted), int(outcome.code), str(outcome.reason),
            None if outcome.refusal is None else str(outcome.refusal)]


def _outcome(raw: Any) -> WriteOutcome:
    if not (isinstance(raw, list) and len(raw) == 4):
        raise FrameError("outcome must be [accepted, code, reason, refusal]")
    accepted, code, reason, refusal = raw
    if not (isinstance(accepted, bool) and isinstance(code, int) and not isinstance(code, bool)
            and isinstance(reason, str) and (refusal is None or refusal in _REFUSALS)):
        raise FrameError("outcome: wrong types or unknown refusal")
    if accepted and code != 0:
        raise FrameError("outcome: accepted with a refusal code")
    return WriteOutcome(accepted, code, reason, None if refusal is None else _REFUSALS[refusal])


# --------------------------------------------------------------------------- core side


class _End:
    """What both ends of the channel share: the socket taken over at :meth:`start`, and
    whether (and why) the channel closed."""

    _sock: socket.socket
    _proto: _Frames
    _closed: asyncio.Event

    async def start(self) -> None:
        """Take over the socket; the first frames are read from the next loop turn."""
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: self._proto, sock=self._sock)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def reason(self) -> str:
        """Why the channel closed ("" while open)."""
        return self._proto.reason

    async def wait_closed(self) -> None:
        await self._closed.wait()


class ChannelServer(_End):
    """The core's end of the channel: dispatches requests to ``handler`` (see the module
    docstring). ``sock`` is a connected stream socket; :meth:`start` takes it over.
    ``on_close(reason)`` is called once when the channel closes (from the event loop)."""

    def __init__(self, sock: socket.socket, handler: NorthboundHandler, *,
                 max_in_flight: int = 64, max_frame_bytes: int = MAX_FRAME_BYTES,
                 write_limit_bytes: int = 1 << 20, burst: int = 32,
                 max_notes_per_s: int = 4096,
                 clock: Callable[[], float] = time.monotonic,
                 on_close: Callable[[str], None] | None = None) -> None:
        if max_in_flight < 1 or burst < 1 or max_notes_per_s < 1:
            raise ValueError("max_in_flight, burst and max_notes_per_s must be >= 1")
        self._sock = sock
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.max_notes_per_s = max_notes_per_s
        self.clock = clock
        self.on_close = on_close
        self._proto = _Frames("safety core channel", max_frame_bytes, write_limit_bytes, burst,
                              self._message, self._lost)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._ping = 0
        self.last_pong_s = clock()
        self.pongs = 0  # pongs received (0: the peer has not answered yet)
        self.handled = 0  # requests answered
        self.notes = 0  # refusal reports taken
        self.dropped_notes = 0  # refusal reports over max_notes_per_s, dropped
        self._notes_window = (0.0, 0)

    async def start(self) -> None:
        await super().start()
        self.last_pong_s = self.clock()

    @property
    def in_flight(self) -> int:
        """Requests being handled now."""
        return len(self._tasks)

    def close(self, reason: str = "closed by the core") -> None:
        """Close the channel now (idempotent). Requests being handled run to their end (a
        write half-way to a device is not cut); their answers are dropped."""
        self._proto.close(reason)

    def ping(self) -> None:
        """Ask the peer for a pong (its answer moves :attr:`last_pong_s`)."""
        self._ping += 1
        self._proto.send({"op": "ping", "n": self._ping})

    def site_reloaded(self, sha256: str) -> None:
        """Tell the peer that a reload applied the site file whose bytes hash to ``sha256``
        (it reads the file again for what it shows; nothing waits for an answer)."""
        self._proto.send({"op": "site", "sha256": sha256})

    def _lost(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        log.info("safety core channel closed: %s", reason)
        if self.on_close is not None:
            try:
                self.on_close(reason)
            except Exception:  # the core's callback must not break the loop's callback
                log.exception("channel on_close callback failed")

    def _message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "pong":
            n = msg.get("n")
            if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= self._ping:
                raise FrameError(f"a pong to no ping ({n!r})")
            self.pongs += 1
            self.last_pong_s = self.clock()
            return
        if op in ("refused", "refused_connection", "calls"):
            self._note(op, msg)
            return
        rid = msg.get("id")
        if isinstance(rid, bool) or not isinstance(rid, int):
            raise FrameError(f"a request without an integer id (op {op!r})")
        handler = self.handler
        coro: Any
        if op == "write":
            atomic = msg["atomic"]
            if not isinstance(atomic, bool):
                raise FrameError("atomic must be true or false")
            values = _values(msg["values"])
            if not values:
                raise FrameError("a write of no values")
            coro = self._answer_write(rid, handler.write(_client(msg["client"]), values,
                                                         atomic), values)
        elif op == "request":
            detector = msg["detector"]
            duration = msg["duration_s"]
            coro = self._answer(rid, handler.request(
                _client(msg["client"]), _text(msg["kind"], "kind"),
                None if detector is None else _text(detector, "detector"),
                None if duration is None else _number(duration, "duration_s")))
        elif op == "incident":
            args = msg["args"]
            if not isinstance(args, list):
                raise FrameError("args must be a list")
            coro = self._answer(rid, handler.incident(
                _client(msg["client"]), _text(msg["action"], "action"),
                _text(msg["incident_id"], "incident_id"),
                tuple(_text(a, "an argument") for a in args)))
        elif op == "rollout":
            args = msg["args"]
            if not isinstance(args, dict):
                raise FrameError("args must be an object")
            coro = self._answer(rid, handler.rollout(
                _text(msg["action"], "action"),
                {_text(k, "a key"): _text(v, "a value") for k, v in args.items()}))
        elif op == "propose":
            values = _values(msg["values"])
            if not values:
                raise FrameError("a proposal of no values")
            coro = self._answer_judged(rid, handler.propose(_client(msg["client"]), values))
        else:
            raise FrameError(f"unknown op {op!r}")
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if len(self._tasks) >= self.max_in_flight:
            self._proto.hold = True

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._proto.hold and len(self._tasks) < self.max_in_flight:
            self._proto.hold = False
            if self._proto.transport is not None:
                self._proto.drain()

    async def _answer_write(self, rid: int, call: Any, values: dict[str, float]) -> None:
        try:
            outcomes = await call
            if not (isinstance(outcomes, dict)
                    and all(isinstance(outcomes.get(k), WriteOutcome) for k in values)):
                log.error("channel: the handler's write answer is not one outcome per tag")
                outcomes = dict.fromkeys(values, FAILED)
        except Exception:
            log.exception("channel: the handler failed on a write")
            outcomes = dict.fromkeys(values, FAILED)
        self.handled += 1
        self._proto.send({"re": rid, "outcomes": {k: _outcome_json(outcomes[k])
                                                  for k in values}})

    async def _answer(self, rid: int, call: Any) -> None:
        try:
            outcome = await call
            if not isinstance(outcome, WriteOutcome):
                log.error("channel: the handler answered %r, not an outcome",
                          type(outcome).__name__)
                outcome = FAILED
        except Exception:
            log.exception("channel: the handler failed on a request")
            outcome = FAILED
        self.handled += 1
        self._proto.send({"re": rid, "outcome": _outcome_json(outcome)})

    async def _answer_judged(self, rid: int, call: Any) -> None:
        try:
            outcome = await call
            if not isinstance(outcome, ProposalOutcome):
                log.error("channel: the handler answered %r, not a proposal outcome",
                          type(outcome).__name__)
                outcome = _PROPOSAL_FAILED
        except Exception:
            log.exception("channel: the handler failed on a proposal")
            outcome = _PROPOSAL_FAILED
        self.handled += 1
        self._proto.send({"re": rid, "judged": outcome.to_json()})

    def _note(self, op: str, msg: dict[str, Any]) -> None:
        # A budget per second: the client aggregates, so more means a faulty or hostile
        # communications process; the core's time is not its to take.
        now = self.clock()
        start, n = self._notes_window
        if now - start >= 1.0 or now < start:
            start, n = now, 0
        n += 1
        self._notes_window = (start, n)
        if n > self.max_notes_per_s:
            self.dropped_notes += 1
            if n == self.max_notes_per_s + 1:
                log.error("channel: more than %d refusal reports in a second; dropping the "
                          "rest of this second", self.max_notes_per_s)
            return
        count = _count(msg["count"])
        if op == "calls":
            window = msg["window"]
            if not (isinstance(window, dict) and isinstance(window.get("agent"), str)
                    and isinstance(window.get("tool"), str)):
                raise FrameError("calls: a window with an agent and a tool")
            window["count"] = count
            self.notes += 1
            try:
                self.handler.agent_calls(window)
            except Exception:  # must not raise (NorthboundHandler); a bug must not close us
                log.exception("channel: the handler failed to take an agent's calls")
            return
        reason = _text(msg["reason"], "reason")
        self.notes += 1
        try:
            if op == "refused":
                code = msg["code"]
                if isinstance(code, bool) or not isinstance(code, int):
                    raise FrameError("code must be an integer")
                self.handler.refused_many(_client(msg["client"]), _values(msg["values"]),
                                          reason, code, count)
            else:
                user = msg["user"]
                self.handler.refused_connections_many(
                    _text(msg["protocol"], "protocol"), _text(msg["address"], "address"),
                    None if user is None else _text(user, "user"), _text(msg["event"], "event"),
                    reason, count)
        except FrameError:
            raise
        except Exception:  # must not raise (NorthboundHandler); a bug must not close us
            log.exception("channel: the handler failed to take a refusal report")


# --------------------------------------------------------------------------- comms side


class _Window:
    """Refusal reports of one kind from one client, counted until sent."""

    __slots__ = ("count", "message", "opened_s", "overflow")

    def __init__(self, message: dict[str, Any], opened_s: float, overflow: bool) -> None:
        self.message = message
        self.opened_s = opened_s
        self.overflow = overflow  # stands for the clients beyond max_windows
        self.count = 0


class ChannelClient(_End, NorthboundHandler):
    """The communications process's end: a :class:`NorthboundHandler` whose calls are
    answered by the core (see the module docstring). :meth:`start` takes over ``sock``."""

    def __init__(self, sock: socket.socket, *, max_in_flight: int = 64,
                 max_frame_bytes: int = MAX_FRAME_BYTES, write_limit_bytes: int = 1 << 20,
                 window_s: float = 1.0, max_windows: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be finite and > 0, not {window_s!r}")
        self._sock = sock
        self.max_in_flight = max_in_flight
        self.window_s = window_s
        self.max_windows = max_windows
        self.clock = clock
        self._proto = _Frames("communications channel", max_frame_bytes, write_limit_bytes,
                              64, self._message, self._lost)
        self._next_id = 0
        # Per request: its future, and what its answer is (the tags written, None for one
        # outcome, _JUDGED for a proposal's outcome).
        self._waiting: dict[int, tuple[asyncio.Future[Any], tuple[str, ...] | str | None]] = {}
        self._closed = asyncio.Event()
        self._windows: dict[tuple[Any, ...], _Window] = {}
        self._flusher: asyncio.TimerHandle | None = None
        self.busy = 0  # calls refused because max_in_flight were waiting
        self._closing = False
        # Called with the sha256 of the site file a reload applied (the core's "site" notice).
        self.on_site: Callable[[str], None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def close(self, reason: str = "closed by the communications process") -> None:
        """Send the refusal windows still open, then close (idempotent)."""
        if not self._closed.is_set():
            self._flush(force=True)
        self._closing = True
        self._proto.close(reason, flush=True)

    # ------------------------------------------------------------------ requests

    def _send(self, message: dict[str, Any], tags: tuple[str, ...] | str | None
              ) -> asyncio.Future[Any] | WriteOutcome:
        if self._closed.is_set() or self._proto.transport is None:
            return GONE
        if len(self._waiting) >= self.max_in_flight:
            self.busy += 1
            return BUSY
        self._next_id += 1
        rid = self._next_id
        message["id"] = rid
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = (future, tags)
        if not self._proto.send(message):
            del self._waiting[rid]
            return GONE
        return future

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        tags = tuple(values)
        sent = self._send({"op": "write", "client": _client_json(client),
                           "values": {k: float(v) for k, v in values.items()},
                           "atomic": bool(atomic)}, tags)
        if isinstance(sent, WriteOutcome):
            return dict.fromkeys(tags, sent)
        result: dict[str, WriteOutcome] = await sent
        return result

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        sent = self._send({"op": "request", "client": _client_json(client), "kind": kind,
                           "detector": detector, "duration_s": duration_s}, None)
        if isinstance(sent, WriteOutcome):
            return sent
        result: WriteOutcome = await sent
        return result

    async def incident(self, client: ClientInfo, action: str, incident_id: str,
                       args: tuple[str, ...]) -> WriteOutcome:
        sent = self._send({"op": "incident", "client": _client_json(client), "action": action,
                           "incident_id": incident_id, "args": list(args)}, None)
        if isinstance(sent, WriteOutcome):
            return sent
        result: WriteOutcome = await sent
        return result

    async def rollout(self, action: str, args: Mapping[str, str]) -> WriteOutcome:
        sent = self._send({"op": "rollout", "action": action, "args": dict(args)}, None)
        if isinstance(sent, WriteOutcome):
            return sent
        result: WriteOutcome = await sent
        return result

    async def propose(self, client: ClientInfo, values: dict[str, float]) -> ProposalOutcome:
        sent = self._send({"op": "propose", "client": _client_json(client),
                           "values": {k: float(v) for k, v in values.items()}}, _JUDGED)
        if isinstance(sent, WriteOutcome):
            return _proposal_answer(sent)
        result: ProposalOutcome = await sent
        return result

    def agent_calls(self, window: dict[str, Any]) -> None:
        """Send one window of an agent's calls (already aggregated by its
        :class:`~gateway.mcp.calls.CallLog`); dropped once the channel is closed."""
        if self._closed.is_set():
            return
        count = window.get("count", 1)
        self._proto.send({"op": "calls", "window": window,
                          "count": count if isinstance(count, int) and count >= 1 else 1})

    def _message(self, msg: dict[str, Any]) -> None:
        if msg.get("op") == "ping":
            n = msg.get("n")
            if isinstance(n, bool) or not isinstance(n, int):
                raise FrameError("ping without an integer n")
            self._proto.send({"op": "pong", "n": n})
            return
        if msg.get("op") == "site":
            sha = msg.get("sha256")
            if not isinstance(sha, str):
                raise FrameError("site without a sha256 text")
            if self.on_site is not None:
                self.on_site(sha)
            return
        rid = msg.get("re")
        entry = self._waiting.pop(rid, None) if isinstance(rid, int) else None
        if entry is None:
            raise FrameError(f"an answer to no request ({rid!r})")
        future, tags = entry
        try:
            if tags == _JUDGED:
                try:
                    answer: Any = ProposalOutcome.from_json(msg["judged"])
                except ValueError as exc:
                    raise FrameError(f"judged: {exc}") from None
            elif tags is None:
                answer = _outcome(msg["outcome"])
            else:
                raw = msg["outcomes"]
                if not (isinstance(raw, dict) and set(raw) == set(tags)):
                    raise FrameError("outcomes must name exactly the tags written")
                answer = {t: _outcome(raw[t]) for t in tags}
        except (FrameError, KeyError):
            # Never "accepted" for an answer we cannot read: this call is refused, and the
            # channel closes (the rest get LOST).
            answer = (_PROPOSAL_FAILED if tags == _JUDGED else FAILED if tags is None
                      else dict.fromkeys(tags, FAILED))
            if not future.done():
                future.set_result(answer)
            raise
        if not future.done():
            future.set_result(answer)

    def _lost(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._flusher is not None:
            self._flusher.cancel()
        waiting, self._waiting = self._waiting, {}
        for future, tags in waiting.values():
            if not future.done():
                future.set_result(_proposal_answer(LOST) if tags == _JUDGED else LOST
                                  if tags is None else dict.fromkeys(tags, LOST))
        log.log(logging.INFO if self._closing else logging.WARNING,
                "communications channel closed: %s", reason)

    # ------------------------------------------------------------------ refusal reports

    def refused(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                code: int) -> None:
        key = ("refused", client.protocol, _host(client.address), client.user,
               str(client.role), reason, int(code))
        window = self._window(key, ("refused", client.protocol, str(client.role), reason,
                                    int(code)))
        if window is None:
            return
        if not window.message:
            address, user = ((OTHER_CLIENTS, None) if window.overflow
                             else (client.address, client.user))
            window.message.update(op="refused", client=[client.protocol, address, user,
                                                        str(client.role)],
                                  reason=reason, code=int(code))
        window.message["values"] = {k: float(v) for k, v in values.items()}  # the latest

    def refused_connection(self, protocol: str, address: str, user: str | None, event: str,
                           reason: str) -> None:
        key = ("refused_connection", protocol, _host(address), user, event, reason)
        window = self._window(key, ("refused_connection", protocol, event, reason))
        if window is None or window.message:
            return
        if window.overflow:
            address, user = OTHER_CLIENTS, None
        window.message.update(op="refused_connection", protocol=protocol, address=address,
                              user=user, event=event, reason=reason)

    def _window(self, key: tuple[Any, ...], overflow: tuple[Any, ...]) -> _Window | None:
        """The open window of ``key`` (counted once more), or of the kind's overflow key
        when ``max_windows`` are open; None once the channel is closed."""
        if self._closed.is_set():
            return None
        window = self._windows.get(key)
        spill = window is None and len(self._windows) >= self.max_windows
        if spill:
            # A flood from many addresses: one window per kind stands for the rest (counted).
            key = (*overflow[:2], OTHER_CLIENTS, *overflow[2:])
            window = self._windows.get(key)
        if window is None:
            window = _Window({}, self.clock(), spill)
            self._windows[key] = window
            self._schedule()
        window.count += 1
        return window

    def _schedule(self) -> None:
        if self._flusher is None:
            loop = asyncio.get_running_loop()
            self._flusher = loop.call_later(self.window_s, self._flush)

    def _flush(self, force: bool = False) -> None:
        self._flusher = None
        now = self.clock()
        due = [k for k, w in self._windows.items()
               if force or now - w.opened_s >= self.window_s or now < w.opened_s]
        for key in due:
            window = self._windows.pop(key)
            window.message["count"] = window.count
            self._proto.send(window.message)
        if self._windows and not force:
            self._schedule()


def _host(address: str) -> str:
    """``"10.0.0.5:50312"`` -> ``"10.0.0.5"`` (a client is its host, not its port)."""
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    head, sep, tail = address.rpartition(":")
    return head if sep and tail.isdigit() and ":" not in head else address

"""The gateway's northbound Modbus TCP server: SCADA and external AI controllers connect here.

Our own implementation, an asyncio protocol per connection (not pymodbus's server, which its
maintainers do not describe as hardened for hostile networks): every frame is validated before
any other work, reads are answered from the in-memory
:class:`~gateway.adapters.modbus.map.RegisterImage` in the callback that received them
(no task, nothing awaited), and every write is a request handed to the runtime's
:class:`~gateway.adapters.base.NorthboundHandler`, which checks it against the safety envelope.
The register layout is documented in :mod:`gateway.adapters.modbus.map`.

Frames from clients are hostile. Per connection, each frame is handled in order:

1. MBAP header (Modbus Messaging on TCP/IP Implementation Guide V1.0b, 3.1.3): exactly 7
   bytes. Protocol id other than 0, or a length field outside 2..254 (unit id + a PDU of at
   most 253 bytes, Modbus Application Protocol V1.1b3, 4.1) closes the connection: the peer is
   not speaking Modbus, and no resynchronisation of a byte stream is safe. The rest of the
   frame (length - 1 bytes) must arrive within ``frame_timeout_s`` (as must the rest of a
   header once its first byte arrived), else the connection is closed. Several frames in one
   TCP segment are handled one by one; bytes after a valid frame are the next frame's header.
2. Unit id: the configured ``spec.unit``, or 255 (the TCP implementation guide recommends
   0xFF when a TCP device is addressed directly). Any other value, including 0 (a broadcast in
   serial Modbus: a gateway must never fan a write out), is answered with exception 0x0B
   (gateway target device failed to respond).
3. Function code allowlist {3, 4, 6, 16}; anything else: exception 1 (illegal function).
4. PDU length exact for the function (FC3/4/6: 4 data bytes; FC16: 5 + byte count, byte count
   = 2 x quantity), quantity 1..125 (reads) or 1..123 (FC16): else exception 3 (illegal data
   value). Then the address range (no wrap past 65535, wholly inside mapped registers; writes
   cover whole float32 setpoints only, so FC6 always gets this answer): else exception 2.
5. Reads are answered from the image. Writes decode the float32 values (NaN and inf are passed
   on: the envelope's ``nonfinite_policy`` decides) and ``await handler.write(client, values,
   atomic=True)``. All accepted: the normal echo response; the image is *not* changed here (the
   runtime mirrors the value it actually applied). Any refused: that refusal's exception code
   (3: outside the envelope). A handler failure: exception 4, logged, server keeps serving.

Connections: a peer whose IP is not in ``spec.allow`` (addresses or CIDR networks; empty
refuses everyone) is closed at once, logged once per address. Slots are shared fairly, so that
no source can lock SCADA out (IEC 62443-3-3 SR 7.1, denial of service protection): a source
holds at most ``max_per_source`` connections (its oldest idle one makes room for its newest),
and when all ``max_connections`` are taken, the oldest idle connection of the source holding
the most is dropped for a new allowed client; only when none is idle (every one is waiting
for a write's outcome) is the newcomer refused. A connection silent for ``idle_timeout_s``
between frames is closed; a peer that does not read its answers is closed after
``frame_timeout_s``. The limits come from ``spec`` unless given to the constructor.
Peers in ``spec.ai_clients`` write as :attr:`Role.AI` (proposals), the
others as :attr:`Role.OPERATOR`.

Nothing here bounds how long the handler takes: it is the runtime's job to answer (with a
refusal if it must), and cancelling a write half-way to the device would be worse.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

from gateway.adapters.base import (
    AdapterError,
    ClientInfo,
    NorthboundHandler,
    Role,
    WriteOutcome,
)
from gateway.adapters.modbus.map import RegisterImage
from gateway.config.schema import Table

if TYPE_CHECKING:
    import ssl
    from types import TracebackType

    from gateway.adapters.modbus.map import NorthboundMap
    from gateway.config.schema import ModbusServerSpec

logger = logging.getLogger(__name__)

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
# Bytes buffered from one peer before we stop reading from it (its frames wait behind a write
# or behind answers it does not read).
_READ_LIMIT = 64 * 1024
# Frames handled per callback before the loop gets a turn (see _Session).
_BURST = 16
# How long stop() waits for the writes it cancelled, then for the listening socket.
_STOP_WAIT_S = 5.0
_HEAD3 = struct.Struct(">HHHBBB")  # MBAP + function code + (exception code | byte count)
_ECHO = struct.Struct(">HHHBBHH")  # MBAP + function code + address + quantity/value
_ADDR_QTY = struct.Struct(">HH")
_FLOAT32 = struct.Struct(">f")

UNIT_THIS_DEVICE = 255
MAX_READ_QUANTITY = 125  # Modbus Application Protocol V1.1b3, 6.3 / 6.4
MAX_WRITE_QUANTITY = 123  # 6.12
_MIN_LENGTH, _MAX_LENGTH = 2, 254


class FunctionCode(IntEnum):
    READ_HOLDING_REGISTERS = 3
    READ_INPUT_REGISTERS = 4
    WRITE_SINGLE_REGISTER = 6
    WRITE_MULTIPLE_REGISTERS = 16


class ExceptionCode(IntEnum):
    """Modbus exception codes the server answers with (Application Protocol V1.1b3, 7)."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    GATEWAY_TARGET_FAILED = 0x0B


_FUNCTIONS = frozenset(int(f) for f in FunctionCode)
_REFUSAL_CODES = frozenset(range(1, 0x0C))  # exception codes a handler may answer with
# Function codes that write (coils, registers, mask, read/write): a refused one is evidence.
_WRITE_FUNCTIONS = frozenset({5, 6, 15, 16, 22, 23})
_CODE_TEXT = {1: "illegal function", 2: "no setpoint at this address (illegal data address)",
              3: "malformed quantity or length (illegal data value)",
              11: "unknown unit id (gateway target failed to respond)"}


class _Write(NamedTuple):
    """A write request that passed every check: what the handler is asked, and the echo."""

    fc: int
    address: int
    quantity: int
    values: dict[str, float]


@dataclass
class ServerStats:
    """Counters since start (cheap ints; the ops layer exports them)."""

    accepted: int = 0
    refused_not_allowed: int = 0
    refused_too_many: int = 0
    evicted: int = 0  # idle connections closed to make room for a new client
    frames: int = 0
    exceptions: int = 0
    protocol_violations: int = 0
    timeouts: int = 0
    handler_failures: int = 0


class _Once:
    """Keys seen before, so a repeated fault is logged once at its level, then at debug.
    Bounded: a hostile network cannot grow it without limit (past the cap, debug only)."""

    def __init__(self, cap: int = 1024) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._cap = cap

    def level(self, kind: str, key: str, level: int) -> int:
        k = (kind, key)
        if k in self._seen or len(self._seen) >= self._cap:
            return logging.DEBUG
        self._seen.add(k)
        return level


def _networks(key: str, entries: tuple[str, ...]
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for text in entries:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{key}: {text!r} is not an IP address or network") from None
    return tuple(nets)


def _peer_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return ip


class ModbusServer:
    """The northbound Modbus TCP server of one site (behaviour in the module docstring).

    ``port`` overrides ``spec.port`` (0 binds an ephemeral port, for tests; see :attr:`port`).
    Raises ``ValueError`` for an entry of ``spec.allow``/``spec.ai_clients`` that is not an
    address or network, or a non-positive timeout or connection limit.
    """

    def __init__(self, map: NorthboundMap, spec: ModbusServerSpec,
                 handler: NorthboundHandler, *, port: int | None = None,
                 idle_timeout_s: float | None = None, frame_timeout_s: float = 2.0,
                 max_connections: int | None = None, max_per_source: int | None = None,
                 secure: bool = False, image: RegisterImage | None = None) -> None:
        if idle_timeout_s is None:
            idle_timeout_s = spec.idle_timeout_s
        if max_connections is None:
            max_connections = spec.max_connections
        if max_per_source is None:
            max_per_source = min(spec.max_per_source, max_connections)
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0, not {idle_timeout_s}")
        if not frame_timeout_s > 0:
            raise ValueError(f"frame_timeout_s must be > 0, not {frame_timeout_s}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, not {max_connections}")
        if not 1 <= max_per_source <= max_connections:
            raise ValueError(f"max_per_source must be 1..{max_connections}, not "
                             f"{max_per_source}")
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, not {port}")
        self.map = map
        self.spec = spec
        # Modbus/TCP Security: TLS on spec.tls.port, the role from the client's certificate.
        self._tls: ssl.SSLContext | None = None
        self._roles: dict[str, Role] = {}
        if secure:
            if spec.tls is None:
                raise ValueError("secure=True needs spec.tls")
            # Imported here: it loads the cryptography package (certificate parsing), which a
            # site without Modbus/TCP Security never needs (issue 17: start in a second).
            from gateway.adapters.modbus.tls import server_context

            self._tls = server_context(spec.tls)
            self._roles = {name: Role(role) for name, role in spec.tls.roles}
            if port is None:
                port = spec.tls.port
        # A plain and a TLS server of one site share one image (one mirror).
        self.image = RegisterImage(map) if image is None else image
        self.stats = ServerStats()
        self._handler = handler
        self._port_wanted = spec.port if port is None else port
        self._idle_s = idle_timeout_s
        self._frame_s = frame_timeout_s
        self._max = max_connections
        self._max_per_source = max_per_source
        self._allow = _networks("allow", spec.allow)
        self._ai = _networks("ai_clients", spec.ai_clients)
        self._units = frozenset((spec.unit, UNIT_THIS_DEVICE))
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._closing = False
        self._once = _Once()
        self._bound_port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The bound TCP port. Raises ``RuntimeError`` before :meth:`start`."""
        if self._bound_port is None:
            raise RuntimeError("server not started")
        return self._bound_port

    @property
    def connections(self) -> int:
        """Connections currently open (allowed and being served)."""
        return len(self._sessions)

    async def start(self) -> None:
        """Bind ``spec.host`` and the port and start accepting. Raises :class:`AdapterError`
        if the address cannot be bound, ``RuntimeError`` if already started."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._closing = False
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Session(self), self.spec.host, self._port_wanted, reuse_address=True,
                ssl=self._tls)
        except OSError as exc:
            raise AdapterError(
                f"modbus server cannot listen on {self.spec.host}:{self._port_wanted}: {exc}"
            ) from exc
        self._bound_port = int(self._server.sockets[0].getsockname()[1])
        logger.info("modbus server listening on %s:%d (unit %d%s)", self.spec.host,
                    self._bound_port, self.spec.unit,
                    ", TLS, client certificates required" if self._tls else "")

    async def stop(self) -> None:
        """Stop accepting and close every connection (a write awaiting the handler is
        cancelled: its client gets no answer). Idempotent."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        sessions = list(self._sessions)
        writes = [s.write_task for s in sessions if s.write_task is not None]
        for task in writes:
            task.cancel()
        for session in sessions:
            session.abort()
        self._sessions.clear()
        # Bounded: a write awaiting a pymodbus request can lose its cancellation (Python
        # 3.11's asyncio.wait_for), and a shutdown must end all the same.
        if writes:
            _, pending = await asyncio.wait(writes, timeout=_STOP_WAIT_S)
            if pending:
                logger.error("modbus server: %d writes did not stop within %.0f s; left "
                             "behind", len(pending), _STOP_WAIT_S)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), _STOP_WAIT_S)

    async def __aenter__(self) -> ModbusServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # ------------------------------------------------------------------ the mirror

    def set_sensor(self, name: str, value: float) -> None:
        """Mirror a sensor's engineering value (see :meth:`RegisterImage.set_sensor`)."""
        self.image.set_sensor(name, value)

    def set_actuator(self, name: str, value: float) -> None:
        """Mirror the value last applied to an actuator's device."""
        self.image.set_actuator(name, value)

    def set_status(self, mode_code: int, latched: bool, incident: bool, heartbeat: int) -> None:
        """Mirror the gateway status (:class:`~gateway.adapters.modbus.map.ModeCode`)."""
        self.image.set_status(mode_code, latched, incident, heartbeat)

    def set_bypasses(self, count: int, earliest_expiry_s: float | None) -> None:
        """Mirror the bypasses in force (``status.bypasses``, ``status.bypass_expiry_s``)."""
        self.image.set_bypasses(count, earliest_expiry_s)

    def set_rejection(self, code: int, actuator_index: int | None) -> None:
        """Mirror the last rejection (:class:`~gateway.adapters.modbus.map.RejectionCode`,
        0-based actuator index or None)."""
        self.image.set_rejection(code, actuator_index)

    # ------------------------------------------------------------------ connections

    def _allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return ip is not None and any(ip in net for net in self._allow)

    def _admit(self, session: _Session, peer: object, der: bytes | None = None
               ) -> ClientInfo | None:
        """A new connection: its client, or None when it must be closed at once (logged once
        per address; refusals cost no more than this). ``der`` is a TLS client's
        certificate."""
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        port = int(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 else 0
        ip = _peer_ip(host)
        if self._closing:
            return None
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        protocol = "modbus-tls" if self._tls else "modbus"
        if not self._allowed(ip):
            self.stats.refused_not_allowed += 1
            logger.log(self._once.level("refused", host, logging.WARNING),
                       "modbus: refused connection from %s (not in northbound.modbus.allow)",
                       host)
            self._handler.refused_connection(protocol, address, None, "connection_refused",
                                             "not in northbound.modbus.allow")
            return None
        user: str | None = None
        if self._tls is not None:
            # Authorised before it may take anyone's slot.
            from gateway.adapters.modbus.tls import identify  # loaded with the TLS context

            who = identify(der, self._roles)
            if who.role is None:
                self.stats.refused_not_allowed += 1
                logger.log(self._once.level("cert", f"{host}:{who.name}", logging.WARNING),
                           "modbus TLS: refused %s (%s): %s", host, who.name, who.refusal)
                self._handler.refused_connection(protocol, address, who.name,
                                                 "certificate_refused", who.refusal)
                return None
            role, user = who.role, who.name
        else:
            role = Role.AI if ip is not None and any(ip in net for net in self._ai) else (
                Role.OPERATOR)
        if not self._make_room(host):
            self.stats.refused_too_many += 1
            logger.log(self._once.level("full", host, logging.WARNING),
                       "modbus: refused connection from %s: %d connections open, none idle",
                       host, len(self._sessions))
            self._handler.refused_connection(protocol, address, user, "connection_refused",
                                             "every connection slot busy")
            return None
        self.stats.accepted += 1
        self._sessions.add(session)
        return ClientInfo(protocol, address, user, role)

    def _make_room(self, host: str) -> bool:
        """Free a slot for a new connection from ``host`` if one is needed; False when none
        can be freed (every candidate is waiting for a write's outcome)."""
        own = [s for s in self._sessions if s.host == host]
        if len(own) >= self._max_per_source:
            return self._evict(own, host, f"{host} holds {len(own)} connections "
                                          f"(max_per_source {self._max_per_source})")
        if len(self._sessions) < self._max:
            return True
        by_source: dict[str, list[_Session]] = {}
        for s in self._sessions:
            by_source.setdefault(s.host, []).append(s)
        # The source holding the most gives way first; among equals, the one idle longest.
        for _, sessions in sorted(by_source.items(),
                                  key=lambda kv: (-len(kv[1]), min(s.last_frame_s
                                                                   for s in kv[1]))):
            if self._evict(sessions, host, f"all {self._max} connections taken"):
                return True
        return False

    def _evict(self, sessions: list[_Session], newcomer: str, why: str) -> bool:
        idle = [s for s in sessions if s.idle]
        if not idle:
            return False
        victim = min(idle, key=lambda s: s.last_frame_s)
        self.stats.evicted += 1
        logger.log(self._once.level("evict", victim.host, logging.WARNING),
                   "modbus: closed the oldest idle connection of %s for a new one from %s: %s",
                   victim.host, newcomer, why)
        victim.abort()
        self._sessions.discard(victim)
        return True

    def _violation(self, client: ClientInfo, host: str, what: str) -> None:
        self.stats.protocol_violations += 1
        logger.log(self._once.level("violation", host, logging.WARNING),
                   "modbus: closed %s: %s", client.address, what)

    # ------------------------------------------------------------------ requests

    def _exception(self, tid: int, unit: int, fc: int, code: int) -> bytes:
        self.stats.exceptions += 1
        return _HEAD3.pack(tid, 0, 3, unit, (fc | 0x80) & 0xFF, code)

    def _answer(self, tid: int, unit: int, pdu: bytes) -> bytes | _Write:
        """The whole answer to a request, or the checked write the handler must decide.
        Pure and synchronous: a read never waits for anything."""
        fc = pdu[0]
        if unit not in self._units:
            return self._exception(tid, unit, fc, ExceptionCode.GATEWAY_TARGET_FAILED)
        if fc not in _FUNCTIONS:
            return self._exception(tid, unit, fc, ExceptionCode.ILLEGAL_FUNCTION)
        n = len(pdu) - 1
        if fc == FunctionCode.WRITE_MULTIPLE_REGISTERS:
            if n < 5:
                return self._exception(tid, unit, fc, ExceptionCode.ILLEGAL_DATA_VALUE)
            address, quantity = _ADDR_QTY.unpack_from(pdu, 1)
            count = pdu[5]
            if (not 1 <= quantity <= MAX_WRITE_QUANTITY or count != 2 * quantity
                    or n != 5 + count):
                return self._exception(tid, unit, fc, ExceptionCode.ILLEGAL_DATA_VALUE)
            return self._check_write(tid, unit, fc, address, quantity, pdu, 6)
        if n != 4:
            return self._exception(tid, unit, fc, ExceptionCode.ILLEGAL_DATA_VALUE)
        address, quantity = _ADDR_QTY.unpack_from(pdu, 1)
        if fc == FunctionCode.WRITE_SINGLE_REGISTER:
            # ``quantity`` is the value here; one register is never a whole float32 setpoint.
            return self._check_write(tid, unit, fc, address, 1, pdu, 3)
        if not 1 <= quantity <= MAX_READ_QUANTITY:
            return self._exception(tid, unit, fc, ExceptionCode.ILLEGAL_DATA_VALUE)
        table = (Table.HOLDING_REGISTER if fc == FunctionCode.READ_HOLDING_REGISTERS
                 else Table.INPUT_REGISTER)
        data = self.image.read(table, address, quantity) if address + quantity <= 65536 else None
        if data is None:
            return self._exception(tid, unit, fc, ExceptionCode.ILLEGAL_DATA_ADDRESS)
        return _HEAD3.pack(tid, 0, 3 + len(data), unit, fc, len(data)) + data

    def _check_write(self, tid: int, unit: int, fc: int, address: int, quantity: int,
                     pdu: bytes, at: int) -> bytes | _Write:
        tags = (self.map.setpoints_in(address, quantity) if address + quantity <= 65536
                else None)
        if tags is None:
            return self._exception(tid, unit, fc, ExceptionCode.ILLEGAL_DATA_ADDRESS)
        values = {tag: float(_FLOAT32.unpack_from(pdu, at + 4 * i)[0])
                  for i, tag in enumerate(tags)}
        return _Write(fc, address, quantity, values)

    async def _write(self, tid: int, unit: int, client: ClientInfo, req: _Write) -> bytes:
        fc = req.fc
        if client.role is Role.VIEWER:
            self._report(client, dict(req.values), "modbus: viewers may not write",
                         ExceptionCode.ILLEGAL_DATA_ADDRESS)
            return self._exception(tid, unit, fc, ExceptionCode.ILLEGAL_DATA_ADDRESS)
        try:
            outcomes = await self._handler.write(client, dict(req.values), atomic=True)
        except AdapterError as exc:
            self.stats.handler_failures += 1
            logger.log(self._once.level("adapter", type(exc).__name__, logging.WARNING),
                       "modbus: write from %s failed: %s", client.address, exc)
            return self._exception(tid, unit, fc, ExceptionCode.SERVER_DEVICE_FAILURE)
        except Exception:
            # A bug in the handler: the client gets "device failure", the server lives on.
            self.stats.handler_failures += 1
            logger.exception("modbus: handler raised on a write from %s", client.address)
            return self._exception(tid, unit, fc, ExceptionCode.SERVER_DEVICE_FAILURE)
        code = self._refusal(outcomes, req.values)
        if code:
            return self._exception(tid, unit, fc, code)
        return _ECHO.pack(tid, 0, 6, unit, fc, req.address, req.quantity)

    def _refused_frame(self, client: ClientInfo, pdu: bytes, code: int) -> None:
        """A write frame refused here, before the handler: reported to it as evidence."""
        fc = pdu[0]
        values = {"function_code": float(fc)}
        if len(pdu) >= 3:
            values["address"] = float(int.from_bytes(pdu[1:3], "big"))
        self._report(client, values, f"modbus function {fc}: "
                     f"{_CODE_TEXT.get(code, f'exception {code}')}", code)

    def _report(self, client: ClientInfo, values: dict[str, float], reason: str,
                code: int) -> None:
        try:
            self._handler.refused(client, values, reason, code)
        except Exception:  # a bug in the handler must not stop the server
            logger.exception("modbus: handler failed to take a refusal from %s",
                             client.address)

    def _refusal(self, outcomes: object, values: dict[str, float]) -> int:
        """0 if every tag was accepted, else the exception code to answer with (the first
        refusal in address order; a malformed answer from the handler counts as a failure)."""
        if not isinstance(outcomes, dict):
            logger.error("modbus: handler returned %r, not a dict of outcomes",
                         type(outcomes).__name__)
            self.stats.handler_failures += 1
            return ExceptionCode.SERVER_DEVICE_FAILURE
        answers = [outcomes.get(tag) for tag in values]
        for tag, outcome in zip(values, answers, strict=True):
            if not isinstance(outcome, WriteOutcome):
                logger.error("modbus: handler gave no outcome for %r", tag)
                self.stats.handler_failures += 1
                return ExceptionCode.SERVER_DEVICE_FAILURE
        for tag, outcome in zip(values, answers, strict=True):
            assert outcome is not None  # checked above
            if not outcome.accepted:
                if outcome.code in _REFUSAL_CODES:
                    return int(outcome.code)
                logger.error("modbus: handler refused %r with code %r (not an exception "
                             "code)", tag, outcome.code)
                return ExceptionCode.SERVER_DEVICE_FAILURE
        return 0


class _Session(asyncio.Protocol):
    """One client connection, as an asyncio protocol: frames are cut from the byte stream as
    it arrives and a read is answered in the same callback (no task, no wake-up: a read
    costs the control loop as little as it can). A write goes to a task of its own; the
    frames behind it wait in the buffer, so answers leave in request order.

    Deadlines (one timer per connection, moved lazily: most frames only push it later):
    ``idle_timeout_s`` between frames, ``frame_timeout_s`` from a frame's first byte to its
    last and for a backlog of answers the peer does not read; none while the handler decides
    a write. At most ``_BURST`` frames are handled per callback, then the loop gets a turn:
    a client that pipelines thousands of reads cannot hold up the control cycle.
    """

    def __init__(self, server: ModbusServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._client: ClientInfo | None = None
        self._host = "?"
        self.write_task: asyncio.Task[None] | None = None
        self._paused = False  # our answers back up in the transport: the peer is not reading
        self._reading = True
        self._eof = False
        self._closed = False
        self._partial = False  # the buffer holds the start of a frame (its deadline runs)
        self._again: asyncio.Handle | None = None
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None
        # When the last whole frame arrived (or the connection opened): the eviction order.
        self.last_frame_s = self._loop.time()

    @property
    def host(self) -> str:
        return self._host

    @property
    def idle(self) -> bool:
        """Nothing in progress: no write awaiting its outcome, no frame half received."""
        return self.write_task is None and not self._buf and not self._closed

    # -------------------------------------------------------------- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        tls = transport.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        self._client = self._server._admit(self, peer, der)
        if self._client is None:
            self._closed = True
            transport.abort()
            return
        self._expire_at(self._loop.time() + self._server._idle_s)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._buf += data
        if len(self._buf) > _READ_LIMIT and self._reading:
            assert self._transport is not None
            self._reading = False
            self._transport.pause_reading()
        if self._again is None:
            self._process()

    def eof_received(self) -> bool:
        self._eof = True
        if self._again is None:
            self._process()
        return True  # half-open: answers to frames already received still leave

    def pause_writing(self) -> None:
        self._paused = True
        self._expire_at(self._loop.time() + self._server._frame_s)

    def resume_writing(self) -> None:
        self._paused = False
        if self._again is None:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._client is not None and not self._closed:
            logger.debug("modbus: connection %s lost: %s", self._client.address, exc)
        self._closed = True
        self._stop_timers()
        self._server._sessions.discard(self)
        # A write on its way is left to finish: the runtime records it, and its answer has
        # nowhere to go.

    # -------------------------------------------------------------- frames

    def _process(self) -> None:
        self._again = None
        if self._closed or self.write_task is not None or self._paused:
            return
        server, buf, transport, client = self._server, self._buf, self._transport, self._client
        assert transport is not None
        assert client is not None
        for _ in range(_BURST):
            if len(buf) < 7:
                break
            tid, protocol, length, unit = _MBAP.unpack_from(buf)
            if protocol != 0:
                self._fail(f"protocol id {protocol}, not 0 (Modbus)")
                return
            if not _MIN_LENGTH <= length <= _MAX_LENGTH:
                self._fail(f"MBAP length {length} outside {_MIN_LENGTH}..{_MAX_LENGTH}")
                return
            end = 6 + length
            if len(buf) < end:
                break
            pdu = bytes(buf[7:end])
            del buf[:end]
            self._partial = False
            self.last_frame_s = self._loop.time()
            server.stats.frames += 1
            answer = server._answer(tid, unit, pdu)
            if (pdu and pdu[0] in _WRITE_FUNCTIONS and not isinstance(answer, _Write)
                    and answer[7] & 0x80):
                server._refused_frame(client, pdu, answer[8])
            if isinstance(answer, _Write):
                self.write_task = self._loop.create_task(
                    self._answer_write(tid, unit, client, answer))
                self._expire_at(math.inf)  # the handler's time is not bounded here
                return
            transport.write(answer)
            if self._paused:
                return
        else:
            if len(buf) >= 7:  # more frames waiting: let the loop run other work first
                self._again = self._loop.call_soon(self._process)
                return
        if not self._reading and len(buf) <= _READ_LIMIT:
            self._reading = True
            transport.resume_reading()
        if self._eof:
            if buf:
                self._fail("truncated frame")
            else:
                self._close()
        elif not buf:
            self._expire_at(self._loop.time() + server._idle_s)
        elif not self._partial:
            self._partial = True
            self._expire_at(self._loop.time() + server._frame_s)

    async def _answer_write(self, tid: int, unit: int, client: ClientInfo, req: _Write
                            ) -> None:
        """Await the handler's decision, answer, and go on with the frames behind it (in
        this task: a done-callback would cost the write one more turn of the loop)."""
        try:
            answer = await self._server._write(tid, unit, client, req)
        except BaseException:  # cancelled (the server stops), or worse: _write answers errors
            self.write_task = None
            self._close()
            raise
        self.write_task = None
        if self._closed:
            return
        assert self._transport is not None
        self._transport.write(answer)
        self._partial = False  # what arrived meanwhile gets a frame's time from now
        self._process()

    # -------------------------------------------------------------- closing

    def _fail(self, what: str) -> None:
        assert self._client is not None
        self._server._violation(self._client, self._host, what)
        self._close()

    def _expire_at(self, deadline: float) -> None:
        self._deadline = deadline
        timer = self._timer
        if deadline == math.inf or (timer is not None and timer.when() <= deadline):
            return  # lazily: when the armed timer fires it looks at the deadline again
        if timer is not None:
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed or self._deadline == math.inf:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._server.stats.timeouts += 1
        if self._client is not None:
            logger.debug("modbus: closed %s: timeout", self._client.address)
        self._close()

    def _stop_timers(self) -> None:
        for handle in (self._timer, self._again):
            if handle is not None:
                handle.cancel()
        self._timer = self._again = None

    def _close(self) -> None:
        """Close; a peer that left answers unread in our buffer is not reading, and must not
        hold the socket open."""
        if self._closed:
            return
        self._closed = True
        self._stop_timers()
        transport = self._transport
        assert transport is not None
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def abort(self) -> None:
        self._closed = True
        self._stop_timers()
        if self._transport is not None:
            self._transport.abort()

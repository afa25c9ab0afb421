"""Modbus TCP southbound client: keeps one device's tags current and writes its actuators.

pymodbus 3.16 is used here and nowhere else above this package. Everything it can raise or
answer is translated at this boundary into :mod:`gateway.adapters.base`'s errors: an exception
response becomes :class:`DeviceRejected` (with the Modbus exception code), a lost connection or
a timeout becomes :class:`DeviceUnavailable`. Where the device has
``separate_write_connection``, that connection is our own lean client
(:mod:`gateway.adapters.modbus.writer`: writes only, without pymodbus's per-request cost), under
the same rules; polls, and writes without a connection of their own, go through pymodbus.

Safety rules kept here:

- a write is encoded completely before any byte is sent: one unencodable value and nothing of
  the request is written;
- a write is attempted only on a live connection and never queued: after a reconnect nothing
  is replayed (the reconnect itself sends reads only);
- pymodbus's own automatic reconnect and request retries are switched off (``reconnect_delay=0``,
  ``retries=0``): a retried write could land late, and reconnect timing is ours to log and bound;
- any timeout drops the connection (a late answer could otherwise be taken for the answer to
  the next request), marks every tag of the device bad and backs off before reconnecting; so
  does a request abandoned by its caller (cancelled) before its answer. Callers must therefore
  never cut a request short before the device's ``timeout_ms`` (the runtime lets a slow write
  finish in its own task): an answer within the timeout keeps the connection in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from typing import TYPE_CHECKING, TypeVar

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway.adapters.base import (
    ConnectionState,
    DeviceRejected,
    DeviceUnavailable,
    EncodingError,
)
from gateway.adapters.codec import decode, decode_bit, encode, encode_bit
from gateway.adapters.modbus.readplan import plan_reads
from gateway.adapters.modbus.writer import ConnectionLost, WriteConnection
from gateway.config.schema import ModbusRef, Table, TagKind

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from pymodbus.pdu import ModbusPDU

    from gateway.adapters.base import TagStore
    from gateway.adapters.modbus.readplan import ReadBlock
    from gateway.config.schema import ModbusDevice, Tag

__all__ = ["ModbusDeviceClient"]

_log = logging.getLogger("gateway.adapters.modbus")

_T = TypeVar("_T")
_ADDR_VALUE = struct.Struct(">BHH")  # function code, address, value (FC5/FC6) or quantity (FC16)


class _ConnectionLost(Exception):
    """Internal: the session with the device is over (closed, timed out, answered nonsense)."""


class ModbusDeviceClient:
    """One Modbus TCP device: polls its tags into ``store`` and writes its actuators.

    ``tags`` are this device's tags (all are polled, actuators included, so their read-back is
    current); every name must be in ``store``. ``clock`` stamps readings (monotonic seconds).
    Reconnect delays double from ``backoff_initial_s`` up to ``backoff_max_s`` and return to the
    initial delay after a complete successful poll cycle.

    Use: run :meth:`run` as a task; call :meth:`write` / :meth:`write_heartbeat` from the control
    loop; :meth:`close` (or cancel the task) to stop.

    ``polling=False`` is stepped time (drills run the plant and the gateway in lockstep): the
    connection is kept by :meth:`run` as usual, but tags are read only when :meth:`refresh` is
    awaited, once per step, so readings carry the drill's clock and nothing is read between
    steps.
    """

    def __init__(self, device: ModbusDevice, tags: Sequence[Tag], store: TagStore,
                 clock: Callable[[], float] = time.monotonic,
                 backoff_initial_s: float = 0.1, backoff_max_s: float = 5.0,
                 *, polling: bool = True) -> None:
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError(f"backoff must satisfy 0 < initial ({backoff_initial_s}) <= max "
                             f"({backoff_max_s})")
        for tag in tags:
            if tag.device != device.name:
                raise ValueError(f"{tag.name}: belongs to device {tag.device!r}, "
                                 f"not {device.name!r}")
            if not isinstance(tag.ref, ModbusRef):
                raise ValueError(f"{tag.name}: not a Modbus tag")
            if tag.name not in store.names:
                raise ValueError(f"{tag.name}: not in the tag store")
        self.device = device
        self._tags = {t.name: t for t in tags}
        self._names = tuple(self._tags)
        self._plan = plan_reads(tags)
        self._store = store
        self._clock = clock
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._timeout_s = device.timeout_ms / 1000.0
        self._poll_s = device.poll_ms / 1000.0
        self._polling = polling
        self._state = ConnectionState.DISCONNECTED
        self.connects = 0  # sessions opened (the first connect and every reconnect)
        self._client: AsyncModbusTcpClient | None = None
        # The separate write connection, if configured: our own lean client (writes only).
        self._writer: WriteConnection | None = None
        self._wake = asyncio.Event()  # connection lost or close(): stop waiting now
        self._closing = False
        self._running = False
        self._fault: str | None = None  # connection-level fault being reported
        self._faults: dict[str, str] = {}  # per read block / per tag (undecodable value)
        self._cycle_done = False  # a full poll cycle succeeded in this session
        self._in_flight: dict[int, int] = {}  # id(connection) -> our requests on it now

    @property
    def state(self) -> ConnectionState:
        return self._state

    # ------------------------------------------------------------------ logging

    def _report(self, key: str | None, message: str) -> None:
        """A connection-level fault: warn once while the same fault persists, then debug."""
        if key != self._fault:
            _log.warning("%s: %s", self.device.name, message)
            self._fault = key
        else:
            _log.debug("%s: %s", self.device.name, message)

    def _report_in(self, key: str, message: str) -> None:
        """A fault of one block or tag: warn once while it persists, then debug."""
        if self._faults.get(key) != message:
            _log.warning("%s: %s", self.device.name, message)
            self._faults[key] = message
        else:
            _log.debug("%s: %s", self.device.name, message)

    def _cleared(self, key: str, message: str) -> None:
        if self._faults.pop(key, None) is not None:
            _log.info("%s: %s", self.device.name, message)

    # ------------------------------------------------------------------ connection

    async def run(self) -> None:
        """Connect, poll every ``poll_ms``, reconnect with backoff; until :meth:`close` or
        cancellation. Never raises except :class:`asyncio.CancelledError` (re-raised)."""
        if self._running:
            raise RuntimeError(f"{self.device.name}: run() is already running")
        self._running = True
        delay = self._backoff_initial_s
        try:
            while not self._closing:
                self._state = ConnectionState.CONNECTING
                self._cycle_done = False
                try:
                    client = await self._connect()
                    self._state = ConnectionState.CONNECTED
                    self.connects += 1  # the core's metrics: reconnects are connects - 1
                    await self._poll(client)
                except _ConnectionLost as exc:
                    self._report(str(exc), str(exc))
                except Exception:  # a bug must not stop the gateway: log, back off, retry
                    _log.exception("%s: unexpected error in the poll loop", self.device.name)
                    self._fault = "unexpected"
                if self._cycle_done:
                    delay = self._backoff_initial_s
                self._drop()
                if self._closing:
                    break
                self._state = ConnectionState.BACKOFF
                self._wake.clear()  # a loss already handled must not cut the backoff short
                await self._wait(delay)
                delay = min(2 * delay, self._backoff_max_s)
        finally:
            self._running = False
            self._drop()
            self._state = (ConnectionState.CLOSED if self._closing
                           else ConnectionState.DISCONNECTED)

    async def _connect(self) -> AsyncModbusTcpClient:
        """Open the session: the polling connection and, where configured, a second one for
        writes. Either failing fails the session (and a later loss of either drops both)."""
        self._wake.clear()
        client = await self._open()
        self._client = client
        if self.device.separate_write_connection:
            self._writer = await self._open_writer()
        return client

    async def _open_writer(self) -> WriteConnection:
        try:
            writer = await WriteConnection.open(
                self.device.host, self.device.port, self._timeout_s,
                on_lost=lambda: self._on_connect_change(False),
                connect_timeout_s=2 * self._timeout_s)
        except (OSError, TimeoutError):
            raise _ConnectionLost(
                f"cannot connect to {self.device.host}:{self.device.port} (write connection)"
            ) from None
        if self._closing:  # close() was called while connecting
            writer.close()
            raise _ConnectionLost("closed")
        return writer

    async def _open(self) -> AsyncModbusTcpClient:
        client = AsyncModbusTcpClient(
            self.device.host, port=self.device.port, name=self.device.name,
            reconnect_delay=0, retries=0, timeout=self._timeout_s,
            trace_connect=self._on_connect_change)
        try:
            async with asyncio.timeout(2 * self._timeout_s):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        if not ok or not client.connected:
            client.close()
            raise _ConnectionLost(
                f"cannot connect to {self.device.host}:{self.device.port}")
        if self._closing:  # close() was called while connecting
            client.close()
            raise _ConnectionLost("closed")
        return client

    def _on_connect_change(self, connected: bool) -> None:
        if not connected:
            self._wake.set()

    def _drop(self) -> None:
        """End the session: close the socket, mark every tag bad (the values are no longer
        live)."""
        client, self._client = self._client, None
        writer, self._writer = self._writer, None
        for c in (client, writer):
            if c is not None:
                c.close()
        if self._state is ConnectionState.CONNECTED:
            self._store.mark_bad(self._names)
            self._state = ConnectionState.DISCONNECTED

    def _lose(self, reason: str) -> _ConnectionLost:
        """The session is broken (timeout, garbled answer): close it now so that no late
        answer can be taken for another request's, and wake the poll loop."""
        self._drop()
        self._wake.set()
        return _ConnectionLost(reason)

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the connection drops or close() is called."""
        with contextlib.suppress(TimeoutError):  # the full wait is the normal case
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def close(self) -> None:
        """Close the connection and stop :meth:`run` (it returns at its next step); tags are
        marked bad. Idempotent."""
        self._closing = True
        self._wake.set()
        self._drop()
        self._state = ConnectionState.CLOSED

    # ------------------------------------------------------------------ polling

    async def _poll(self, client: AsyncModbusTcpClient) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._closing:
            if self._polling:
                await self._read_all(client)
                next_at += self._poll_s
            else:  # stepped: refresh() reads; this loop only watches the connection
                next_at += 0.05
            now = loop.time()
            if next_at < now:  # overran: start the next cycle now, do not burst to catch up
                next_at = now
            await self._wait(next_at - now)
            if self._client is not client or not client.connected:
                raise self._lose("connection lost")
            if self.device.separate_write_connection and (
                    self._writer is None or not self._writer.connected):
                raise self._lose("write connection lost")

    async def _read_all(self, client: AsyncModbusTcpClient) -> None:
        for index, block in enumerate(self._plan):
            await self._read_block(client, index, block)
        if not self._cycle_done:
            self._cycle_done = True
            if self._fault is not None:  # the fault is over only once a cycle went through
                _log.info("%s: connected and polling again", self.device.name)
                self._fault = None

    async def refresh(self) -> None:
        """Read every tag once now (stepped time). Without a connection, or if it breaks
        during the read, the tags simply stay as they are (bad after a loss) and :meth:`run`
        reconnects; never raises for the device's behaviour."""
        client = self._client
        if client is None or not client.connected or self._state is not ConnectionState.CONNECTED:
            return
        with contextlib.suppress(_ConnectionLost):
            await self._read_all(client)

    async def _request(self, client: AsyncModbusTcpClient | WriteConnection, what: str,
                       call: Callable[[], Awaitable[_T]]) -> _T:
        """Send one request; the answer's exception code (if any) is left to the caller.
        Raises _ConnectionLost (already dropped) when not connected, on timeout or on a
        transport error."""
        if client not in (self._client, self._writer) or not client.connected:
            raise self._lose("connection lost")
        key = id(client)
        busy = self._in_flight.get(key, 0)
        self._in_flight[key] = busy + 1
        try:
            if busy:
                # Behind our other requests on this connection (the poll loop's read, the
                # runtime's write: one each at a time). pymodbus's own timeout starts only once
                # its request lock is ours, and each request ahead holds it at most its own
                # timeout, so every answer still gets its full timeout_ms from when it is
                # sent; this timer is only a backstop for that promise, with a second of
                # slack for a loaded host (a device answering within its timeout must never
                # be dropped because our own requests queued).
                async with asyncio.timeout((busy + 1) * self._timeout_s + 1.0):
                    response = await call()
            else:
                # The lock is free: pymodbus's timeout (retries=0) bounds the answer on its
                # own, and a second timer costs each request ~6 us.
                response = await call()
        except TimeoutError:
            raise self._lose(f"{what}: no answer within {self.device.timeout_ms} ms") from None
        except asyncio.CancelledError:
            # Abandoned by our caller with the request on the wire: its answer may still
            # come, and pymodbus would take it for the next request's ("request ask for
            # transaction_id=N but got id=N-1"). The session is never reused out of step.
            self._lose(f"{what}: abandoned before its answer")
            raise
        except (ModbusException, ConnectionLost) as exc:
            # pymodbus's ConnectionException, ModbusIOException (timeout); the write
            # connection's loss or an answer out of step (it closed itself already).
            raise self._lose(f"{what}: {exc}") from None
        finally:
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]
        return response

    async def _read_block(self, client: AsyncModbusTcpClient, index: int,
                          block: ReadBlock) -> None:
        unit = self.device.unit
        read = {
            Table.HOLDING_REGISTER: client.read_holding_registers,
            Table.INPUT_REGISTER: client.read_input_registers,
            Table.COIL: client.read_coils,
            Table.DISCRETE_INPUT: client.read_discrete_inputs,
        }[block.table]
        what = f"read {block.table.value} {block.start}+{block.count}"
        response = await self._request(
            client, what, lambda: read(block.start, count=block.count, device_id=unit))
        names = [name for name, _ in block.members]
        if response.isError():
            code = getattr(response, "exception_code", None)
            self._report_in(f"block {index}", f"{what}: exception code {code}")
            self._store.mark_bad(names)
            return
        data: Sequence[int] = response.bits if block.table.is_bits else response.registers
        if len(data) < block.count:
            self._report_in(f"block {index}", f"{what}: answer holds {len(data)} values")
            self._store.mark_bad(names)
            return
        self._cleared(f"block {index}", f"{what}: good again")
        at_s = self._clock()
        for name, offset in block.members:
            tag = self._tags[name]
            try:
                if block.table.is_bits:
                    value = decode_bit(tag, bool(data[offset]))
                else:
                    value = decode(tag, [int(r) for r in
                                         data[offset:offset + tag.wire_type.registers]])
            except EncodingError as exc:
                self._report_in(f"tag {name}", str(exc))
                self._store.mark_bad([name])
                continue
            self._cleared(f"tag {name}", f"{name} decodes again")
            self._store.update(name, value, good=True, at_s=at_s)

    # ------------------------------------------------------------------ writing

    async def write(self, values: Mapping[str, float]) -> None:
        """Write actuator values (engineering units). Holding-register values at contiguous
        addresses go out together in one FC16 request (at most 123 registers; FC6 for a single
        register), in address order; each coil is one FC5 request.

        Everything is encoded first: EncodingError (also for a tag that is not a writable
        actuator of this device) and nothing is sent. Then DeviceUnavailable if not connected
        (writes are never queued), DeviceRejected (``code`` = Modbus exception code) if the
        device refuses one, DeviceUnavailable on timeout or connection loss. Modbus has no
        transactions: after a failure, the tags before it in the mapping are written; the
        error message names them.
        """
        ops: list[tuple[Tag, tuple[int, ...] | bool]] = []
        for name, value in values.items():
            tag = self._tags.get(name)
            if tag is None or tag.kind is not TagKind.ACTUATOR:
                raise EncodingError(f"{name}: not an actuator of device {self.device.name!r}")
            assert isinstance(tag.ref, ModbusRef)
            if tag.ref.table is Table.COIL:
                ops.append((tag, encode_bit(tag, value)))
            elif tag.ref.table is Table.HOLDING_REGISTER:
                ops.append((tag, encode(tag, value)))
            else:
                raise EncodingError(f"{name}: {tag.ref.table.value} is not writable")
        done: list[str] = []
        for names, address, payload in _batches(ops):
            try:
                await self._write_one("+".join(names), address, payload)
            except (DeviceRejected, DeviceUnavailable) as exc:
                if done:
                    exc.args = (f"{exc.args[0]} (already written: {', '.join(done)})",)
                raise
            done.extend(names)

    async def write_heartbeat(self, counter: int) -> None:
        """Write the device's heartbeat: ``counter % 65536`` to a holding register (FC6), or
        ``counter % 2`` to a coil (FC5). No heartbeat configured: nothing happens. Errors as
        :meth:`write`."""
        ref = self.device.heartbeat
        if ref is None:
            return
        payload: tuple[int, ...] | bool = (
            counter % 2 == 1 if ref.table is Table.COIL else (counter % 65536,))
        await self._write_one("heartbeat", ref.address, payload)

    async def _write_one(self, name: str, address: int, payload: tuple[int, ...] | bool
                         ) -> None:
        writer = self._writer
        if writer is not None and not writer.connected:
            # The write connection died while polling goes on: end the session, so that the
            # poll loop reconnects both (and marks the tags bad meanwhile).
            self._lose("write connection lost")
            writer = None
        client = self._client
        if (self._state is not ConnectionState.CONNECTED or self._closing or client is None
                or not client.connected):
            raise DeviceUnavailable(f"{self.device.name}: not connected; {name} not written")
        if isinstance(payload, bool):
            fc, what = 5, f"write {name} (coil {address})"
        elif len(payload) == 1:
            fc, what = 6, f"write {name} (register {address})"
        else:
            fc, what = 16, f"write {name} (registers {address}+{len(payload)})"
        if writer is not None:
            await self._write_lean(writer, name, what, fc, address, payload)
        else:
            await self._write_pymodbus(client, name, what, fc, address, payload)

    async def _write_lean(self, writer: WriteConnection, name: str, what: str, fc: int,
                          address: int, payload: tuple[int, ...] | bool) -> None:
        """One write on the separate write connection. Every normal answer to FC5, FC6 and
        FC16 repeats the request's first five bytes (function code, address, then the value or
        the quantity; Modbus Application Protocol V1.1b3, 6.5, 6.6, 6.12): anything else but
        an exception response is a garbled session."""
        if isinstance(payload, bool):
            pdu = _ADDR_VALUE.pack(fc, address, 0xFF00 if payload else 0x0000)
        elif fc == 6:
            pdu = _ADDR_VALUE.pack(fc, address, payload[0])
        else:
            pdu = (_ADDR_VALUE.pack(fc, address, len(payload))
                   + struct.pack(f">B{len(payload)}H", 2 * len(payload), *payload))
        unit = self.device.unit
        try:
            answer = await self._request(writer, what, lambda: writer.request(unit, pdu))
        except _ConnectionLost as exc:
            raise DeviceUnavailable(f"{self.device.name}: {exc}; {name} may not be written"
                                    ) from None
        if len(answer) == 2 and answer[0] == fc | 0x80:
            raise DeviceRejected(f"{self.device.name}: {what}: exception code {answer[1]}",
                                 answer[1])
        if answer != pdu[:5]:
            self._lose(f"{what}: answer does not echo the request")
            raise DeviceUnavailable(
                f"{self.device.name}: {what}: answer does not echo the request "
                f"({answer.hex()})")

    async def _write_pymodbus(self, client: AsyncModbusTcpClient, name: str, what: str,
                              fc: int, address: int, payload: tuple[int, ...] | bool) -> None:
        """One write on the polling connection (no separate write connection configured)."""
        unit = self.device.unit
        if isinstance(payload, bool):
            call: Callable[[], Awaitable[ModbusPDU]] = lambda: client.write_coil(  # noqa: E731
                address, payload, device_id=unit)
        elif fc == 6:
            call = lambda: client.write_register(  # noqa: E731
                address, payload[0], device_id=unit)
        else:
            call = lambda: client.write_registers(  # noqa: E731
                address, list(payload), device_id=unit)
        try:
            response = await self._request(client, what, call)
        except _ConnectionLost as exc:
            raise DeviceUnavailable(f"{self.device.name}: {exc}; {name} may not be written"
                                    ) from None
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise DeviceRejected(f"{self.device.name}: {what}: exception code {code}", code)
        # The normal answers echo address (and value or quantity): a mismatch is a garbled
        # session, whether the write happened is unknown.
        echo_ok = response.function_code == fc and response.address == address and (
            (fc == 5 and list(response.bits[:1]) == [payload])
            or (fc == 6 and list(response.registers) == list(payload))  # type: ignore[arg-type]
            or (fc == 16 and response.count == len(payload)))  # type: ignore[arg-type]
        if not echo_ok:
            raise DeviceUnavailable(
                f"{self.device.name}: {what}: answer does not echo the request ({response})")


# FC16 carries at most 123 registers (Modbus application protocol, 6.12).
_MAX_WRITE_REGISTERS = 123


def _batches(ops: list[tuple[Tag, tuple[int, ...] | bool]]
             ) -> list[tuple[list[str], int, tuple[int, ...] | bool]]:
    """Group encoded writes into requests: contiguous holding registers merge (in address
    order, up to 123 registers), coils stay one request each."""
    requests: list[tuple[list[str], int, tuple[int, ...] | bool]] = []
    registers = sorted(((tag, p) for tag, p in ops if not isinstance(p, bool)),
                       key=lambda op: op[0].ref.address)  # type: ignore[union-attr]
    for tag, payload in registers:
        assert isinstance(tag.ref, ModbusRef)
        assert not isinstance(payload, bool)
        if requests:
            names, start, merged = requests[-1]
            assert not isinstance(merged, bool)
            if (start + len(merged) == tag.ref.address
                    and len(merged) + len(payload) <= _MAX_WRITE_REGISTERS):
                requests[-1] = ([*names, tag.name], start, merged + payload)
                continue
        requests.append(([tag.name], tag.ref.address, payload))
    for tag, bit in ops:
        if isinstance(bit, bool):
            assert isinstance(tag.ref, ModbusRef)
            requests.append(([tag.name], tag.ref.address, bit))
    return requests

"""A lean Modbus TCP connection for a device's writes: one request at a time, strict answers.

Where a device has ``separate_write_connection``, its writes (the actuators' FC16/FC6/FC5
requests and the heartbeat) travel on a connection of their own. That connection carries
nothing else, so it needs none of pymodbus's generality: a write-through pays for every
microsecond between the operator's frame and the device's answer, and pymodbus 3.16's
transaction manager costs about 25 us of CPU per request (lock, PDU objects, framer, a
``wait_for`` waiter: one more turn of the event loop before the answer is seen; measured with
py-spy on the running gateway). Here a request is one ``struct`` pack and one socket write;
the answer is checked and handed to the waiting caller in the callback that received it.

The rules are those of :mod:`gateway.adapters.modbus.client`, enforced here as well:

- one request at a time (later callers wait their turn); each answer must arrive within
  ``timeout_s`` of its request being sent, else :class:`TimeoutError` and the connection is
  closed at once (a late answer must never be taken for the next request's);
- an answer is accepted only if it is exactly one well-formed frame (Modbus Messaging on
  TCP/IP Implementation Guide V1.0b, 3.1.3: protocol id 0, a length of 2..254) with the
  request's transaction id and unit id, arriving while that request waits; anything else
  (an unsolicited frame, a wrong id, a malformed header, bytes after the answer) is a garbled
  session: :class:`ConnectionLost`, and the connection is closed;
- nothing is retried and nothing is queued across connections: after a loss the caller opens
  a new connection (and never replays);
- a request abandoned by its caller (cancelled) closes the connection, as a timeout does.

Whether the answer echoes the request, or is an exception response, is the caller's to judge
(:meth:`WriteConnection.request` returns the answer's PDU).
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ConnectionLost", "WriteConnection"]

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_MIN_LENGTH, _MAX_LENGTH = 2, 254  # unit id + a PDU of 1..253 bytes (Application Protocol 4.1)


class ConnectionLost(Exception):
    """The connection is over (closed, lost, or the device answered out of step); it has
    been closed."""


class WriteConnection(asyncio.Protocol):
    """One TCP connection to a device, for writes. Open it with :meth:`open`."""

    def __init__(self, timeout_s: float, on_lost: Callable[[], object] | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s}")
        self._timeout_s = timeout_s
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._buf = bytearray()
        self._lock = asyncio.Lock()
        self._tid = 0
        self._unit = 0
        self._waiter: asyncio.Future[bytes] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float,
                   on_lost: Callable[[], object] | None = None,
                   connect_timeout_s: float | None = None) -> WriteConnection:
        """Connect (within ``connect_timeout_s``, by default ``timeout_s``, the time each
        answer may take). Raises :class:`OSError` (refused, unreachable) or
        :class:`TimeoutError`. ``on_lost`` is called once when the connection ends, for
        whatever reason (also after :meth:`close`)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s if connect_timeout_s is None
                                   else connect_timeout_s):
            _, protocol = await loop.create_connection(
                lambda: cls(timeout_s, on_lost), host, port)
        return protocol

    @property
    def connected(self) -> bool:
        return not self._closed and self._transport is not None

    async def request(self, unit: int, pdu: bytes) -> bytes:
        """Send ``pdu`` (function code first) to ``unit`` and return the answer's PDU.

        Raises :class:`ConnectionLost` when not connected, when the connection ends before the
        answer, or for an answer out of step; :class:`TimeoutError` when no answer came within
        ``timeout_s`` of sending (the connection is then closed). Cancelled while waiting:
        the connection is closed, the cancellation goes on."""
        async with self._lock:
            transport = self._transport
            if self._closed or transport is None:
                raise ConnectionLost("not connected")
            self._tid = tid = (self._tid + 1) & 0xFFFF
            self._unit = unit
            waiter: asyncio.Future[bytes] = self._loop.create_future()
            self._waiter = waiter
            transport.write(_MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)
            self._timer = self._loop.call_later(self._timeout_s, self._expire, waiter)
            try:
                return await waiter
            except asyncio.CancelledError:
                self._lose()  # its answer may still come: never reuse the session
                raise
            finally:
                self._waiter = None
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None

    def close(self) -> None:
        """Close the connection; a request waiting gets :class:`ConnectionLost`. Idempotent."""
        self._lose("closed")

    # -------------------------------------------------------------- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        buf = self._buf
        buf += data
        if len(buf) < 7:
            return
        tid, protocol, length, unit = _MBAP.unpack_from(buf)
        if protocol != 0 or not _MIN_LENGTH <= length <= _MAX_LENGTH:
            self._lose(f"malformed answer header (protocol {protocol}, length {length})")
            return
        end = 6 + length
        if len(buf) < end:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._lose("an answer to no request")
        elif len(buf) > end:
            self._lose("bytes after the answer")
        elif tid != self._tid or unit != self._unit:
            self._lose(f"answer for transaction {tid} unit {unit}, expected transaction "
                       f"{self._tid} unit {self._unit}")
        else:
            pdu = bytes(buf[7:end])
            buf.clear()
            waiter.set_result(pdu)

    def eof_received(self) -> bool:
        self._lose("closed by the device")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(f"connection lost: {exc}" if exc is not None else "connection lost")

    # -------------------------------------------------------------- ending

    def _expire(self, waiter: asyncio.Future[bytes]) -> None:
        self._timer = None
        if not waiter.done():
            waiter.set_exception(TimeoutError())
            self._lose("timed out")

    def _lose(self, reason: str = "abandoned") -> None:
        if self._closed:
            return
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionLost(reason))
        transport = self._transport
        if transport is not None:
            transport.abort()  # nothing of ours is worth flushing after a loss
        if self._on_lost is not None:
            self._on_lost()

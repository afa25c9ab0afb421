"""Load generators against a gateway's northbound side (``bench interference`` and its tests).

Each one is what a busy or hostile network does to the communications side; none of them
writes anything (the loads must not change what the core decides):

- :func:`read_hammer`: Modbus reads back to back on several connections;
- :func:`connect_flood`: TCP connection attempts to a port, several hundred at once, each
  closed (reset) as soon as it is open;
- :class:`UnactivatedSessions`: OPC UA sessions created (socket, Hello, OpenSecureChannel,
  CreateSession) and never activated, held until closed;
- :func:`comms_children`: the communications processes of a core, to kill one.

They run in the caller's event loop; run them in a process apart from the observers (the PLC,
the gateway) so that the generator's own pauses are not measured as the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncua.client.client import Client

COMMS_MODULE = "gateway.comms"
SESSION_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class HammerResult:
    """``reads``: answered without a Modbus error; ``errors``: answered with one, or a
    connection that failed (its loop then stops); ``elapsed_s``: from start to the last end."""

    reads: int
    errors: int
    elapsed_s: float


async def read_hammer(host: str, port: int, until_s: float, connections: int = 4,
                      address: int = 0, count: int = 10, device_id: int = 1) -> HammerResult:
    """Read ``count`` input registers from ``address`` back to back on ``connections``
    connections until ``time.monotonic()`` reaches ``until_s``. A connection that cannot be
    opened, or fails, counts one error and stops (a refused hammer is still reported)."""
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.exceptions import ModbusException

    reads = 0
    errors = 0
    t0 = time.monotonic()

    async def one() -> None:
        nonlocal reads, errors
        client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
        try:
            if not await client.connect():
                errors += 1
                return
            while time.monotonic() < until_s:
                rr = await client.read_input_registers(address, count=count,
                                                       device_id=device_id)
                if rr.isError():
                    errors += 1
                else:
                    reads += 1
        except (ModbusException, OSError):
            errors += 1
        finally:
            client.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return HammerResult(reads, errors, time.monotonic() - t0)


@dataclass(frozen=True)
class FloodResult:
    """Of ``attempts`` connection attempts: ``opened`` (the handshake completed; the server
    may still drop it at once), ``refused`` (connection refused, reset), ``failed`` (any other
    error, a timeout); ``elapsed_s`` for all of them."""

    attempts: int
    opened: int
    refused: int
    failed: int
    elapsed_s: float


async def connect_flood(host: str, port: int, attempts: int = 2000, at_once: int = 400,
                        timeout_s: float = 5.0) -> FloodResult:
    """``attempts`` TCP connections to ``host:port``, at most ``at_once`` in flight, each
    aborted (RST) as soon as it is open: as fast as this process can open them."""
    if attempts < 0 or at_once < 1:
        raise ValueError(f"attempts must be >= 0 and at_once >= 1, not {attempts}, {at_once}")
    slots = asyncio.Semaphore(at_once)
    opened = refused = failed = 0
    t0 = time.monotonic()

    async def one() -> None:
        nonlocal opened, refused, failed
        async with slots:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                   timeout_s)
            except (ConnectionRefusedError, ConnectionResetError):
                refused += 1
            except (OSError, TimeoutError):
                failed += 1
            else:
                opened += 1
                writer.transport.abort()

    await asyncio.gather(*(one() for _ in range(attempts)))
    return FloodResult(attempts, opened, refused, failed, time.monotonic() - t0)


class UnactivatedSessions:
    """OPC UA sessions created and never activated, held until :meth:`close`.

    Each is asyncua's client driven in steps: open the socket, Hello, OpenSecureChannel
    (security policy None), CreateSession; no ActivateSession. A server must keep them
    cheap (or refuse them); they hold a socket, a channel and a session each."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.clients: list[Client] = []
        self.refused = 0  # the server closed the connection or answered with an error

    async def open(self, n: int, at_once: int = 20, timeout_s: float = 10.0) -> int:
        """Create ``n`` more sessions, ``at_once`` at a time; return how many are held."""
        from asyncua.client.client import Client
        from asyncua.ua.uaerrors import UaError

        slots = asyncio.Semaphore(at_once)

        async def one() -> None:
            async with slots:
                client = Client(self.endpoint, timeout=timeout_s)
                # Within what servers grant (asyncua's default hour is revised, with a warning
                # per session); never activated, they are dropped long before it ends anyway.
                client.session_timeout = SESSION_TIMEOUT_MS
                try:
                    await client.connect_socket()
                    await client.send_hello()
                    await client.open_secure_channel()
                    await client.create_session()
                except (OSError, TimeoutError, UaError, asyncio.IncompleteReadError):
                    self.refused += 1
                    _drop(client)
                else:
                    self.clients.append(client)

        await asyncio.gather(*(one() for _ in range(n)))
        return len(self.clients)

    async def close(self) -> None:
        """Drop every held session's connection (no CloseSession: they were never active)."""
        clients, self.clients = self.clients, []
        for client in clients:
            _drop(client)
        await asyncio.sleep(0)  # let the transports' close callbacks run


def _drop(client: Client) -> None:
    # The socket alone: a channel-close request to a server that already dropped us would
    # wait for its timeout, and the session ends with its channel.
    with contextlib.suppress(OSError, AttributeError):
        client.disconnect_socket()


def comms_children(core_pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The child processes of ``core_pid`` running ``python -m gateway.comms`` (read from
    ``/proc/<pid>/task/*/children`` and each child's command line; empty when there is none
    or the core is gone)."""
    children: list[int] = []
    for task in sorted((proc / str(core_pid) / "task").glob("*")):
        with contextlib.suppress(OSError):
            children += [int(p) for p in (task / "children").read_text().split()]
    found = []
    for pid in children:
        try:
            argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # ended meanwhile
        if any(arg.decode(errors="replace") == COMMS_MODULE for arg in argv):
            found.append(pid)
    return found

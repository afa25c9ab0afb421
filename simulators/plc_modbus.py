"""A test PLC: a real pymodbus 3.16 Modbus TCP server on 127.0.0.1 that records every write.

Usage (inside a running event loop)::

    async with TestPLC(holding=100) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 21.5)
        ... point a client at 127.0.0.1:plc.port ...
        assert [w.values for w in plc.writes] == [[0x41AC, 0x0000]]
        await plc.stop()       # the port goes dark, open connections are dropped
        await plc.start()      # same port, same register contents (retentive memory)

Tables (non-shared, one bit per coil address): ``holding`` and ``input_registers`` registers at
addresses ``0..n-1``, ``coils`` and ``discrete`` bits at ``0..n-1`` (rounded up to a multiple of
16 by pymodbus). A request touching an address outside a table is answered with exception 2
(illegal data address), like a real PLC.

``writes`` is the PLC's own record: every write request (function codes 5, 6, 15, 16, 22, 23)
decoded by the server, in arrival order, whether or not it was accepted; ``WriteRecord.result``
becomes 0 when the server answers it normally or the exception code it answered with. It is fed
by the server's ``trace_pdu`` hook, which sees requests as they come off the wire (the
``SimDevice`` ``action`` callback only sees writes that passed the address checks).

``reject[address] = code`` makes the PLC refuse any write touching that holding register or coil
address with that exception code (through the ``SimDevice`` action callback, which runs before
the value is stored, so a refused write changes nothing).

``on_store`` (optional) sees each client write that passed the address and ``reject`` checks as a
:class:`StoreRequest`, just before its values are stored; nothing else runs between the call and
the store, so calls come in storage order. Returning an exception code refuses the write (e.g. to
keep some registers read-only), ``None`` lets it through. ``clock`` stamps ``WriteRecord.at_s``.

Values set from the test (``set_registers``, ``set_float32``, ``set_bits``) go through the
server's datastore, not the wire, and are not in ``writes``.
"""

from __future__ import annotations

import asyncio
import errno
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.config.schema import Table
from simulators.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pymodbus.pdu import ModbusPDU

WRITE_CODES = frozenset({5, 6, 15, 16, 22, 23})
# Function code used to reach each table through the server's datastore interface.
_READ_FC = {Table.COIL: 1, Table.DISCRETE_INPUT: 2, Table.HOLDING_REGISTER: 3,
            Table.INPUT_REGISTER: 4}
_WRITE_TABLE = {5: Table.COIL, 15: Table.COIL, 6: Table.HOLDING_REGISTER,
                16: Table.HOLDING_REGISTER, 22: Table.HOLDING_REGISTER,
                23: Table.HOLDING_REGISTER}


@dataclass
class WriteRecord:
    """One write request as the PLC received it. ``values``: registers (FC6/16/23) or bits
    (FC5/15); ``at_s``: the PLC's ``clock()`` on arrival; ``result``: None until answered, then 0
    (accepted) or the Modbus exception code sent back."""

    function_code: int
    address: int
    values: list[int]
    at_s: float
    transaction_id: int
    result: int | None = None

    @property
    def table(self) -> Table:
        return _WRITE_TABLE[self.function_code]


@dataclass(frozen=True)
class StoreRequest:
    """A client write about to be stored (see ``TestPLC.on_store``). ``values``: registers
    (FC6/16/22/23) or bits (FC5/15) starting at ``address`` of ``table``."""

    function_code: int
    table: Table
    address: int
    values: list[int] | list[bool]
    block_start: int
    block: Sequence[int]  # the table's registers before the write, block[0] at block_start

    def register_after(self, address: int) -> int:
        """Holding register ``address`` as it will be once this write is stored (registers
        tables only: coils are packed in the block)."""
        if self.table.is_bits:
            raise ValueError("register_after is for register tables")
        offset = address - self.address
        if 0 <= offset < len(self.values):
            return int(self.values[offset])
        return int(self.block[address - self.block_start])


@dataclass
class TestPLC:
    """See the module docstring. ``port=0`` picks a free port at the first start and keeps it."""

    __test__ = False  # not a pytest test class

    holding: int = 100
    input_registers: int = 100
    coils: int = 64
    discrete: int = 64
    device_id: int = 1
    port: int = 0
    writes: list[WriteRecord] = field(default_factory=list)
    reject: dict[int, int] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    on_store: Callable[[StoreRequest], int | None] | None = None

    def __post_init__(self) -> None:
        # The server whose datastore holds the memory: set from the moment it is built until a
        # stop has taken its snapshot, so that values set meanwhile are never lost.
        self._server: ModbusTcpServer | None = None
        self._listening = False
        # Retentive memory, used while the server is down and to seed it at start.
        self._image: dict[Table, list[int] | list[bool]] = {
            Table.HOLDING_REGISTER: [0] * self.holding,
            Table.INPUT_REGISTER: [0] * self.input_registers,
            Table.COIL: [False] * self.coils,
            Table.DISCRETE_INPUT: [False] * self.discrete,
        }

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._listening

    async def start(self) -> None:
        """Listen on 127.0.0.1:``port`` (a free port the first time if ``port`` is 0).

        Raises OSError (errno EADDRINUSE) if the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("already running")
        if self.port == 0:
            self.port = free_port()
        img = self._image
        device = SimDevice(
            id=self.device_id,
            simdata=(
                [SimData(0, values=list(img[Table.COIL]) or [False], datatype=DataType.BITS)],
                [SimData(0, values=list(img[Table.DISCRETE_INPUT]) or [False],
                         datatype=DataType.BITS)],
                [SimData(0, values=list(img[Table.HOLDING_REGISTER]) or [0],
                         datatype=DataType.REGISTERS)],
                [SimData(0, values=list(img[Table.INPUT_REGISTER]) or [0],
                         datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )
        server = ModbusTcpServer(device, address=("127.0.0.1", self.port),
                                 trace_pdu=self._trace_pdu)
        self._server = server
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus 3.16 reports a failed bind this way
            await self._abandon(server)
            raise OSError(errno.EADDRINUSE,
                          f"cannot listen on 127.0.0.1:{self.port}: {exc}") from exc
        except BaseException:
            await self._abandon(server)
            raise
        self._listening = True

    async def _abandon(self, server: ModbusTcpServer) -> None:
        """Undo a failed start, keeping what was set meanwhile."""
        for table in Table:
            self._image[table] = await self._read(server, table, 0, len(self._image[table]))
        self._server = None
        await server.shutdown()  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        """Stop listening and drop every client connection; register contents are kept."""
        server = self._server
        if server is None or not self._listening:
            return
        self._listening = False
        await server.shutdown()  # type: ignore[no-untyped-call]
        await asyncio.sleep(0)  # let the transports' close callbacks run
        # Snapshot only now: writes that arrived while shutting down are kept, and values set
        # meanwhile from the test side went to the server's memory (still ``self._server``).
        # The reads do not suspend, so nothing lands between the snapshot and the switch.
        for table in Table:
            self._image[table] = await self._read(server, table, 0, len(self._image[table]))
        self._server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> TestPLC:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ data access

    @staticmethod
    async def _read(server: ModbusTcpServer, table: Table, address: int, count: int
                    ) -> list[Any]:
        if count == 0:
            return []
        values = await server.async_getValues(1, _READ_FC[table], address, count)
        return list(values)

    async def get_registers(self, table: Table, address: int, count: int) -> list[int]:
        if table.is_bits:
            raise ValueError("use get_bits for coils and discrete inputs")
        if self._server is None:
            return list(self._image[table][address:address + count])
        return await self._read(self._server, table, address, count)

    async def get_bits(self, table: Table, address: int, count: int) -> list[bool]:
        if not table.is_bits:
            raise ValueError("use get_registers for registers")
        if self._server is None:
            return [bool(b) for b in self._image[table][address:address + count]]
        return [bool(b) for b in await self._read(self._server, table, address, count)]

    async def set_registers(self, table: Table, address: int, values: list[int]) -> None:
        """Set registers from the test side (not recorded in ``writes``)."""
        if table.is_bits:
            raise ValueError("use set_bits for coils and discrete inputs")
        if any(not 0 <= v <= 0xFFFF for v in values):
            raise ValueError(f"register values must be 0..65535: {values}")
        if self._server is None:
            image = self._image[table]
            image[address:address + len(values)] = values  # type: ignore[assignment]
            return
        await self._server.async_setValues(1, _READ_FC[table], address, list(values))

    async def set_bits(self, table: Table, address: int, values: list[bool]) -> None:
        if not table.is_bits:
            raise ValueError("use set_registers for registers")
        if self._server is None:
            image = self._image[table]
            image[address:address + len(values)] = values
            return
        await self._server.async_setValues(1, _READ_FC[table], address, list(values))

    async def set_float32(self, table: Table, address: int, value: float,
                          word_order: str = "big") -> None:
        """Store ``value`` as an IEEE float32 in two registers, big-endian bytes within each
        register, words high first (``word_order="big"``) or low first (``"little"``)."""
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        await self.set_registers(table, address, [hi, lo] if word_order == "big" else [lo, hi])

    # ------------------------------------------------------------------ hooks

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        code = pdu.function_code & 0x7F
        if code not in WRITE_CODES:
            return pdu
        if not sending:
            values = [int(v) for v in (pdu.bits if code in (5, 15) else pdu.registers)]
            self.writes.append(WriteRecord(code, pdu.address, values, self.clock(),
                                           pdu.transaction_id))
            return pdu
        for record in reversed(self.writes):
            if (record.result is None and record.function_code == code
                    and record.transaction_id == pdu.transaction_id):
                record.result = int(getattr(pdu, "exception_code", 0)) if pdu.isError() else 0
                break
        return pdu

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current: list[int], set_values: list[int] | list[bool] | None
                      ) -> ExcCodes | None:
        if function_code not in WRITE_CODES or set_values is None:
            return None
        span = range(address, address + len(set_values))
        for rejected, code in self.reject.items():
            if rejected in span:
                return ExcCodes(code)
        if self.on_store is not None:
            refused = self.on_store(StoreRequest(function_code, _WRITE_TABLE[function_code],
                                                 address, set_values, start_address, current))
            if refused is not None:
                return ExcCodes(refused)
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m simulators.plc_modbus --port N``: serve until SIGINT/SIGTERM (benchmarks
    run the PLC in its own process)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m simulators.plc_modbus")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--holding", type=int, default=128)
    parser.add_argument("--inputs", type=int, default=128)
    args = parser.parse_args(argv)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with TestPLC(holding=args.holding, input_registers=args.inputs, port=args.port):
            await stop.wait()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

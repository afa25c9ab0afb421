"""One simulated plant behind one simulated PLC, served over Modbus TCP and OPC UA at once, with
the plant's own record of what happened to it.

The PLC model
-------------
Each of the plant's tags (:class:`simulators.plants.base.PlantTag`) is one variable of the PLC,
reachable through both protocols: Modbus (``simulators.plc_modbus.TestPLC``: sensors in input
registers or discrete inputs, actuators and the heartbeat in holding registers or coils) and
OPC UA (``simulators.plc_opcua.OpcUaPlc``: ``ns=2;s=<opcua_name>``; sensors read-only).

- **Publishing** (:meth:`PlantServer.publish`): the PLC puts the plant's ``sensors()`` into both
  servers. A sensor's published value is quantised the way the tag is held on the wire: its
  Modbus encoding first (float32, or ``round(value / scale)`` clipped to the integer type), then
  its OPC UA type, so a client reads the *same* value through either protocol, whichever
  protocols are enabled. That published value is what the record keeps, not the float64 truth.
- **Scanning** (:meth:`PlantServer.scan`): the PLC reads each actuator from its memory and applies
  it to the plant with ``set_actuator``. Client writes reach the plant only this way. Each server
  holds its own copy of an actuator; the protocol that *last* wrote the actuator (in arrival
  order across both) is the one read, and the scan copies the value into the other protocol's
  memory, so both protocols read back the same setpoint. Until the first client write, an
  actuator is read from Modbus (OPC UA if the tag or the protocol has no Modbus side); both
  memories start with the plant's initial ``actuators()``. A non-finite value (a float32 or
  Double NaN or inf) is recorded but not applied: the plant keeps its previous value. The
  heartbeat is recorded, never applied.
- **Refusals**: Modbus writes touching any address that is not an actuator's or the heartbeat's
  are refused whole with exception 2 (illegal data address); addresses beyond the tables get
  exception 2 from the server itself. OPC UA sensors are not writable (BadUserAccessDenied).

The record
----------
``writes``: every accepted client write to an actuator or the heartbeat, in arrival (= storage)
order, stamped with ``clock()`` and decoded to engineering units by the simulator's own codec
(never the gateway's). A Modbus write covering several tags gives one :class:`PlantWrite` each;
one touching half of a two-register tag is decoded from the registers as stored after it.
``history``: one :class:`Sample` per :meth:`PlantServer.tick`. ``faults``: the faults injected.

Time
----
``clock`` stamps the record; by default it is the plant's own simulated time (the sum of the
``dt_s`` of all ticks, :attr:`PlantServer.plant_time_s`), which makes accelerated runs and drills
reproducible. Pass ``time.monotonic`` (or a drill's clock) to stamp with something else.

Command line: ``safety-gateway simulate PLANT`` (:func:`simulate_main`, :func:`add_parser`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import math
import signal
import struct
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn

from asyncua import ua

from gateway.config.schema import Table
from simulators.plants.base import TagKind
from simulators.plc_modbus import TestPLC
from simulators.plc_opcua import OpcUaPlc, PlcVariable
from simulators.ports import free_port
from simulators.simulate_args import PLANTS, add_arguments

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from simulators.plants.base import Plant, PlantTag
    from simulators.plc_modbus import StoreRequest
    from simulators.plc_opcua import PlcWrite

__all__ = [
    "PLANTS",
    "PlantServer",
    "PlantWrite",
    "Sample",
    "WireProtocol",
    "simulate_main",
]

logger = logging.getLogger(__name__)

#: Where ``simulate PLANT`` listens unless told otherwise: Modbus port, OPC UA port, OPC UA path
#: (what configs/water_tank.yaml and configs/boiler.yaml expect).
DEFAULT_LISTEN: dict[str, tuple[int, int, str]] = {
    "water_tank": (5020, 4840, "/water_tank/"),
    "boiler": (5021, 4840, "/boiler/"),
}

_ILLEGAL_DATA_ADDRESS = 2  # Modbus exception code (Modbus Application Protocol v1.1b3, 7)
_FLOAT32_MAX = 3.4028234663852886e38


class WireProtocol(StrEnum):
    """Which server a client write came through."""

    MODBUS = "modbus"
    OPCUA = "opcua"


@dataclass(frozen=True, slots=True)
class PlantWrite:
    """One accepted client write to an actuator or the heartbeat, as the PLC received it.

    ``tag``: the plant tag's name; ``value``: engineering units (a coil or Boolean: 0.0/1.0);
    ``raw``: Modbus registers: the tag's registers after the write (a tuple of ints), Modbus coil:
    a bool, OPC UA: the Variant's value as it arrived."""

    at_s: float
    tag: str
    value: float
    protocol: WireProtocol
    raw: Any


@dataclass(frozen=True, slots=True)
class Sample:
    """The plant after one tick: ``process`` (true values), ``sensors_published`` (what clients
    can read from now on, as quantised on the wire, faults included) and ``actuators`` (the
    values the plant applied during the step), each by tag name."""

    at_s: float
    process: dict[str, float]
    sensors_published: dict[str, float]
    actuators: dict[str, float]


# ---------------------------------------------------------------------------- the PLC's codec
# The simulator's own encoding, independent of gateway/adapters: the plant's record must not share
# a bug with the code it is used to judge.

_REG_WIDTH = {"uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "float32": 2}
_INT_RANGE = {"uint16": (0, 0xFFFF), "int16": (-0x8000, 0x7FFF),
              "uint32": (0, 0xFFFFFFFF), "int32": (-0x80000000, 0x7FFFFFFF)}
_OPC_TYPES = {
    "Double": ua.VariantType.Double, "Float": ua.VariantType.Float,
    "UInt32": ua.VariantType.UInt32, "Int32": ua.VariantType.Int32,
    "UInt16": ua.VariantType.UInt16, "Int16": ua.VariantType.Int16,
    "Boolean": ua.VariantType.Boolean,
}
_OPC_INT_RANGE = {ua.VariantType.UInt32: (0, 0xFFFFFFFF), ua.VariantType.Int32: (-2**31, 2**31 - 1),
                  ua.VariantType.UInt16: (0, 0xFFFF), ua.VariantType.Int16: (-0x8000, 0x7FFF)}


def _round_clip(value: float, low: int, high: int) -> int:
    """Nearest integer (half to even), clipped to ``low..high``; NaN gives 0 (what an analog
    card reports for a broken signal is vendor-specific; 0 is the common choice)."""
    if math.isnan(value):
        return 0
    if value >= high:
        return high
    if value <= low:
        return low
    return round(value)


def _float32(value: float) -> float:
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        value = math.copysign(math.inf, value)
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


def encode_registers(modbus_type: str, scale: float, value: float) -> list[int]:
    """Registers for engineering ``value`` (raw = value / scale). float32: two registers,
    big-endian, high word first (beyond float32's range: ±inf); integer types: rounded and
    clipped to the type's range (NaN: 0), 32-bit ones high word first, signed ones two's
    complement."""
    raw = value / scale
    if modbus_type == "float32":
        hi, lo = struct.unpack(">HH", struct.pack(">f", _float32(raw)))
        return [hi, lo]
    low, high = _INT_RANGE[modbus_type]
    n = _round_clip(raw, low, high)
    if _REG_WIDTH[modbus_type] == 1:
        return [n & 0xFFFF]
    n &= 0xFFFFFFFF
    return [n >> 16, n & 0xFFFF]


def decode_registers(modbus_type: str, scale: float, words: Sequence[int]) -> float:
    """Engineering value of registers (the inverse of :func:`encode_registers`)."""
    if modbus_type == "float32":
        raw: float = struct.unpack(">f", struct.pack(">HH", words[0], words[1]))[0]
        return raw * scale
    if _REG_WIDTH[modbus_type] == 1:
        n = words[0]
        if modbus_type == "int16" and n >= 0x8000:
            n -= 0x10000
        return n * scale
    n = (words[0] << 16) | words[1]
    if modbus_type == "int32" and n >= 0x80000000:
        n -= 0x100000000
    return n * scale


@dataclass(eq=False)
class _Slot:
    """One tag as the PLC holds it."""

    tag: PlantTag
    table: Table | None         # None: not on Modbus
    width: int                  # registers (1 for a bit)
    vtype: ua.VariantType | None  # None: not on OPC UA

    def __post_init__(self) -> None:
        self.bits = self.table is not None and self.table.is_bits  # hot path: cached

    @property
    def name(self) -> str:
        return self.tag.name

    @property
    def end(self) -> int:
        return self.tag.modbus_address + self.width

    def quantize(self, value: float) -> float:
        """The value as the PLC holds it: through the Modbus encoding, then the OPC UA type."""
        if self.table is not None:
            if self.bits:
                value = 1.0 if self.bit(value) else 0.0
            else:
                value = decode_registers(self.tag.modbus_type, self.tag.modbus_scale,
                                         encode_registers(self.tag.modbus_type,
                                                          self.tag.modbus_scale, value))
        if self.vtype is not None:
            value = self.from_opc(self.to_opc(value))
        return value

    @staticmethod
    def bit(value: float) -> bool:
        return value != 0.0 and not math.isnan(value)

    def words(self, value: float) -> list[int]:
        return encode_registers(self.tag.modbus_type, self.tag.modbus_scale, value)

    def decode(self, words: Sequence[int]) -> float:
        return decode_registers(self.tag.modbus_type, self.tag.modbus_scale, words)

    def to_opc(self, value: float) -> Any:
        """A Python value the OPC UA variable's type accepts."""
        vtype = self.vtype
        if vtype is ua.VariantType.Double:
            return float(value)
        if vtype is ua.VariantType.Float:
            return _float32(value)
        if vtype is ua.VariantType.Boolean:
            return self.bit(value)
        assert vtype is not None
        low, high = _OPC_INT_RANGE[vtype]
        return _round_clip(value, low, high)

    @staticmethod
    def from_opc(value: Any) -> float:
        return float(value)


def _slots(tags: Sequence[PlantTag]) -> list[_Slot]:
    """Validate the tag list (names, tables, types, overlapping addresses) into slots."""
    slots: list[_Slot] = []
    names: set[str] = set()
    opc_names: set[str] = set()
    taken: dict[tuple[Table, int], str] = {}
    for tag in tags:
        where = f"tag {tag.name!r}"
        if tag.name in names:
            raise ValueError(f"{where}: duplicate name")
        names.add(tag.name)
        table: Table | None = None
        width = 0
        if tag.modbus_table:
            try:
                table = Table(tag.modbus_table)
            except ValueError:
                raise ValueError(f"{where}: unknown modbus_table {tag.modbus_table!r}") from None
            if tag.kind is not TagKind.SENSOR and not table.writable:
                raise ValueError(f"{where}: a {tag.kind} must be in a holding register or coil")
            if table.is_bits != (tag.modbus_type == "bool"):
                raise ValueError(f"{where}: modbus_type {tag.modbus_type!r} does not fit "
                                 f"{table.value}")
            if not table.is_bits and tag.modbus_type not in _REG_WIDTH:
                raise ValueError(f"{where}: unknown modbus_type {tag.modbus_type!r}")
            if not (math.isfinite(tag.modbus_scale) and tag.modbus_scale > 0):
                raise ValueError(f"{where}: modbus_scale must be finite and > 0")
            width = 1 if table.is_bits else _REG_WIDTH[tag.modbus_type]
            if not 0 <= tag.modbus_address <= 0x10000 - width:
                raise ValueError(f"{where}: modbus_address {tag.modbus_address} out of range")
            for address in range(tag.modbus_address, tag.modbus_address + width):
                if (table, address) in taken:
                    raise ValueError(f"{where}: {table.value} {address} is also "
                                     f"{taken[(table, address)]!r}")
                taken[(table, address)] = tag.name
        vtype: ua.VariantType | None = None
        if tag.opcua_name:
            if tag.opcua_type not in _OPC_TYPES:
                raise ValueError(f"{where}: unknown opcua_type {tag.opcua_type!r}")
            if tag.opcua_name in opc_names:
                raise ValueError(f"{where}: duplicate opcua_name {tag.opcua_name!r}")
            opc_names.add(tag.opcua_name)
            vtype = _OPC_TYPES[tag.opcua_type]
        slots.append(_Slot(tag, table, width, vtype))
    return slots


@dataclass(eq=False)
class _Run:
    """Sensors at consecutive addresses of one table, published with one datastore call."""

    table: Table
    start: int
    slots: list[_Slot]
    last: list[int] | list[bool] | None = None


def _runs(slots: Sequence[_Slot]) -> list[_Run]:
    runs: list[_Run] = []
    for slot in sorted((s for s in slots if s.table is not None),
                       key=lambda s: (s.table, s.tag.modbus_address)):
        assert slot.table is not None
        last = runs[-1] if runs else None
        if (last is not None and last.table is slot.table
                and last.slots[-1].end == slot.tag.modbus_address):
            last.slots.append(slot)
        else:
            runs.append(_Run(slot.table, slot.tag.modbus_address, [slot]))
    return runs


# ---------------------------------------------------------------------------- the server


@dataclass(eq=False)
class PlantServer:
    """``plant`` behind a PLC listening on 127.0.0.1: Modbus TCP on ``modbus_port`` (device id
    ``unit``) and OPC UA at ``opc.tcp://127.0.0.1:<opcua_port><opcua_path>``. A port of 0 picks a
    free one at construction; None disables that protocol. See the module docstring for the PLC
    model, the record and time. ``keep_last``: keep at most about that many samples and writes
    (the oldest are dropped; for long runs), None keeps everything.

    Use inside a running event loop: ``await start()``, then ``tick``/``run``, ``await stop()``
    (or ``async with``)."""

    plant: Plant
    modbus_port: int | None = 0
    opcua_port: int | None = 0
    opcua_path: str = "/plant/"
    unit: int = 1
    clock: Callable[[], float] | None = None
    keep_last: int | None = None
    writes: list[PlantWrite] = field(default_factory=list, init=False)
    history: list[Sample] = field(default_factory=list, init=False)
    faults: list[tuple[float, str]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        for what, port in (("modbus_port", self.modbus_port), ("opcua_port", self.opcua_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{what} must be 0..65535 or None, not {port}")
        if not self.opcua_path.startswith("/"):
            raise ValueError(f"opcua_path must start with '/': {self.opcua_path!r}")
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, not {self.keep_last}")
        self._t_s = 0.0
        self._clock: Callable[[], float] = (
            self.clock if self.clock is not None else (lambda: self._t_s))
        slots = _slots(self.plant.tags)
        self._sensors = [s for s in slots if s.tag.kind is TagKind.SENSOR]
        self._actuators = [s for s in slots if s.tag.kind is TagKind.ACTUATOR]
        self._by_name = {s.name: s for s in slots}
        # Client-writable Modbus addresses -> the tag there.
        self._writable: dict[tuple[Table, int], _Slot] = {
            (s.table, a): s for s in slots
            if s.table is not None and s.tag.kind is not TagKind.SENSOR
            for a in range(s.tag.modbus_address, s.end)}
        self._by_opc = {s.tag.opcua_name: s for s in slots if s.vtype is not None}

        self._published: dict[str, float] = {}
        self._frozen: dict[str, float | None] = {}  # value held (None: the next one)
        self._spoofed: dict[str, float] = {}
        self._source: dict[str, WireProtocol] = {}   # protocol of each actuator's latest write
        self._opc_value: dict[str, Any] = {}     # what the OPC UA side holds (sensors, actuators)
        self._mb_value: dict[str, list[int] | bool] = {}  # what Modbus holds for each actuator
        self._started = False
        self._connected = False

        self._modbus: TestPLC | None = None
        self._runs: list[_Run] = []
        self._hold_span = self._coil_span = (0, 0)
        if self.modbus_port is not None:
            if self.modbus_port == 0:
                self.modbus_port = free_port()
            size = {table: 1 for table in Table}
            for s in slots:
                if s.table is not None:
                    size[s.table] = max(size[s.table], s.end)
            self._modbus = TestPLC(
                holding=size[Table.HOLDING_REGISTER], input_registers=size[Table.INPUT_REGISTER],
                coils=size[Table.COIL], discrete=size[Table.DISCRETE_INPUT],
                device_id=self.unit, port=self.modbus_port, clock=self._clock,
                on_store=self._on_modbus_store)
            self._runs = _runs(self._sensors)
            self._hold_span = self._span(Table.HOLDING_REGISTER)
            self._coil_span = self._span(Table.COIL)
        self._opcua: OpcUaPlc | None = None
        if self.opcua_port is not None:
            if self.opcua_port == 0:
                self.opcua_port = free_port()
            variables = [PlcVariable(s.tag.opcua_name, s.vtype, s.to_opc(0.0),
                                     writable=s.tag.kind is not TagKind.SENSOR)
                         for s in slots if s.vtype is not None]
            self._opcua = OpcUaPlc(variables, port=self.opcua_port, path=self.opcua_path,
                                   server_name=f"{self.plant.name} PLC (simulated)",
                                   clock=self._clock, on_write=self._on_opcua_write)

    def _span(self, table: Table) -> tuple[int, int]:
        """(first address, count) covering the actuators in ``table``; count 0 if none."""
        mine = [s for s in self._actuators if s.table is table]
        if not mine:
            return (0, 0)
        start = min(s.tag.modbus_address for s in mine)
        return (start, max(s.end for s in mine) - start)

    # ------------------------------------------------------------------ properties

    @property
    def opcua_endpoint(self) -> str | None:
        return self._opcua.endpoint if self._opcua is not None else None

    @property
    def plant_time_s(self) -> float:
        """Simulated time: the sum of the ``dt_s`` of all ticks."""
        return self._t_s

    @property
    def connected(self) -> bool:
        """Whether the servers listen (started and not disconnected)."""
        return self._connected

    def published(self) -> dict[str, float]:
        """The sensor values the PLC currently publishes (a copy)."""
        return dict(self._published)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Seed the PLC memory (sensors published, actuators from the plant's initial values)
        and start listening. Raises OSError if a port cannot be bound; then nothing listens."""
        if self._started:
            raise RuntimeError("already started")
        await self.publish()
        initial = self.plant.actuators()
        for slot in self._actuators:
            if slot.name in initial:
                await self._store_actuator(slot, initial[slot.name], modbus=True, opcua=True)
        await self._listen()
        self._started = True

    async def _listen(self) -> None:
        if self._modbus is not None:
            await self._modbus.start()
        if self._opcua is not None:
            try:
                await self._opcua.start()
            except BaseException:
                if self._modbus is not None:
                    await self._modbus.stop()
                raise
        self._connected = True

    async def _unlisten(self) -> None:
        self._connected = False
        stops = [plc.stop() for plc in (self._modbus, self._opcua) if plc is not None]
        await asyncio.gather(*stops)

    async def stop(self) -> None:
        """Stop both servers (clients see the connections drop); the memory is kept and
        :meth:`reconnect` listens again. Idempotent. Not recorded as a fault."""
        await self._unlisten()

    async def __aenter__(self) -> PlantServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ faults

    def _sensor(self, tag: str) -> _Slot:
        slot = self._by_name[tag]  # KeyError: unknown tag
        if slot.tag.kind is not TagKind.SENSOR:
            raise ValueError(f"{tag!r} is not a sensor")
        return slot

    def freeze(self, tag: str) -> None:
        """From now on the PLC keeps publishing the sensor's last published value (quality
        good; a spoof in force takes precedence while it lasts). Freezing a frozen sensor keeps
        the value it froze first. KeyError for an unknown tag, ValueError for one that is not a
        sensor."""
        self._sensor(tag)
        if tag not in self._frozen:
            self._frozen[tag] = self._published.get(tag)
        self.faults.append((self._clock(), f"freeze {tag}"))

    def unfreeze(self, tag: str) -> None:
        """Publish the sensor's value again from the next :meth:`publish`."""
        self._sensor(tag)
        self._frozen.pop(tag, None)
        self.faults.append((self._clock(), f"unfreeze {tag}"))

    def spoof(self, tag: str, value: float) -> None:
        """From the next :meth:`publish` on, publish ``value`` (quantised like the truth)
        instead of the sensor's reading: an attacker inside the PLC. Overrides a freeze."""
        self._sensor(tag)
        self._spoofed[tag] = float(value)
        self.faults.append((self._clock(), f"spoof {tag}={float(value)!r}"))

    def unspoof(self, tag: str) -> None:
        self._sensor(tag)
        self._spoofed.pop(tag, None)
        self.faults.append((self._clock(), f"unspoof {tag}"))

    async def disconnect(self) -> None:
        """Both servers stop listening and drop their clients (a cut cable, a PLC reboot). The
        memory is kept; ticks go on (physics with the last applied actuators, sensors published
        into the memory clients will read after :meth:`reconnect`). No-op if not connected."""
        if not self._connected:
            return
        self.faults.append((self._clock(), "disconnect"))
        await self._unlisten()

    async def reconnect(self) -> None:
        """Listen again on the same ports with the memory kept (an OPC UA server takes ~2.4 s
        to start). No-op if connected. Raises OSError if a port was taken meanwhile."""
        if self._connected or not self._started:
            return
        await self._listen()
        self.faults.append((self._clock(), "reconnect"))

    # ------------------------------------------------------------------ writes from clients

    def _on_modbus_store(self, request: StoreRequest) -> int | None:
        """A Modbus client write about to be stored: refuse it whole if it touches an address
        that is no actuator's or heartbeat's, else record one PlantWrite per tag it touches."""
        touched: list[_Slot] = []
        for address in range(request.address, request.address + len(request.values)):
            slot = self._writable.get((request.table, address))
            if slot is None:
                return _ILLEGAL_DATA_ADDRESS
            if not touched or touched[-1] is not slot:
                touched.append(slot)
        now = self._clock()
        for slot in touched:
            raw: Any
            if request.table.is_bits:
                raw = bool(request.values[slot.tag.modbus_address - request.address])
                value = 1.0 if raw else 0.0
            else:
                raw = tuple(request.register_after(a)
                            for a in range(slot.tag.modbus_address, slot.end))
                value = slot.decode(raw)
            # The cache of what Modbus holds follows the store that comes right after.
            self._mb_value[slot.name] = raw if isinstance(raw, bool) else list(raw)
            self._record(PlantWrite(now, slot.name, value, WireProtocol.MODBUS, raw))
        return None

    def _on_opcua_write(self, write: PlcWrite) -> None:
        if write.status != "Good":
            return
        slot = self._by_opc.get(write.name)
        if slot is None or slot.tag.kind is TagKind.SENSOR:
            return
        value = write.value
        engineering = float(value) if isinstance(value, (bool, int, float)) else math.nan
        self._opc_value[slot.name] = value  # the cache follows the memory
        self._record(PlantWrite(write.at_s, slot.name, engineering, WireProtocol.OPCUA, value))

    def _record(self, write: PlantWrite) -> None:
        self.writes.append(write)
        self._source[write.tag] = write.protocol
        self._trim(self.writes)

    def _trim(self, records: list[Any]) -> None:
        limit = self.keep_last
        if limit is not None and len(records) > limit + limit // 4:
            del records[:len(records) - limit]

    # ------------------------------------------------------------------ the PLC's scan

    async def _store_actuator(self, slot: _Slot, value: float, *, modbus: bool,
                              opcua: bool) -> None:
        """Put ``value`` into the chosen protocols' memory for ``slot`` (PLC side, not a client
        write), skipping a memory that already holds it."""
        if modbus and self._modbus is not None and slot.table is not None:
            address = slot.tag.modbus_address
            if slot.bits:
                bit = slot.bit(value)
                if self._mb_value.get(slot.name) != bit:
                    await self._modbus.set_bits(slot.table, address, [bit])
                    self._mb_value[slot.name] = bit
            else:
                words = slot.words(value)
                if self._mb_value.get(slot.name) != words:
                    await self._modbus.set_registers(slot.table, address, words)
                    self._mb_value[slot.name] = words
        if opcua and self._opcua is not None and slot.vtype is not None:
            opc = slot.to_opc(value)
            if self._opc_value.get(slot.name) != opc:
                await self._opcua.set(slot.tag.opcua_name, opc)
                self._opc_value[slot.name] = opc

    async def scan(self) -> None:
        """The PLC scan: read each actuator from the memory of the protocol that last wrote it,
        copy it to the other protocol's memory, and apply it with ``plant.set_actuator``."""
        words: list[int] = []
        bits: list[bool] = []
        modbus = self._modbus
        # The servers keep their own write logs for tests; this PLC keeps ``self.writes``.
        if modbus is not None:
            modbus.writes.clear()
        if self._opcua is not None:
            self._opcua.writes.clear()
        if modbus is not None:
            if self._hold_span[1]:
                words = await modbus.get_registers(Table.HOLDING_REGISTER, *self._hold_span)
            if self._coil_span[1]:
                bits = await modbus.get_bits(Table.COIL, *self._coil_span)
        for slot in self._actuators:
            name = slot.name
            source = self._source.get(name)
            if source is None:
                source = (WireProtocol.MODBUS if modbus is not None and slot.table is not None
                          else WireProtocol.OPCUA)
            if source is WireProtocol.MODBUS and modbus is not None and slot.table is not None:
                if slot.bits:
                    bit = bits[slot.tag.modbus_address - self._coil_span[0]]
                    self._mb_value[name] = bit
                    value = 1.0 if bit else 0.0
                else:
                    offset = slot.tag.modbus_address - self._hold_span[0]
                    held = words[offset:offset + slot.width]
                    self._mb_value[name] = held
                    value = slot.decode(held)
                await self._store_actuator(slot, value, modbus=False, opcua=True)
            elif self._opcua is not None and slot.vtype is not None:
                held_opc = await self._opcua.get(slot.tag.opcua_name)
                self._opc_value[name] = held_opc
                value = slot.from_opc(held_opc)
                await self._store_actuator(slot, value, modbus=True, opcua=False)
            else:
                continue
            if math.isfinite(value):
                self.plant.set_actuator(name, value)

    async def publish(self) -> None:
        """Put the plant's current ``sensors()`` into both servers, as the PLC's scan would,
        honouring freeze and spoof."""
        truth = self.plant.sensors()
        published = self._published
        frozen = self._frozen
        for slot in self._sensors:
            name = slot.name
            if name in self._spoofed:
                published[name] = slot.quantize(self._spoofed[name])
            elif name in frozen:
                held = frozen[name]
                if held is None:
                    held = frozen[name] = slot.quantize(truth[name])
                published[name] = held
            else:
                published[name] = slot.quantize(truth[name])
        if self._modbus is not None:
            for run in self._runs:
                if run.table.is_bits:
                    bits = [slot.bit(published[slot.name]) for slot in run.slots]
                    if bits != run.last:
                        await self._modbus.set_bits(run.table, run.start, bits)
                        run.last = bits
                else:
                    words: list[int] = []
                    for slot in run.slots:
                        words += slot.words(published[slot.name])
                    if words != run.last:
                        await self._modbus.set_registers(run.table, run.start, words)
                        run.last = words
        if self._opcua is not None:
            for slot in self._sensors:
                if slot.vtype is None:
                    continue
                opc = slot.to_opc(published[slot.name])
                if self._opc_value.get(slot.name) != opc:
                    await self._opcua.set(slot.tag.opcua_name, opc)
                    self._opc_value[slot.name] = opc

    async def tick(self, dt_s: float) -> Sample:
        """One step of stepped time: :meth:`scan`, ``plant.step(dt_s)``, :meth:`publish`, then
        append (and return) a :class:`Sample` stamped ``clock()`` after the step."""
        if not dt_s > 0 or not math.isfinite(dt_s):
            raise ValueError(f"dt_s must be finite and > 0, not {dt_s!r}")
        await self.scan()
        self.plant.step(dt_s)
        self._t_s += dt_s
        await self.publish()
        sample = Sample(self._clock(), dict(self.plant.process()), dict(self._published),
                        dict(self.plant.actuators()))
        self.history.append(sample)
        self._trim(self.history)
        return sample

    async def run(self, speed: float = 1.0, period_s: float = 0.1) -> None:
        """Tick every ``period_s`` of wall time by ``speed * period_s`` of plant time, until
        cancelled. If a tick overruns its period the schedule slips (no burst of catch-up
        ticks), so plant time then runs slower than ``speed`` times wall time."""
        for what, number in (("speed", speed), ("period_s", period_s)):
            if not number > 0 or not math.isfinite(number):
                raise ValueError(f"{what} must be finite and > 0, not {number!r}")
        loop = asyncio.get_running_loop()
        dt_s = speed * period_s
        deadline = loop.time()
        while True:
            await self.tick(dt_s)
            deadline += period_s
            delay = deadline - loop.time()
            if delay < 0:
                deadline -= delay
                delay = 0.0
            await asyncio.sleep(delay)


# ---------------------------------------------------------------------------- command line

EXIT_OK = 0
EXIT_INPUT = 2
EXIT_ENVIRONMENT = 3
LOG_EVERY_S = 5.0


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_INPUT)


def simulate_main(argv: Sequence[str] | None = None) -> int:
    """``safety-gateway simulate PLANT [--modbus-port N] [--opcua-port N] [--speed X]
    [--seed N] [--no-modbus] [--no-opcua]``. Exit codes: 0 stopped by SIGINT/SIGTERM, 2 bad
    arguments, 3 a port cannot be bound or the plant cannot be loaded; always one line on
    stderr for an error, never a traceback."""
    parser = _OneLineParser(prog="safety-gateway simulate",
                            description="Serve a simulated plant over Modbus TCP and OPC UA.")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_INPUT
    return cmd_simulate(args)


def _load_plant(name: str, seed: int) -> Plant:
    module_name, _, class_name = PLANTS[name].partition(":")
    module = importlib.import_module(module_name)
    plant: Plant = getattr(module, class_name)(seed=seed)
    return plant


def _describe(plant: Plant, values: dict[str, float]) -> str:
    units = {t.name: t.unit for t in plant.tags}
    return " ".join(f"{k}={v:.4g}{(' ' + units[k]) if units.get(k) else ''}"
                    for k, v in values.items())


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run ``simulate`` from parsed arguments (see :func:`simulate_main`)."""
    prog = "safety-gateway simulate"
    if args.no_modbus and args.no_opcua:
        print(f"{prog}: error: --no-modbus and --no-opcua leave nothing to serve",
              file=sys.stderr)
        return EXIT_INPUT
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    # asyncua logs a traceback when its port is taken and warns about its (deliberate)
    # NoSecurity endpoint; the port error is reported below in one line.
    logging.getLogger("asyncua.server.server").setLevel(logging.CRITICAL)
    logging.getLogger("pymodbus").setLevel(logging.WARNING)
    try:
        plant = _load_plant(args.plant, args.seed)
    except (ImportError, AttributeError) as exc:
        print(f"{prog}: plant {args.plant!r} is not available: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    default_modbus, default_opcua, path = DEFAULT_LISTEN[args.plant]
    server = PlantServer(
        plant,
        modbus_port=None if args.no_modbus else (
            default_modbus if args.modbus_port is None else args.modbus_port),
        opcua_port=None if args.no_opcua else (
            default_opcua if args.opcua_port is None else args.opcua_port),
        opcua_path=path, keep_last=1000)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        pymodbus_logger = logging.getLogger("pymodbus")
        pymodbus_logger.setLevel(logging.CRITICAL)  # its bind failure: reported by us
        try:
            await server.start()
        finally:
            pymodbus_logger.setLevel(logging.WARNING)
        where = []
        if server.modbus_port is not None:
            where.append(f"Modbus TCP 127.0.0.1:{server.modbus_port} (unit {server.unit})")
        if server.opcua_endpoint is not None:
            where.append(f"OPC UA {server.opcua_endpoint}")
        print(f"simulating {args.plant} (seed {args.seed}, speed {args.speed:g}x): "
              f"{', '.join(where)}", flush=True)
        try:
            async with asyncio.TaskGroup() as group:
                runner = group.create_task(server.run(speed=args.speed))
                reporter = group.create_task(report())
                await stop.wait()
                runner.cancel()
                reporter.cancel()
        finally:
            await server.stop()
        logger.info("stopped at plant time %.1f s", server.plant_time_s)

    async def report() -> None:
        while True:
            await asyncio.sleep(LOG_EVERY_S)
            logger.info("t=%.1f s %s | %s", server.plant_time_s,
                        _describe(plant, plant.process()), _describe(plant, plant.actuators()))

    try:
        asyncio.run(serve())
    except OSError as exc:
        print(f"{prog}: cannot listen: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:  # a SIGINT before the handlers were installed
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(simulate_main())

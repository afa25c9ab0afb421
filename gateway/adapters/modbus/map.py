"""The northbound Modbus register map, generated from the site, and its in-memory image.

Pure: no I/O, no protocol library. :class:`NorthboundMap` says which tag lives at which
register; :class:`RegisterImage` holds the register bytes the server answers reads from, and
the runtime mirrors values into it.

Register map (what a SCADA engineer configures)
===============================================

Addresses are 0-based protocol addresses (the value sent on the wire). In the "1-based"
convention of many HMI tools, input register 0 is 30001 and holding register 0 is 40001.

All process values are in **engineering units** (the site's units, scale 1.0) encoded as
IEEE-754 **float32**, **big-endian bytes, big-endian word order** ("ABCD"): the register at the
lower address holds the most significant 16 bits. Each float32 takes two registers.

Input registers (function code 4, read only):

* ``0 .. 2*S-1``: the S sensors in the order of the site file, float32, sensor *i* at ``2*i``.
  A value too large for float32 reads as +/-inf; a value never read is NaN.
* ``1000 .. 1007``: gateway status, one uint16 each:

  ====  ==========================  ===============================================
  1000  ``status.mode``             0 auto, 1 shadow, 2 manual, 3 safe_stop, 4 starting
                                    (before the first control cycle; writes refused)
  1001  ``status.latched``          1 while a trip is latched, else 0
  1002  ``status.incident``         1 while an incident is open, else 0
  1003  ``status.heartbeat``        +1 every control cycle, wraps 65535 -> 0
  1004  ``status.rejection``        last write rejection: 0 none, 1 outside the envelope,
                                    2 read-only, 3 the device did not confirm the write,
                                    4 unknown tag, 5 not taken in this mode (e.g. an
                                    operator setpoint outside MANUAL), 6 not authorised
                                    (the client's role), 7 gateway starting, 8 gateway
                                    stopping, 9 busy (the safety core had as many
                                    requests waiting as it takes; exception 6; retry)
  1005  ``status.rejected_actuator``  index + 1 of the last rejected actuator, 0 none
  1006  ``status.bypasses``         number of detector bypasses in force
  1007  ``status.bypass_expiry_s``  seconds until the earliest bypass expires (rounded
                                    up, at most 65535), 0 when none is in force
  ====  ==========================  ===============================================

  The trip's reason, the incident's id and each bypass's detector are on the OPC UA
  ``Status`` nodes and ``safety-gateway ctl status``.

  A SCADA watchdog should alarm when ``status.heartbeat`` stops changing.

Holding registers (function code 3 read; 16 write; 6 is accepted but can never write, since
every setpoint is a float32 spanning two registers):

* ``0 .. 2*A-1``: the A actuators in the order of the site file, float32, actuator *j* at
  ``2*j``. Reading returns the value the gateway last applied to the device, not the last value
  a client wrote. A write must cover whole float32 setpoints; it is a *request*, checked
  against the safety envelope before anything reaches the equipment.

Every other address is unmapped: a read or write that touches one gets exception 2 (illegal
data address). There are no coils or discrete inputs.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from gateway.adapters.base import Refusal
from gateway.config.schema import Table

if TYPE_CHECKING:
    from gateway.adapters.base import WriteOutcome
    from gateway.config.schema import Site

STATUS_BASE = 1000
"""First input register of the status block."""

FLOAT32_REGISTERS = 2
_MAX_SENSORS = STATUS_BASE // FLOAT32_REGISTERS  # sensors must end below the status block
_MAX_ACTUATORS = 65536 // FLOAT32_REGISTERS

_FLOAT32 = struct.Struct(">f")
_STATUS4 = struct.Struct(">HHHH")
_UINT16x2 = struct.Struct(">HH")


class ModeCode(IntEnum):
    """``status.mode`` (input register 1000)."""

    AUTO = 0
    SHADOW = 1
    MANUAL = 2
    SAFE_STOP = 3
    # Until the first control cycle mirrors the mode. Writes are refused (exception 4) until
    # the supervisor runs, just before that cycle. A SCADA reading only this register must
    # not take that time for MANUAL.
    STARTING = 4

    @classmethod
    def of(cls, mode: str) -> ModeCode:
        """The code of a mode given by its name (``gateway.supervisor.modes.Mode`` value, e.g.
        ``"safe_stop"``). Raises ``ValueError`` for an unknown name."""
        try:
            return cls[mode.upper()]
        except KeyError:
            raise ValueError(f"unknown mode {mode!r}") from None


class RejectionCode(IntEnum):
    """``status.rejection`` (input register 1004): why the last northbound write was refused."""

    NONE = 0
    OUTSIDE_ENVELOPE = 1
    READ_ONLY = 2
    DEVICE_UNCONFIRMED = 3  # the device did not confirm the write (failed or timed out)
    UNKNOWN_TAG = 4
    WRONG_MODE = 5
    NOT_AUTHORISED = 6
    STARTING = 7
    STOPPING = 8
    BUSY = 9  # the request channel to the safety core was full: refused at once, retry

    @classmethod
    def from_exception_code(cls, code: int) -> RejectionCode:
        """The rejection code for a refused :class:`~gateway.adapters.base.WriteOutcome`'s
        Modbus exception code (3 -> outside the envelope, 2 -> read-only, 4 -> the device
        did not confirm); any other code counts as the device not confirming."""
        return {0: cls.NONE, 2: cls.READ_ONLY, 3: cls.OUTSIDE_ENVELOPE}.get(
            code, cls.DEVICE_UNCONFIRMED)

    @classmethod
    def of(cls, outcome: WriteOutcome) -> RejectionCode:
        """The rejection code of an outcome: by its :class:`~gateway.adapters.base.Refusal`
        when it names one, else by its exception code; NONE when it was accepted."""
        why = outcome.why
        return cls.NONE if why is None else _BY_REFUSAL[why]


_BY_REFUSAL: dict[Refusal, RejectionCode] = {
    Refusal.ENVELOPE: RejectionCode.OUTSIDE_ENVELOPE,
    Refusal.READ_ONLY: RejectionCode.READ_ONLY,
    Refusal.DEVICE: RejectionCode.DEVICE_UNCONFIRMED,
    Refusal.UNKNOWN_TAG: RejectionCode.UNKNOWN_TAG,
    Refusal.MODE: RejectionCode.WRONG_MODE,
    Refusal.NOT_AUTHORISED: RejectionCode.NOT_AUTHORISED,
    Refusal.STARTING: RejectionCode.STARTING,
    Refusal.STOPPING: RejectionCode.STOPPING,
    Refusal.BUSY: RejectionCode.BUSY,
}


_REJECTION_TEXT: dict[RejectionCode, str] = {
    RejectionCode.NONE: "none",
    RejectionCode.OUTSIDE_ENVELOPE: "outside the safety envelope",
    RejectionCode.READ_ONLY: "not a writable setpoint",
    RejectionCode.DEVICE_UNCONFIRMED: "the device did not confirm the write (failed or timed "
                                      "out; it is written again next cycle)",
    RejectionCode.UNKNOWN_TAG: "unknown tag",
    RejectionCode.WRONG_MODE: "not taken in this mode (operator setpoints: MANUAL only)",
    RejectionCode.NOT_AUTHORISED: "the client's role may not write this",
    RejectionCode.STARTING: "the gateway is starting",
    RejectionCode.STOPPING: "the gateway is shutting down",
    RejectionCode.BUSY: "the safety core was busy (too many requests waiting); try again",
}


def status_codes() -> dict[str, dict[int, str]]:
    """What the coded status registers' values mean (printed by ``safety-gateway map``)."""
    return {"status.mode": {int(c): c.name.lower() for c in ModeCode},
            "status.rejection": {int(c): _REJECTION_TEXT[c] for c in RejectionCode}}


class StatusRegister(IntEnum):
    """Input register address of each status value."""

    MODE = STATUS_BASE
    LATCHED = STATUS_BASE + 1
    INCIDENT = STATUS_BASE + 2
    HEARTBEAT = STATUS_BASE + 3
    REJECTION = STATUS_BASE + 4
    REJECTED_ACTUATOR = STATUS_BASE + 5
    BYPASSES = STATUS_BASE + 6
    BYPASS_EXPIRY_S = STATUS_BASE + 7


STATUS_NAMES: dict[StatusRegister, str] = {
    StatusRegister.MODE: "status.mode",
    StatusRegister.LATCHED: "status.latched",
    StatusRegister.INCIDENT: "status.incident",
    StatusRegister.HEARTBEAT: "status.heartbeat",
    StatusRegister.REJECTION: "status.rejection",
    StatusRegister.REJECTED_ACTUATOR: "status.rejected_actuator",
    StatusRegister.BYPASSES: "status.bypasses",
    StatusRegister.BYPASS_EXPIRY_S: "status.bypass_expiry_s",
}
STATUS_COUNT = len(STATUS_NAMES)


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One mapped value: ``count`` registers of ``table`` from ``address``."""

    tag: str
    table: Table
    address: int
    type: str  # "float32" or "uint16"
    count: int
    writable: bool
    scale: float = 1.0

    @property
    def end(self) -> int:
        """One past the last register."""
        return self.address + self.count

    def as_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``safety-gateway map``."""
        return {"tag": self.tag, "table": self.table.value, "address": self.address,
                "type": self.type, "scale": self.scale, "writable": self.writable}


@dataclass(frozen=True, slots=True)
class Block:
    """A contiguous run of mapped registers of one table: ``count`` registers from ``start``."""

    table: Table
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


class NorthboundMap:
    """Where each sensor, actuator setpoint and status value lives in the northbound register
    space (layout in the module docstring). Immutable once built."""

    def __init__(self, sensors: tuple[str, ...], actuators: tuple[str, ...], unit: int = 1
                 ) -> None:
        """Raises ``ValueError`` if names repeat, if there are more than 500 sensors (they
        would run into the status block at 1000) or if ``unit`` is not 0..255."""
        if len(sensors) > _MAX_SENSORS:
            raise ValueError(f"{len(sensors)} sensors: at most {_MAX_SENSORS} fit below the "
                             f"status block at input register {STATUS_BASE}")
        if len(actuators) > _MAX_ACTUATORS:
            raise ValueError(f"{len(actuators)} actuators: at most {_MAX_ACTUATORS} fit")
        names = [*sensors, *actuators, *STATUS_NAMES.values()]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"tag names must be unique in the map: {', '.join(dup)}")
        if not 0 <= unit <= 255:
            raise ValueError(f"unit must be 0..255, not {unit}")
        self.unit = unit
        self.sensors = sensors
        self.actuators = actuators
        ir, hr = Table.INPUT_REGISTER, Table.HOLDING_REGISTER
        self._sensor_entries = tuple(MapEntry(n, ir, FLOAT32_REGISTERS * i, "float32",
                                              FLOAT32_REGISTERS, False)
                                     for i, n in enumerate(sensors))
        self._actuator_entries = tuple(MapEntry(n, hr, FLOAT32_REGISTERS * j, "float32",
                                                FLOAT32_REGISTERS, True)
                                       for j, n in enumerate(actuators))
        self._status_entries = tuple(MapEntry(name, ir, int(reg), "uint16", 1, False)
                                     for reg, name in STATUS_NAMES.items())
        self._by_name = {e.tag: e for e in self._all()}
        blocks = [Block(ir, STATUS_BASE, STATUS_COUNT)]
        if sensors:
            blocks.insert(0, Block(ir, 0, FLOAT32_REGISTERS * len(sensors)))
        if actuators:
            blocks.append(Block(hr, 0, FLOAT32_REGISTERS * len(actuators)))
        self.blocks: tuple[Block, ...] = tuple(blocks)

    @classmethod
    def from_site(cls, site: Site) -> NorthboundMap:
        """The map of ``site``: its sensors and actuators in file order; the unit id from
        ``northbound.modbus.unit`` (1 when the site has no Modbus server)."""
        spec = site.northbound.modbus
        return cls(tuple(t.name for t in site.sensors), tuple(t.name for t in site.actuators),
                   spec.unit if spec is not None else 1)

    def _all(self) -> tuple[MapEntry, ...]:
        return self._sensor_entries + self._actuator_entries + self._status_entries

    def entries(self) -> list[dict[str, Any]]:
        """Every mapped value as ``{"tag", "table", "address", "type", "scale", "writable"}``,
        input registers first (sensors, then status), then holding registers."""
        return [e.as_dict() for e in
                self._sensor_entries + self._status_entries + self._actuator_entries]

    def entry(self, tag: str) -> MapEntry:
        """The entry of a sensor, actuator or status name. Raises ``KeyError``."""
        return self._by_name[tag]

    def span(self, tag: str) -> tuple[Table, int, int]:
        """``(table, first address, register count)`` of a tag. Raises ``KeyError``."""
        e = self._by_name[tag]
        return e.table, e.address, e.count

    def tag_at(self, table: Table, address: int) -> MapEntry | None:
        """The entry whose registers include ``address`` of ``table``, or None if unmapped."""
        if table is Table.INPUT_REGISTER:
            if STATUS_BASE <= address < STATUS_BASE + STATUS_COUNT:
                return self._status_entries[address - STATUS_BASE]
            entries = self._sensor_entries
        elif table is Table.HOLDING_REGISTER:
            entries = self._actuator_entries
        else:
            return None
        if address < 0:
            return None
        i = address // FLOAT32_REGISTERS
        return entries[i] if i < len(entries) else None

    def block_of(self, table: Table, address: int, count: int) -> Block | None:
        """The mapped block holding all of ``count`` registers from ``address``, or None if
        any of them is unmapped (or ``count`` < 1)."""
        if count < 1:
            return None
        for b in self.blocks:
            if b.table is table and b.start <= address and address + count <= b.end:
                return b
        return None

    def setpoints_in(self, address: int, count: int) -> tuple[str, ...] | None:
        """The actuators written by ``count`` holding registers from ``address``, in address
        order, or None unless the range covers whole float32 setpoints, all mapped."""
        if (count < 1 or address < 0 or address % FLOAT32_REGISTERS
                or count % FLOAT32_REGISTERS):
            return None
        first = address // FLOAT32_REGISTERS
        last = first + count // FLOAT32_REGISTERS
        if last > len(self.actuators):
            return None
        return self.actuators[first:last]


class RegisterImage:
    """The register bytes the server answers reads from, written by the runtime's mirror.

    One ``bytearray`` per block of the map, offsets precomputed, so every setter is one dict
    lookup and one ``struct.pack_into``. Single event loop: no locking; a read sees either the
    old or the new value of a register, never a torn float32 (writes and reads never
    interleave inside one call).

    Until the runtime mirrors them, process values read NaN and ``status.mode`` reads 4
    (starting), never a mode the gateway is not in.
    """

    def __init__(self, nmap: NorthboundMap) -> None:
        self.map = nmap
        self._sensors = bytearray(FLOAT32_REGISTERS * 2 * len(nmap.sensors))
        self._actuators = bytearray(FLOAT32_REGISTERS * 2 * len(nmap.actuators))
        self._status = bytearray(2 * STATUS_COUNT)
        nan = _FLOAT32.pack(math.nan)
        for buf in (self._sensors, self._actuators):
            for off in range(0, len(buf), 4):
                buf[off:off + 4] = nan
        self._status[0:2] = ModeCode.STARTING.to_bytes(2, "big")
        self._sensor_off = {n: 4 * i for i, n in enumerate(nmap.sensors)}
        self._actuator_off = {n: 4 * j for j, n in enumerate(nmap.actuators)}
        ir = Table.INPUT_REGISTER
        self._blocks: tuple[tuple[Table, int, int, bytearray], ...] = tuple(
            (b.table, b.start, b.end,
             self._status if b.start == STATUS_BASE and b.table is ir
             else self._sensors if b.table is ir else self._actuators)
            for b in nmap.blocks)

    def set_sensor(self, name: str, value: float) -> None:
        """Mirror a sensor's engineering value. Raises ``KeyError`` for an unknown name."""
        try:
            _FLOAT32.pack_into(self._sensors, self._sensor_off[name], value)
        except OverflowError:
            _FLOAT32.pack_into(self._sensors, self._sensor_off[name],
                               math.copysign(math.inf, value))

    def set_actuator(self, name: str, value: float) -> None:
        """Mirror the value last applied to an actuator. Raises ``KeyError``."""
        try:
            _FLOAT32.pack_into(self._actuators, self._actuator_off[name], value)
        except OverflowError:
            _FLOAT32.pack_into(self._actuators, self._actuator_off[name],
                               math.copysign(math.inf, value))

    def set_status(self, mode_code: int, latched: bool, incident: bool, heartbeat: int) -> None:
        """Mirror the gateway status. ``heartbeat`` is taken modulo 65536. Raises
        ``ValueError`` for a mode code that is not a :class:`ModeCode`."""
        if not 0 <= mode_code <= max(ModeCode):
            raise ValueError(f"mode_code must be 0..{max(ModeCode)}, not {mode_code}")
        _STATUS4.pack_into(self._status, 0, mode_code, 1 if latched else 0,
                           1 if incident else 0, heartbeat & 0xFFFF)

    def set_bypasses(self, count: int, earliest_expiry_s: float | None) -> None:
        """Mirror the bypasses in force: how many, and the seconds until the earliest expires
        (None: none). Both are clipped to 0..65535; the seconds are rounded up, so that a
        bypass still in force never reads 0."""
        seconds = 0 if earliest_expiry_s is None or not earliest_expiry_s > 0 else (
            65535 if not earliest_expiry_s < 65535 else math.ceil(earliest_expiry_s))
        _UINT16x2.pack_into(self._status, 12, min(max(count, 0), 65535), seconds)

    def set_rejection(self, code: int, actuator_index: int | None) -> None:
        """Mirror the last write rejection: its :class:`RejectionCode` and the 0-based index
        of the refused actuator (None: none). Raises ``ValueError`` for a code outside the
        :class:`RejectionCode` values or an index outside the actuators."""
        if not 0 <= code <= max(RejectionCode):
            raise ValueError(f"rejection code must be 0..{max(RejectionCode)}, not {code}")
        if actuator_index is not None and not 0 <= actuator_index < len(self.map.actuators):
            raise ValueError(f"actuator_index must be 0..{len(self.map.actuators) - 1} or None, "
                             f"not {actuator_index}")
        _UINT16x2.pack_into(self._status, 8, code,
                            0 if actuator_index is None else actuator_index + 1)

    def read(self, table: Table, address: int, count: int) -> bytes | None:
        """The bytes of ``count`` registers of ``table`` from ``address`` (big-endian, as on
        the wire), or None if any of them is unmapped or ``count`` < 1."""
        if count < 1:
            return None
        end = address + count
        for t, start, stop, buf in self._blocks:
            if t is table and start <= address and end <= stop:
                off = 2 * (address - start)
                return bytes(buf[off:off + 2 * count])
        return None

    def sensor(self, name: str) -> float:
        """The float32 value mirrored for a sensor (as a client decodes it)."""
        return float(_FLOAT32.unpack_from(self._sensors, self._sensor_off[name])[0])

    def actuator(self, name: str) -> float:
        """The float32 value mirrored for an actuator (as a client decodes it)."""
        return float(_FLOAT32.unpack_from(self._actuators, self._actuator_off[name])[0])

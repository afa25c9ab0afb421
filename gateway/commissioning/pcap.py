"""A capture of Modbus/TCP traffic (pcap or pcapng) as history, for sites that have nothing else.

Packets are read with scapy (the ``pcap`` extra: ``pip install 'safety-gateway[pcap]'``); the
Modbus application protocol is parsed here (Modbus Messaging on TCP/IP Implementation Guide
v1.0b: the 7-byte MBAP header, then the PDU; Modbus Application Protocol v1.1b3, 6.1-6.12
for the function codes). A TCP segment may hold several frames; a frame split across segments
is not reassembled and is skipped.

Which traffic counts: frames to or from a Modbus device of the site (its ``host`` and ``port``;
the port alone when no address matches, for a capture taken behind NAT), for the device's
``unit``. A request is matched to its response by connection and transaction id, and only
answered requests count (an exception response means the device refused it):

* read responses (FC 1, 2, 3, 4) give the values of the tags in the range read, decoded with
  the gateway's own codec (:mod:`gateway.adapters.codec`: type, word and byte order, scale);
* answered writes (FC 5, 6, 15, 16) give the commands of the actuators in the range written.

Rows: one per poll round. A row collects the readings that follow each other until a tag is
read again; its time is its first reading's. An actuator holds the last value written to it
(or read back from it): that is its command in every row after, NaN before the first.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.commissioning.sources import History, HistoryError
from gateway.config.schema import ModbusDevice, ModbusRef, Table, TagKind

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Site, Tag

__all__ = ["read_pcap"]

_READ_TABLES = {1: Table.COIL, 2: Table.DISCRETE_INPUT, 3: Table.HOLDING_REGISTER,
                4: Table.INPUT_REGISTER}
_WRITES = {5, 6, 15, 16}
PCAP_MAGIC = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
              b"\x0a\x0d\x0d\x0a")


@dataclass(frozen=True)
class _Request:
    at_s: float
    fc: int
    address: int
    count: int
    values: tuple[int, ...]  # registers or bits written (writes only)


def is_pcap(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts a pcap or pcapng file."""
    return head[:4] in PCAP_MAGIC


def read_pcap(path: Path, site: Site) -> History:
    """The site's tags as seen in the Modbus/TCP traffic of the capture at ``path`` (see the
    module docstring). HistoryError for a file scapy cannot read, a missing scapy, or a
    capture with no Modbus traffic of the site's devices."""
    try:
        from scapy.error import Scapy_Exception
        from scapy.layers.inet import IP, TCP
        from scapy.layers.inet6 import IPv6
        from scapy.utils import PcapReader
    except ImportError:
        raise HistoryError(f"{path}: reading a packet capture needs scapy: "
                           "pip install 'safety-gateway[pcap]'") from None
    devices = [d for d in site.devices if isinstance(d, ModbusDevice)]
    if not devices:
        raise HistoryError(f"{path}: the site has no Modbus device to look for")
    by_addr = {(d.host, d.port): d for d in devices}
    by_port: dict[int, list[ModbusDevice]] = {}
    for d in devices:
        by_port.setdefault(d.port, []).append(d)
    tags: dict[tuple[str, Table], list[Tag]] = {}
    for tag in site.tags:
        if isinstance(tag.ref, ModbusRef):
            tags.setdefault((tag.device, tag.ref.table), []).append(tag)
    names = tuple(t.name for t in site.tags)
    index = {n: i for i, n in enumerate(names)}
    actuators = {t.name for t in site.tags if t.kind is TagKind.ACTUATOR}
    pending: dict[tuple[object, int], _Request] = {}
    events: list[tuple[float, str, float]] = []
    try:
        # Opened here and handed over: scapy leaks the file it opened itself when the header
        # is not a capture's.
        src = path.open("rb")
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with src:
        try:
            reader = PcapReader(src)  # type: ignore[arg-type]  # it takes an open file too
        except (OSError, Scapy_Exception) as exc:
            raise HistoryError(f"{path}: not a readable packet capture: {exc}") from None
        try:
            for pkt in reader:
                events += _packet(pkt, IP, IPv6, TCP, by_addr, by_port, pending, tags)
        except (OSError, Scapy_Exception, struct.error, EOFError) as exc:
            raise HistoryError(f"{path}: cannot read the capture: {exc}") from None
    if not events:
        raise HistoryError(f"{path}: no answered Modbus traffic to or from the site's devices "
                           f"({', '.join(f'{d.host}:{d.port}' for d in devices)})")
    return _rows(events, names, index, actuators, str(path))


def _packet(pkt: Any, ip_v4: Any, ip_v6: Any, tcp_layer: Any,
            by_addr: dict[tuple[str, int], ModbusDevice],
            by_port: dict[int, list[ModbusDevice]], pending: dict[tuple[object, int], _Request],
            tags: dict[tuple[str, Table], list[Tag]]) -> list[tuple[float, str, float]]:
    """The events of one packet (requests are remembered in ``pending``)."""
    ip = pkt.getlayer(ip_v4) or pkt.getlayer(ip_v6)
    tcp = pkt.getlayer(tcp_layer)
    if ip is None or tcp is None:
        return []
    payload = bytes(tcp.payload)
    if not payload:
        return []
    at_s = float(pkt.time)
    src, dst = (str(ip.src), int(tcp.sport)), (str(ip.dst), int(tcp.dport))
    device = _device(by_addr, by_port, dst)
    to_device = device is not None
    if device is None:
        device = _device(by_addr, by_port, src)
    if device is None:
        return []
    conn = (src, dst) if to_device else (dst, src)
    events: list[tuple[float, str, float]] = []
    for tid, unit, pdu in _frames(payload):
        if unit != device.unit and unit not in (0, 255):
            continue
        if to_device:
            req = _request(at_s, pdu)
            if req is not None:
                pending[(conn, tid)] = req
            continue
        req = pending.pop((conn, tid), None)
        if req is None or not pdu or pdu[0] != req.fc:
            continue  # unanswered, an exception response, or a stray frame
        events += _events(req, pdu, at_s, device, tags)
    return events


def _device(by_addr: dict[tuple[str, int], ModbusDevice],
            by_port: dict[int, list[ModbusDevice]], end: tuple[str, int]
            ) -> ModbusDevice | None:
    found = by_addr.get(end)
    if found is not None:
        return found
    same_port = by_port.get(end[1], [])
    return same_port[0] if len(same_port) == 1 else None


def _frames(payload: bytes) -> list[tuple[int, int, bytes]]:
    """(transaction id, unit, PDU) of each complete Modbus/TCP frame in one segment."""
    frames = []
    pos = 0
    while len(payload) - pos >= 8:
        tid, proto, length = struct.unpack_from(">HHH", payload, pos)
        if proto != 0 or length < 2 or pos + 6 + length > len(payload):
            break  # not Modbus, or a frame split across segments
        unit = payload[pos + 6]
        frames.append((tid, unit, payload[pos + 7:pos + 6 + length]))
        pos += 6 + length
    return frames


def _request(at_s: float, pdu: bytes) -> _Request | None:
    if len(pdu) < 5:
        return None
    fc = pdu[0]
    address, word = struct.unpack_from(">HH", pdu, 1)
    if fc in _READ_TABLES:
        return _Request(at_s, fc, address, word, ())
    if fc == 5:
        return _Request(at_s, fc, address, 1, (1 if word == 0xFF00 else 0,))
    if fc == 6:
        return _Request(at_s, fc, address, 1, (word,))
    if fc in (15, 16) and len(pdu) >= 6:
        data = pdu[6:6 + pdu[5]]
        if fc == 16:
            regs = tuple(struct.unpack_from(f">{len(data) // 2}H", data))[:word]
            return _Request(at_s, fc, address, len(regs), regs)
        bits = tuple((data[i // 8] >> (i % 8)) & 1 for i in range(min(word, 8 * len(data))))
        return _Request(at_s, fc, address, len(bits), bits)
    return None


def _events(req: _Request, pdu: bytes, at_s: float, device: ModbusDevice,
            tags: dict[tuple[str, Table], list[Tag]]) -> list[tuple[float, str, float]]:
    """(time, tag, value) of the tags an answered request read or wrote."""
    from gateway.adapters.base import EncodingError
    from gateway.adapters.codec import decode, decode_bit

    if req.fc in _READ_TABLES:
        table = _READ_TABLES[req.fc]
        if len(pdu) < 2:
            return []
        data = pdu[2:2 + pdu[1]]
        if table.is_bits:
            values = [(data[i // 8] >> (i % 8)) & 1 for i in range(min(req.count, 8 * len(data)))]
        else:
            values = list(struct.unpack_from(f">{len(data) // 2}H", data))
        when = at_s
    else:
        table = Table.COIL if req.fc in (5, 15) else Table.HOLDING_REGISTER
        values = list(req.values)
        when = req.at_s  # the write happened when it was sent; the answer confirms it
    out: list[tuple[float, str, float]] = []
    for tag in tags.get((device.name, table), []):
        ref = tag.ref
        assert isinstance(ref, ModbusRef)
        width = 1 if table.is_bits else tag.wire_type.registers
        first = ref.address - req.address
        if first < 0 or first + width > len(values):
            continue
        try:
            value = (decode_bit(tag, bool(values[first])) if table.is_bits
                     else decode(tag, values[first:first + width]))
        except EncodingError:
            continue  # a value the tag cannot hold is not a reading of it
        if math.isfinite(value):
            out.append((when, tag.name, value))
    return out


def _rows(events: list[tuple[float, str, float]], names: tuple[str, ...],
          index: dict[str, int], actuators: set[str], source: str) -> History:
    events.sort(key=lambda e: e[0])
    times: list[float] = []
    rows: list[list[float]] = []
    held = [math.nan] * len(names)
    current: list[float] | None = None
    seen: set[str] = set()
    for at_s, name, value in events:
        i = index[name]
        if name in actuators:
            held[i] = value
        if current is None or name in seen:
            if current is not None and times and at_s <= times[-1]:
                continue  # two rounds at one instant: the earlier stands
            current = [held[j] if names[j] in actuators else math.nan
                       for j in range(len(names))]
            times.append(at_s)
            rows.append(current)
            seen = set()
        seen.add(name)
        current[i] = value
    return History(np.array(times), names, np.array(rows, dtype=np.float64), (source,))

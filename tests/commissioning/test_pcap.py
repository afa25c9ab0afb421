"""A capture of Modbus/TCP traffic as history: frames built with scapy from a simulated day,
encoded with the gateway's codec, read back through `read_any`."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw
from scapy.utils import wrpcap

from gateway.adapters.codec import decode, decode_bit, encode
from gateway.commissioning.sources import HistoryError, read_any, read_csv

if TYPE_CHECKING:
    from pathlib import Path

    from scapy.packet import Packet

    from gateway.config.schema import Site

CLIENT, PLC = ("127.0.0.2", 40000), ("127.0.0.1", 5020)


def frame(tid: int, pdu: bytes, unit: int = 1) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def packet(at_s: float, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> Packet:
    pkt = IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags="PA") / Raw(payload)
    pkt.time = at_s
    return pkt


def capture(site: Site, day: Path, rows: int, path: Path) -> np.ndarray:
    """One poll round per row: read input registers 0-5, write holding registers 0-1 and
    coil 0. Returns the values as the gateway decodes them, in site tag order."""
    history = read_csv(day)
    tags = {t.name: t for t in site.tags}
    pkts = []
    expected = []
    tid = 0
    for k in range(rows):
        t0 = 1000.0 + k
        row = {n: float(history.values[k, history.names.index(n)]) for n in history.names}
        regs = (*encode(tags["level"], row["level"]), *encode(tags["inflow_rate"],
                row["inflow_rate"]), *encode(tags["demand"], row["demand"]),
                *encode(tags["uptime_s"], row["uptime_s"]))
        tid += 1
        pkts.append(packet(t0, CLIENT, PLC, frame(tid, struct.pack(">BHH", 4, 0, 6))))
        pkts.append(packet(t0 + 0.01, PLC, CLIENT,
                           frame(tid, struct.pack(">BB6H", 4, 12, *regs))))
        cmd = (*encode(tags["inflow_valve"], row["inflow_valve"]),
               *encode(tags["outflow_pump"], row["outflow_pump"]))
        tid += 1
        write = struct.pack(">BHHB2H", 16, 0, 2, 4, *cmd)
        # The write and a read of another device's port share one segment with it: only
        # the site's device counts.
        pkts.append(packet(t0 + 0.05, CLIENT, PLC, frame(tid, write)))
        pkts.append(packet(t0 + 0.06, PLC, CLIENT, frame(tid, struct.pack(">BHH", 16, 0, 2))))
        tid += 1
        coil = 0xFF00 if row["drain_valve"] else 0
        pkts.append(packet(t0 + 0.07, CLIENT, PLC, frame(tid, struct.pack(">BHH", 5, 0, coil))))
        pkts.append(packet(t0 + 0.08, PLC, CLIENT, frame(tid, struct.pack(">BHH", 5, 0, coil))))
        # What the gateway reads: its own decoding of what was encoded.
        expected.append([decode_bit(tags[n], bool(row[n])) if n == "drain_valve"
                         else decode(tags[n], encode(tags[n], row[n])) for n in tags])
    # A refused write (exception response) changes nothing; nor does traffic to another port.
    tid += 1
    pkts.append(packet(2000.0, CLIENT, PLC, frame(tid, struct.pack(">BHH", 6, 0, 9999))))
    pkts.append(packet(2000.01, PLC, CLIENT, frame(tid, struct.pack(">BB", 0x86, 3))))
    pkts.append(packet(2000.02, CLIENT, ("127.0.0.1", 5021),
                       frame(tid + 1, struct.pack(">BHH", 6, 0, 1))))
    pkts.append(packet(2000.03, ("127.0.0.1", 5021), CLIENT,
                       frame(tid + 1, struct.pack(">BHH", 6, 0, 1))))
    wrpcap(str(path), pkts)
    return np.array(expected)


def test_capture_gives_readings_and_written_commands(tmp_path: Path, water_site: Site,
                                                     water_day: Path) -> None:
    path = tmp_path / "traffic.pcap"
    expected = capture(water_site, water_day, 60, path)
    h = read_any(path, water_site)
    assert h.names == tuple(t.name for t in water_site.tags)
    assert h.n_samples == 60
    assert h.time_s.tolist() == [1000.01 + k for k in range(60)]
    assert np.array_equal(h.values, expected)


def test_a_capture_without_the_sites_traffic_is_an_error(tmp_path: Path,
                                                         water_site: Site) -> None:
    path = tmp_path / "other.pcap"
    wrpcap(str(path), [packet(1.0, CLIENT, ("10.0.0.9", 80), b"GET / HTTP/1.0\r\n\r\n")])
    with pytest.raises(HistoryError, match="no answered Modbus traffic"):
        read_any(path, water_site)
    broken = tmp_path / "broken.pcap"
    broken.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 10)
    with pytest.raises(HistoryError, match=str(broken)):
        read_any(broken, water_site)

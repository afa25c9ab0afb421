"""Shared pieces of the communications-process tests: a site on free ports, a stub core,
deadline waits and Modbus helpers."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from typing import TYPE_CHECKING, Any

import yaml

from gateway.adapters.base import ACCEPTED, ClientInfo, NorthboundHandler, Refusal, WriteOutcome
from simulators.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from gateway.link.mirror import MirrorWriter

ENVELOPE = WriteOutcome(False, 3, "above 50 in this test", Refusal.ENVELOPE)


def site_file(tmp_path: Path, *, opcua: bool = False) -> tuple[Path, int]:
    """The water tank site with only a plain Modbus server on a free port, or (``opcua``)
    only an OPC UA server (anonymous operators, user ``boss`` with password variable
    ``SG_TEST_BOSS``); (path, port)."""
    with open("configs/water_tank.yaml", encoding="utf-8") as f:
        data = yaml.safe_load(f)
    port = free_port()
    data["northbound"] = (
        {"opcua": {"endpoint": f"opc.tcp://127.0.0.1:{port}/gateway/",
                   "allow_anonymous": True, "allow_insecure_passwords": True,
                   "users": [{"name": "boss", "role": "admin",
                              "password_env": "SG_TEST_BOSS"}]}} if opcua else
        {"modbus": {"host": "127.0.0.1", "port": port, "unit": 1, "allow": ["127.0.0.1"]}})
    data["audit"]["path"] = str(tmp_path / "audit.db")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path, port


class StubCore(NorthboundHandler):
    """Accepts setpoints up to 50, refuses the rest as outside the envelope."""

    def __init__(self) -> None:
        self.writes: list[tuple[ClientInfo, dict[str, float], bool]] = []
        self.reports: list[tuple[Any, ...]] = []
        self.gate: asyncio.Event | None = None  # while set and clear, writes wait

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        self.writes.append((client, values, atomic))
        if self.gate is not None:
            await self.gate.wait()
        refused = any(not v <= 50 for v in values.values())
        return dict.fromkeys(values, ENVELOPE if refused else ACCEPTED)

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        return ACCEPTED

    def refused_many(self, client: ClientInfo, values: Mapping[str, float], reason: str,
                     code: int, count: int) -> None:
        self.reports.append((client, dict(values), reason, code, count))

    def refused_connections_many(self, protocol: str, address: str, user: str | None,
                                 event: str, reason: str, count: int) -> None:
        self.reports.append((protocol, address, user, event, reason, count))


async def until(cond: Callable[[], Any], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not await _eval(cond):
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout_s} s: {what or cond}")
        await asyncio.sleep(0.02)


async def _eval(cond: Callable[[], Any]) -> bool:
    value = cond()
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value)


def publish(writer: MirrorWriter, cycle: int, *, mode: str = "manual", latched: bool = False,
            applied: tuple[float, ...] = (30.0, 30.0, 0.0), heartbeat: int | None = None,
            incident_id: str = "", bypasses: tuple[tuple[str, float], ...] = (),
            wall_s: float = 1_000_000.0) -> None:
    writer.publish(cycle=cycle, heartbeat=cycle if heartbeat is None else heartbeat,
                   wall_s=wall_s, mode=mode, latched=latched, sensor_values=[2.5, 0.01, 0.5, 99.0],
                   sensor_good=[True, True, True, False], sensor_read_s=[0.0] * 4, applied=applied,
                   proposal=None, source=[2, 2, 2], incident_id=incident_id,
                   bypasses=bypasses)


def f32(registers: list[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", *registers))[0]
    return value


def regs(*values: float) -> list[int]:
    out: list[int] = []
    for v in values:
        out += struct.unpack(">HH", struct.pack(">f", v))
    return out


def close_to(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)

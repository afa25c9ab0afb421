"""Refused writes are evidence: aggregated per client and reason, at most one audit record per
second each, with the count and the first and last values. A pure unit (injected clock), then
real clients hammering a real gateway over Modbus and OPC UA on loopback."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

import pytest

from gateway.audit import read_records, verify
from gateway.config.schema import OpcUaUser
from gateway.runtime.refusals import RefusalLog

from .test_restart import Clock, cycles, make, site_on_free_ports


def test_a_window_per_client_and_reason_per_second() -> None:
    out: list[dict[str, Any]] = []
    log = RefusalLog(out.append)
    for k in range(25):  # 2.5 s of refusals every 0.1 s from two ports of one host
        t = 10.0 + 0.1 * k
        log.tick(t)
        log.refused(t, protocol="modbus", address=f"10.0.0.5:{4000 + k % 2}", user=None,
                    role="ai", reason="outside", code=3, values={"v": float(k)})
    assert [w["count"] for w in out] == [10, 10]
    assert out[0]["first"]["values"] == {"v": 0.0} and out[0]["last"]["values"] == {"v": 9.0}
    assert out[0]["client"] == "10.0.0.5" and out[0]["n_addresses"] == 2
    assert math.isclose(out[0]["span_s"], 0.9)
    assert log.flush() == 1 and out[-1]["count"] == 5
    # NaN and inf are kept as evidence, as text.
    log.refused(0.0, protocol="opcua", address="x:1", user="ai", role="ai", reason="r",
                code=3, values={"v": math.nan})
    log.flush()
    assert out[-1]["first"]["values"] == {"v": "nan"}


def test_many_clients_stay_bounded() -> None:
    out: list[dict[str, Any]] = []
    log = RefusalLog(out.append, max_keys=4)
    for k in range(100):
        log.refused(1.0, protocol="modbus", address=f"10.0.{k}.1:5", user=None, role="ai",
                    reason="r", code=3, values={})
    assert log.flush() == 5
    assert sum(w["count"] for w in out) == 100


def test_refusals_counted_elsewhere_keep_their_count() -> None:
    out: list[dict[str, Any]] = []
    log = RefusalLog(out.append)
    log.refused(1.0, protocol="modbus", address="10.0.0.5:1", user=None, role="viewer",
                reason="r", code=2, values={"address": 1.0}, count=500)
    log.refused(1.5, protocol="modbus", address="10.0.0.5:2", user=None, role="viewer",
                reason="r", code=2, values={"address": 2.0})
    assert log.flush() == 1 and out[0]["count"] == 501 and log.total == 501
    with pytest.raises(ValueError, match="count"):
        log.refused(2.0, protocol="modbus", address="x:1", user=None, role="ai", reason="r",
                    code=3, values={}, count=0)


async def hammer(tmp_path) -> tuple[float, int]:
    from asyncua import Client, ua
    from pymodbus.client import AsyncModbusTcpClient

    site = site_on_free_ports()
    north = site.northbound
    assert north.modbus is not None and north.opcua is not None
    site = replace(site, northbound=replace(
        north, modbus=replace(north.modbus, ai_clients=("127.0.0.1",)),
        opcua=replace(north.opcua, users=(OpcUaUser("ai", "GW_TEST_AI_PW", "ai"),
                                          OpcUaUser("eve", "GW_TEST_VIEWER_PW", "viewer")),
                                   allow_insecure_passwords=True)))  # loopback test
    clock = Clock(1000.0)
    gw = make(site, tmp_path / "audit.db", clock, Clock(1.8e9))
    await gw.open()
    sent = 0
    try:
        await cycles(gw, clock, 2)
        mb = AsyncModbusTcpClient("127.0.0.1", port=north.modbus.port)
        await mb.connect()
        ai = Client(north.opcua.endpoint, timeout=5)
        ai.set_user("ai")
        ai.set_password("ai-secret")
        eve = Client(north.opcua.endpoint, timeout=5)
        eve.set_user("eve")
        eve.set_password("eve-secret")
        await ai.connect()
        await eve.connect()
        node = ai.get_node("ns=2;s=Gateway.Actuators.inflow_valve")
        vnode = eve.get_node("ns=2;s=Gateway.Actuators.inflow_valve")
        nan = mb.convert_to_registers(math.nan, mb.DATATYPE.FLOAT32)
        big = mb.convert_to_registers(150.0, mb.DATATYPE.FLOAT32)
        start = clock.now
        try:
            for round_ in range(30):  # 3 s of the gateway's time
                for regs in (nan, big):  # Modbus, the AI's address: NaN, out of range
                    rr = await mb.write_registers(0, regs, device_id=north.modbus.unit)
                    assert rr.isError()
                    sent += 1
                # A frame to an address that holds no setpoint: refused by the server.
                rr = await mb.write_registers(500, big, device_id=north.modbus.unit)
                assert rr.isError()
                sent += 1
                for value in (math.nan, math.inf, 150.0 + round_):  # OPC UA user ai
                    with pytest.raises(ua.UaStatusCodeError):
                        await node.write_value(ua.DataValue(ua.Variant(value,
                                                                       ua.VariantType.Double)))
                    sent += 1
                with pytest.raises(ua.UaStatusCodeError):  # a viewer: wrong role
                    await vnode.write_value(ua.DataValue(ua.Variant(5.0, ua.VariantType.Double)))
                sent += 1
                await cycles(gw, clock, 1)
        finally:
            mb.close()
            await ai.disconnect()
            await eve.disconnect()
        elapsed = clock.now - start
    finally:
        await gw.close()
    return elapsed, sent


def test_refused_writes_reach_the_audit_chain_aggregated(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_TEST_AI_PW", "ai-secret")
    monkeypatch.setenv("GW_TEST_VIEWER_PW", "eve-secret")
    elapsed, sent = asyncio.run(hammer(tmp_path))
    db = tmp_path / "audit.db"
    assert verify(db).ok
    windows = [r.data() for r in read_records(db, kinds=("refused_write",))]
    assert windows, "no refused write reached the audit chain"
    # Every refusal is counted once (none twice: not also as an operator write).
    assert sum(w["count"] for w in windows) == sent
    assert not list(read_records(db, kinds=("operator",)))
    keys = {(w["protocol"], w["client"], w["user"], w["reason"]) for w in windows}
    # Bounded: one record per second per (client, reason), plus the windows still open.
    assert len(windows) <= (math.ceil(elapsed) + 1) * len(keys)
    by = {}
    for w in windows:
        by.setdefault((w["protocol"], w["user"], w["reason"]), []).append(w)
    opcua_ai = [k for k in by if k[0] == "opcua" and k[1] == "ai"]
    # NaN and inf share one reason (not finite). Out of range is one reason or more: the
    # reason names every constraint broken, and whether 150 % also breaks total_flow depends
    # on where the fallback has the pump at that moment.
    assert len([k for k in opcua_ai if "finite" in k[2]]) == 1
    ranged_keys = [k for k in opcua_ai if "finite" not in k[2]]
    assert ranged_keys and all("inflow_valve.max" in k[2] for k in ranged_keys)
    ranged = [w for k in ranged_keys for w in by[k]]
    firsts = [w["first"]["values"]["inflow_valve"] for w in ranged]
    lasts = [w["last"]["values"]["inflow_valve"] for w in ranged]
    assert min(firsts) == 150.0 and max(lasts) == 179.0
    assert sum(w["count"] for w in ranged) == 30
    finite = next(by[k] for k in opcua_ai if "finite" in k[2])
    assert sum(w["count"] for w in finite) == 60
    assert finite[0]["first"]["values"] == {"inflow_valve": "nan"}
    assert finite[-1]["last"]["values"] == {"inflow_valve": "inf"}
    modbus = [k for k in by if k[0] == "modbus"]
    # NaN, out of range (the handler; one reason or more, as above), no setpoint (the server).
    assert len([k for k in modbus if "finite" in k[2]]) == 1
    assert [k for k in modbus if "inflow_valve.max" in k[2]]
    assert len(modbus) <= 4
    assert all(w["client"] == "127.0.0.1" and w["role"] == "ai"
               for k in modbus for w in by[k])
    assert any("no setpoint" in k[2] for k in modbus)
    viewer = [w for k, ws in by.items() if k[1] == "eve" for w in ws]
    assert sum(w["count"] for w in viewer) == 30

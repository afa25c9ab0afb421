"""``safety-gateway ctl`` against a real running gateway on loopback: its OPC UA server answers
every request with the real outcome, its status (OPC UA and the Modbus status registers) tells
the truth about the latch, the incident and the bypasses, and an operator takes the plant back
to MANUAL once sensing is healthy (issue 15: "an operator can always take control", "answers
lie")."""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pymodbus.client import AsyncModbusTcpClient

import gateway
from gateway.cli import main
from gateway.config.schema import OpcUaUser
from gateway.runtime.gateway import Gateway
from simulators.ports import free_port
from tests.incident.test_via_gateway import Clock, Device

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parents[1]
ADMIN = ("--user", "chief", "--password-env", "GW_TEST_CTL_ADMIN")
OPERATOR = ("--user", "shift", "--password-env", "GW_TEST_CTL_OP")


async def scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    url = f"opc.tcp://127.0.0.1:{free_port()}/gateway/"
    modbus_port = free_port()
    north = site.northbound
    assert north.modbus is not None and north.opcua is not None
    site = replace(site, northbound=replace(
        north, modbus=replace(north.modbus, port=modbus_port),
        opcua=replace(north.opcua, endpoint=url, allow_anonymous=False,
                      allow_insecure_passwords=True,
                      users=(OpcUaUser("chief", "GW_TEST_CTL_ADMIN", "admin"),
                             OpcUaUser("shift", "GW_TEST_CTL_OP", "operator")))))
    clock = Clock()
    gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                 startup_wait_s=0.0, audit_path=tmp_path / "audit.db")
    level_good = True

    async def cycles(n: int) -> None:
        for k in range(n):
            clock.now += 0.1
            gw.store.update("level", 2.5 + 0.002 * (k % 7), level_good, clock.now)
            for name, value in (("inflow_rate", 0.01), ("demand", 0.004),
                                ("uptime_s", clock.now)):
                gw.store.update(name, value, True, clock.now)
            await gw.cycle(clock.now)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["ctl", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    async def ctl(*argv: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(run, *argv, "--via", url)

    modbus = AsyncModbusTcpClient("127.0.0.1", port=modbus_port)

    async def status_registers() -> list[int]:
        rr = await modbus.read_input_registers(1000, count=8, device_id=1)
        assert not rr.isError(), rr
        return list(rr.registers)

    await gw.open()
    try:
        assert await modbus.connect()
        await cycles(3)
        capsys.readouterr()
        code, out, err = await ctl("status", *OPERATOR)
        assert code == 0, err
        assert "mode:      manual" in out and "latched:   no" in out
        assert "incident:  none open" in out and "bypasses:  none" in out

        # Requests are answered with their real outcome, in the same call.
        code, _, err = await ctl("mode", "auto", *OPERATOR)
        assert code == 1 and "allowed only from shadow" in err
        code, _, err = await ctl("reset", *ADMIN)
        assert code == 1 and "no trip is latched" in err
        code, _, err = await ctl("bypass", "nosuch", "60", *ADMIN)
        assert code == 1 and "unknown detector 'nosuch'" in err and "ai_silent" in err
        code, _, err = await ctl("bypass", "ai_silent", "1e9", *ADMIN)
        assert code == 1 and "3600" in err
        code, _, err = await ctl("bypass", "ai_silent", "60", *OPERATOR)  # admins only
        assert code == 1 and "BadUserAccessDenied" in err
        code, out, err = await ctl("bypass", "ai_silent", "60", *ADMIN)
        assert code == 0, err
        assert out.startswith("applied: bypass for 60.0 s")
        await cycles(1)
        code, out, err = await ctl("status", "--json", *OPERATOR)
        assert code == 0, err
        view = json.loads(out)
        (bypass,) = view["bypasses"]
        assert bypass["detector"] == "ai_silent" and 0 < bypass["seconds_left"] <= 60
        regs = await status_registers()
        assert regs[6] == 1 and 55 <= regs[7] <= 60  # status.bypasses, bypass_expiry_s
        code, out, err = await ctl("unbypass", "ai_silent", *ADMIN)
        assert code == 0, err
        await cycles(1)
        assert (await status_registers())[6:8] == [0, 0]

        # The level transmitter goes bad: SAFE_STOP, latched, an incident opens.
        level_good = False
        await cycles(3)
        assert gw.supervisor is not None and gw.supervisor.modes.latched
        assert gw.incidents is not None
        (incident,) = gw.incidents.open_incidents
        regs = await status_registers()
        assert regs[:3] == [3, 1, 1]  # safe_stop, latched, an incident open
        code, out, err = await ctl("status", "--json", *OPERATOR)
        view = json.loads(out)
        assert view["mode"] == "safe_stop" and view["latched"]
        assert view["trip_reason"].startswith("input.quality.level")
        assert view["active_incident"] and view["incident_id"] == incident.id
        # While the level is bad, SAFE_STOP stays, and the refusal names why.
        code, _, err = await ctl("mode", "manual", *OPERATOR)
        assert code == 1 and "input.quality.level" in err and "sensing" in err
        code, _, err = await ctl("reset", *ADMIN)
        assert code == 1 and "has not cleared" in err and "input.quality.level" in err

        # Healthy again: the operator takes the plant to MANUAL; the latch stays until reset.
        level_good = True
        await cycles(2)
        # An operator setpoint is not taken in SAFE_STOP: its own rejection code (5; it read
        # 3, "device failure").
        rr = await modbus.write_registers(0, list(struct.unpack(">HH", struct.pack(">f", 10.0))),
                                          device_id=1)
        assert rr.isError() and rr.exception_code == 4
        assert (await status_registers())[4:6] == [5, 1]  # wrong mode, actuator 0
        code, out, err = await ctl("mode", "manual", *OPERATOR)
        assert code == 0, err
        assert "safe_stop -> manual" in out
        await cycles(1)
        code, out, _ = await ctl("status", *OPERATOR)
        assert "mode:      manual" in out and "latched:   yes: input.quality.level" in out
        code, _, err = await ctl("reset", *OPERATOR)
        assert code == 1 and "BadUserAccessDenied" in err
        code, out, err = await ctl("reset", *ADMIN)
        assert code == 0 and "trip reset" in out, err
        await cycles(2)
        assert not gw.supervisor.modes.latched
        assert gw.supervisor.mode.value == "manual"
        assert len(gw.incidents.open_incidents) == 1  # a reset opened no new incident

        # Bad arguments are refused before anything is sent; a bad login is a refusal.
        code, _, err = await ctl("status", "--user", "chief", "--password-env",
                                 "GW_TEST_CTL_UNSET")
        assert code == 2 and "GW_TEST_CTL_UNSET" in err
        code, _, err = await ctl("mode", "turbo", *OPERATOR)
        assert code == 2 and "turbo" in err
        code, _, err = await ctl("status", "--user", "chief", "--password-env",
                                 "GW_TEST_CTL_OP")
        assert code == 1 and "refused" in err
        code, _, err = await asyncio.to_thread(
            run, "status", "--via", f"opc.tcp://127.0.0.1:{free_port()}/gateway/")
        assert code == 3 and "cannot reach the gateway" in err
        assert "Traceback" not in err
    finally:
        modbus.close()
        await gw.close()


def test_ctl_through_a_running_gateway(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GW_TEST_CTL_ADMIN", "correct horse")
    monkeypatch.setenv("GW_TEST_CTL_OP", "battery staple")
    monkeypatch.delenv("GW_TEST_CTL_UNSET", raising=False)
    asyncio.run(scenario(tmp_path, capsys))

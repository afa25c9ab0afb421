"""The communications process end to end: a real child process (``python -m gateway.comms``)
with a real Modbus server, a stub core behind the real channel, and the real mirror.

A pymodbus client plays SCADA: its writes reach the stub core through the child and come back
with the core's outcome (accepted, refused), it reads the mirrored values, and the status
registers follow the mirror. Without a core the child does not stay up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import TYPE_CHECKING, Any

from pymodbus.client import AsyncModbusTcpClient

from gateway.adapters.base import Role
from gateway.comms.process import EXIT_CORE_GONE, EXIT_START_FAILED
from gateway.comms.supervisor import CommsEvent, CommsEventKind, CommsSupervisor
from gateway.config.loader import load_config
from gateway.link.channel import ChannelServer
from gateway.link.mirror import MirrorLayout, MirrorWriter
from tests.comms.conftest import StubCore, close_to, f32, publish, regs, site_file, until

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from pathlib import Path


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


async def connect(port: int) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)

    async def up() -> bool:
        return bool(await client.connect())

    await until(up, 60, "the child's Modbus server accepts")
    return client


async def status(client: AsyncModbusTcpClient) -> list[int]:
    rr = await client.read_input_registers(1000, count=8, device_id=1)
    assert not rr.isError(), rr
    return list(rr.registers)


def test_writes_reach_the_core_and_the_servers_follow_the_mirror(tmp_path: Path) -> None:
    async def main() -> None:
        path, port = site_file(tmp_path)
        writer = MirrorWriter(None, MirrorLayout.for_site(load_config(path)))
        core = StubCore()
        events: list[CommsEvent] = []
        sup = CommsSupervisor(path, writer.name, core, events.append)
        client = None
        try:
            publish(writer, 1, heartbeat=7)
            await sup.start()
            client = await connect(port)
            # mode manual, heartbeat 7, nothing refused yet
            await until(lambda: status(client), 30)
            await until(lambda: _eq(status(client), [2, 0, 0, 7, 0, 0, 0, 0]), 30,
                        "status follows the first publish")
            rr = await client.read_input_registers(0, count=4, device_id=1)
            assert close_to(f32(rr.registers[:2]), 2.5) and close_to(f32(rr.registers[2:]), 0.01)
            rr = await client.read_holding_registers(0, count=6, device_id=1)
            assert [f32(rr.registers[i:i + 2]) for i in (0, 2, 4)] == [30.0, 30.0, 0.0]

            # accepted by the core: the normal answer; the core saw the operator's write
            wr = await client.write_registers(0, regs(40.0), device_id=1)
            assert not wr.isError(), wr
            who, values, atomic = core.writes[-1]
            assert values == {"inflow_valve": 40.0} and atomic
            assert who.protocol == "modbus" and who.role is Role.OPERATOR
            assert who.address.startswith("127.0.0.1:")
            # refused by the core: its exception code, and the rejection on the status
            wr = await client.write_registers(2, regs(80.0), device_id=1)
            assert wr.isError() and wr.exception_code == 3
            assert core.writes[-1][1] == {"outflow_pump": 80.0}
            assert (await status(client))[4:6] == [1, 2]  # outside the envelope, actuator 2

            # the core publishes a new cycle: the registers follow it
            publish(writer, 2, mode="safe_stop", latched=True, heartbeat=70_000,
                    incident_id="INC-1", applied=(0.0, 0.0, 100.0),
                    bypasses=(("drift", 1_000_100.0), ("stale", 1_000_050.5)))
            await until(lambda: _eq(status(client), [3, 1, 1, 70_000 % 65536, 1, 2, 2, 51]),
                        30, "status follows the second publish")
            rr = await client.read_holding_registers(0, count=6, device_id=1)
            assert [f32(rr.registers[i:i + 2]) for i in (0, 2, 4)] == [0.0, 0.0, 100.0]
            client.close()
            client = None
            await sup.stop()
            assert [e.kind for e in events] == [CommsEventKind.STARTED, CommsEventKind.STOPPED]
            assert events[-1].exit_code == 0  # SIGTERM: a clean exit
        finally:
            if client is not None:
                client.close()
            await sup.stop()
            writer.close()
    run(main())


async def _eq(value: Any, expected: Any) -> bool:
    with contextlib.suppress(Exception):
        return bool(await value == expected)
    return False


def test_frames_the_server_refuses_reach_the_core_counted_once(tmp_path: Path) -> None:
    async def main() -> None:
        path, port = site_file(tmp_path)
        writer = MirrorWriter(None, MirrorLayout.for_site(load_config(path)))
        core = StubCore()
        sup = CommsSupervisor(path, writer.name, core, lambda e: None)
        try:
            publish(writer, 1)
            await sup.start()
            client = await connect(port)
            for _ in range(25):  # no setpoint at 500: refused by the child's server itself
                wr = await client.write_registers(500, regs(1.0), device_id=1)
                assert wr.isError() and wr.exception_code == 2
            client.close()
            await until(lambda: core.reports, 10, "the refusals reach the core")
            await asyncio.sleep(1.5)  # a second window would show here: there is none
            assert len(core.reports) == 1
            who, values, reason, code, count = core.reports[0]
            assert (code, count) == (2, 25) and values["address"] == 500.0
            assert who.address.startswith("127.0.0.1:") and "function 16" in reason
            assert core.writes == []
        finally:
            await sup.stop()
            writer.close()
    run(main())


def test_without_a_core_the_process_stops_serving(tmp_path: Path) -> None:
    async def main() -> None:
        path, port = site_file(tmp_path)
        writer = MirrorWriter(None, MirrorLayout.for_site(load_config(path)))
        publish(writer, 1)
        ours, theirs = socket.socketpair()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.comms", "--site", str(path), "--mirror",
            writer.name, "--channel-fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),))
        theirs.close()
        channel = ChannelServer(ours, StubCore())
        try:
            await channel.start()
            client = await connect(port)
            client.close()
            channel.close("the core died")
            assert await asyncio.wait_for(proc.wait(), 30) == EXIT_CORE_GONE
            refused = False
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
            except OSError:
                refused = True
            assert refused, "the port still serves without a core"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            writer.close()
    run(main())


def test_a_mirror_of_another_site_is_refused_at_start(tmp_path: Path) -> None:
    async def main() -> None:
        path, _ = site_file(tmp_path)
        writer = MirrorWriter(None, MirrorLayout(("a",), ("b",)))
        ours, theirs = socket.socketpair()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.comms", "--site", str(path), "--mirror",
            writer.name, "--channel-fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),),
            stderr=asyncio.subprocess.PIPE)
        theirs.close()
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == EXIT_START_FAILED
            assert b"1 sensors and 1 actuators, this site has 4 and 3" in err
            assert b"Traceback" not in err
        finally:
            ours.close()
            writer.close()
    run(main())


def test_a_modbus_site_does_not_import_asyncua(tmp_path: Path) -> None:
    path, _ = site_file(tmp_path)
    script = (
        "import asyncio, socket, sys\n"
        "from gateway.comms.process import Front\n"
        "from gateway.comms.servers import NorthboundServers\n"
        "from gateway.config.loader import load_config\n"
        "from gateway.link.channel import ChannelClient\n"
        "async def main():\n"
        "    a, b = socket.socketpair()\n"
        "    site = load_config(sys.argv[1])\n"
        "    servers = NorthboundServers(site, Front(ChannelClient(a)))\n"
        "    await servers.start()\n"
        "    await servers.stop()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('asyncua', 'onnx', 'onnxruntime', 'matplotlib')"
        " if m in sys.modules))\n")
    import subprocess

    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_full_channel_answers_modbus_busy_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        path, port = site_file(tmp_path)
        writer = MirrorWriter(None, MirrorLayout.for_site(load_config(path)))
        core = StubCore()
        core.gate = asyncio.Event()
        sup = CommsSupervisor(path, writer.name, core, lambda e: None, max_in_flight=1)
        first = second = None
        try:
            publish(writer, 1)
            await sup.start()
            first, second = await connect(port), await connect(port)
            held = asyncio.create_task(first.write_registers(0, regs(10.0), device_id=1))
            await until(lambda: core.writes, 30, "the first write reaches the core")
            wr = await asyncio.wait_for(second.write_registers(2, regs(20.0), device_id=1), 5)
            assert wr.isError() and wr.exception_code == 6  # server device busy
            assert len(core.writes) == 1  # never reached the core
            assert (await status(second))[4:6] == [9, 2]  # busy, on actuator 2
            core.gate.set()
            assert not (await asyncio.wait_for(held, 10)).isError()
        finally:
            for c in (first, second):
                if c is not None:
                    c.close()
            await sup.stop()
            writer.close()
    run(main())


def test_a_bad_command_line_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess

    path, _ = site_file(tmp_path)
    cases = {("--site", str(path), "--mirror", "m", "--channel-fd", "999"): "not a socket",
             ("--site", str(tmp_path / "none.yaml"), "--mirror", "m", "--channel-fd", "0"):
                 "cannot load the site",
             ("--site", str(path), "--mirror", "m", "--channel-fd", "0",
              "--max-in-flight", "0"): "must be >= 1"}
    for args, message in cases.items():
        out = subprocess.run([sys.executable, "-m", "gateway.comms", *args],
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, out.stderr

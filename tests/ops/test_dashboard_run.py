"""``safety-gateway run`` with a site whose only northbound section is the dashboard: the core
starts its communications process for it, and a taken dashboard port is a setup error."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from gateway.config.schema import Table
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def site_with_only_http(tmp_path: Path, plc_port: int, http_port: int) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "water_tank.yaml").read_text())
    data["devices"]["plc"]["port"] = plc_port
    data["northbound"] = {"http": {"host": "127.0.0.1", "port": http_port}}
    # The test PLC's level holds still: no frozen-sensor trip while the test looks.
    data["detection"].pop("frozen_after_s")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_run_serves_the_dashboard_from_its_communications_process(tmp_path: Path) -> None:
    async def main() -> None:
        async with TestPLC(holding=128) as plc:
            await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
            port = free_port()
            site = site_with_only_http(tmp_path, plc.port, port)
            log = tmp_path / "stderr.log"
            with log.open("wb") as stderr:  # a file: a full pipe would block the child
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway.cli", "run", "--no-audit", str(site),
                    cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
                try:
                    loop = asyncio.get_running_loop()
                    end = loop.time() + 60
                    view = None
                    async with aiohttp.ClientSession() as http:
                        while view is None and loop.time() < end:
                            try:
                                async with http.get(f"http://127.0.0.1:{port}/api/state") as r:
                                    view = (await r.json())["view"]
                            except aiohttp.ClientError:
                                await asyncio.sleep(0.1)
                    assert view is not None, log.read_text()
                    assert view["mode"] == "manual"
                    assert "process=comms" in log.read_text()
                finally:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(proc.wait(), 30)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
            assert proc.returncode == 0, log.read_text()

    asyncio.run(main())


def test_run_with_the_dashboard_port_taken_exits_3_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        site = site_with_only_http(tmp_path, free_port(), port)
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--no-audit",
                              str(site)], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, check=False)
    assert out.returncode == 3, out.stderr
    assert f"dashboard (HTTP) 127.0.0.1:{port} cannot be bound" in out.stderr
    assert "Traceback" not in out.stderr

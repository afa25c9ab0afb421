"""``safety-gateway run SITE`` with ``commissioning: {candidate: cand.yaml}`` in the site file:
the core loads the candidate with the site, and its verdicts reach the communications process
(the dashboard's state, from the shared-memory mirror) and ``ctl candidate --via`` (the
communications process's OPC UA method, answered by the core over the channel)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.cli import main as cli_main
from gateway.config.schema import Table
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def site_files(tmp_path: Path, plc_port: int, http_port: int, url: str) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "water_tank.yaml").read_text())
    data["devices"]["plc"]["port"] = plc_port
    opcua = data["northbound"]["opcua"]
    opcua["endpoint"] = url
    opcua.pop("users")  # anonymous operators only (a loopback test)
    data["northbound"] = {"http": {"host": "127.0.0.1", "port": http_port}, "opcua": opcua}
    data["detection"].pop("frozen_after_s")  # the test PLC's level holds still
    cand = json.loads(json.dumps(data))
    cand["envelope"]["limits"]["outflow_pump"]["max"] = 20.0
    (tmp_path / "cand.yaml").write_text(yaml.safe_dump(cand, sort_keys=False))
    data["commissioning"] = {"candidate": "cand.yaml"}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data, sort_keys=False))
    return site


def ctl_json(url: str) -> tuple[int, Any]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["ctl", "candidate", "--via", url, "--json", "--timeout", "5"])
    return code, json.loads(out.getvalue()) if code == 0 else err.getvalue()


def test_run_judges_with_the_candidate_named_in_the_site_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with TestPLC(holding=128) as plc:
            await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
            await plc.set_registers(Table.INPUT_REGISTER, 2, [10])
            await plc.set_registers(Table.HOLDING_REGISTER, 0, [3000, 3000])
            http_port = free_port()
            url = f"opc.tcp://127.0.0.1:{free_port()}/gateway/"
            site = site_files(tmp_path, plc.port, http_port, url)
            log = tmp_path / "stderr.log"
            with log.open("wb") as stderr:  # a file: a full pipe would block the child
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway.cli", "run", "--no-audit", str(site),
                    cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                loop = asyncio.get_running_loop()
                end = loop.time() + 60
                shown = None
                async with aiohttp.ClientSession() as http:
                    while loop.time() < end:
                        assert proc.returncode is None, log.read_text()
                        try:
                            async with http.get(f"http://127.0.0.1:{http_port}/api/state") as r:
                                view = (await r.json())["view"]
                        except aiohttp.ClientError:
                            view = None
                        c = None if view is None else view.get("candidate")
                        if c is not None and c["judged"] >= 5:
                            shown = c
                            break
                        await asyncio.sleep(0.1)
                assert shown is not None, log.read_text()
                # The fallback holds the pump at 30 %: over the candidate's 20 % every cycle.
                assert shown["verdicts"][0]["name"] == "outflow_pump.max"
                assert shown["clamp"] > 0 and shown["errors"] == 0
                code, report = await asyncio.to_thread(ctl_json, url)
                while code != 0 and loop.time() < end:  # the OPC UA server may come later
                    await asyncio.sleep(0.2)
                    code, report = await asyncio.to_thread(ctl_json, url)
                assert code == 0, report
                assert report["candidate"] == str(tmp_path / "cand.yaml")
                assert report["cycles_judged"] >= shown["judged"]
                tallies = {(t["kind"], t["name"]) for t in report["tallies"]}
                assert ("applied", "outflow_pump.max") in tallies
                # The PLC received only what the enforced site decided: the fallback's 30 %
                # (or, if a stalled host let the readings go stale, the safe state's 0 %),
                # never the candidate's 20 %.
                pump = [w.values[1 - w.address] for w in plc.writes
                        if w.function_code in (6, 16)
                        and w.address <= 1 < w.address + len(w.values)]
                assert pump and set(pump) <= {3000, 0}, pump
                assert "candidate" in log.read_text()
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, log.read_text()

    asyncio.run(scenario())

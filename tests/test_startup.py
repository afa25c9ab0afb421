"""Start in a second (issue 17, item 3): building the command line imports no protocol stack
and no model runtime; a command imports what it needs when it runs.

What a process imported is read from its own ``sys.modules``: the command runs under a small
probe that writes the list at exit (the gateway's own code is not touched), in that process
only (not in its children: the audit writer and, later, the communications process)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from benchmarks.startup import SITE, site_variant
from gateway.config.schema import Table
from simulators.plc_modbus import TestPLC

if TYPE_CHECKING:
    from pathlib import Path

HEAVY = ("asyncua", "pymodbus", "onnx", "onnxruntime", "matplotlib", "cryptography")
# What no command needs to build its parser either: the event loop, process pools, databases,
# TLS, HTTP, arrays and YAML load with the command that uses them.
NOT_FOR_THE_PARSER = (*HEAVY, "asyncio", "multiprocessing", "concurrent.futures", "sqlite3",
                      "ssl", "urllib.request", "http.client", "numpy", "yaml")
# Runs the safety-gateway command line; at exit, this process (not a child) writes the names
# of the modules it imported to the file named by its first argument.
PROBE = """
import atexit, os, runpy, sys
out, pid = sys.argv.pop(1), os.getpid()

def dump():
    if os.getpid() == pid:
        with open(out, "w") as f:
            f.write("\\n".join(sorted(sys.modules)))

atexit.register(dump)
sys.argv[0] = "safety-gateway"
runpy.run_module("gateway.cli", run_name="__main__", alter_sys=True)
"""


def _packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in path.read_text().split()}


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def test_the_command_line_is_built_without_the_heavy_libraries() -> None:
    code = ("import sys; import gateway.cli as c; c.build_parser(); "
            f"print(','.join(m for m in {NOT_FOR_THE_PARSER!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "", f"imported while building the parser: {out}"


def test_help_exits_0_and_lists_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "--help"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    for command in ("check", "run", "simulate", "drill", "model", "audit", "ctl", "certs"):
        assert command in result.stdout


def test_check_of_a_modbus_site_imports_no_opcua_model_runtime_or_plotting(
        tmp_path: Path) -> None:
    site = site_variant(SITE, tmp_path, 5020, opcua=False)
    modules = tmp_path / "modules.txt"
    result = subprocess.run([sys.executable, "-c", PROBE, str(modules), "check", str(site)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "ok: site 'water-tank'" in result.stdout
    imported = _packages(modules)
    assert "gateway" in imported  # the probe saw the command's own modules
    wrong = imported & {"asyncua", "onnx", "onnxruntime", "matplotlib"}
    assert not wrong, f"check imported {sorted(wrong)}"


def test_the_audit_writer_process_imports_only_what_it_writes_with(tmp_path: Path) -> None:
    # The core waits for its audit writer child to open the database before the first cycle:
    # what the child imports is on that path. The child runs gateway/audit/process.py and
    # opens an AuditLog; here the same, in a fresh interpreter.
    code = ("import sys, gateway.audit.process; from gateway.audit.log import AuditLog; "
            f"AuditLog({str(tmp_path / 'audit.db')!r}).close(); "
            "print(','.join(m for m in ('asyncio', 'urllib.request', 'http.client', 'numpy', "
            "'yaml', 'pymodbus', 'asyncua') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "", f"the audit writer imported: {out}"


async def _run_until_cycles(site: Path, plc: TestPLC, modules: Path, log: Path,
                            cycles: int) -> None:
    def heartbeats() -> int:
        return sum(1 for w in plc.writes if (w.function_code, w.address) == (6, 100))

    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBE, str(modules), "run", str(site),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while heartbeats() < cycles:
            assert proc.returncode is None, f"the gateway exited: {_tail(log)}"
            assert asyncio.get_running_loop().time() < deadline, "no control cycles in 60 s"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.05)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, _tail(log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("opcua", [False, True], ids=["modbus-only", "as-shipped"])
def test_the_core_of_a_modbus_run_imports_no_opcua_model_runtime_or_crypto(
        tmp_path: Path, opcua: bool) -> None:
    # A site with a Modbus PLC, without TLS, its controller external: the process that runs
    # the cycle needs pymodbus and numpy, and none of the OPC UA stack, the model runtimes,
    # plotting or the cryptography package (the audit writer, a child, signs the chain's
    # head). As shipped, the water tank also serves OPC UA northbound: from the
    # communications process, a child, never from the core.
    modules = tmp_path / "modules.txt"

    async def scenario() -> None:
        async with TestPLC(holding=128) as plc:
            await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
            site = site_variant(SITE, tmp_path, plc.port, opcua=opcua)
            await _run_until_cycles(site, plc, modules, tmp_path / "gateway.log", cycles=5)

    asyncio.run(scenario())
    imported = _packages(modules)
    assert {"gateway", "pymodbus", "numpy"} <= imported  # it did run the cycle
    wrong = imported & {"asyncua", "onnx", "onnxruntime", "matplotlib", "cryptography"}
    assert not wrong, f"the core imported {sorted(wrong)}"

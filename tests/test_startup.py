"""Start in a second (issue 17, item 3): building the command line imports no protocol stack
and no model runtime; a command imports what it needs when it runs.

What a process imported is read from its own ``sys.modules``: the command runs under a small
probe that writes the list at exit (the gateway's own code is not touched), in that process
only (not in its children: the audit writer and, later, the communications process)."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from benchmarks.startup import SITE, site_variant

if TYPE_CHECKING:
    from pathlib import Path

HEAVY = ("asyncua", "pymodbus", "onnx", "onnxruntime", "matplotlib", "cryptography")
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
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
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

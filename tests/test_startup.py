"""Start in a second (issue 17, item 3): building the command line imports no protocol stack
and no model runtime; a command imports what it needs when it runs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("asyncua", "pymodbus", "onnx", "onnxruntime", "matplotlib")


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

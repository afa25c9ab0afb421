"""The README's quick start is the contract with a new user and with CI."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = []
    for block in blocks:
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
        assert len(lines) == 1, f"each quick-start block holds one command: {lines}"
        commands.append(lines[0].strip())
    return commands


def test_readme_opens_with_exactly_two_commands():
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert commands[0].startswith("python3 -m venv .venv")
    assert ".venv/bin/safety-gateway drill" in commands[0]  # the main job: the default drill
    assert "pytest" in commands[1]


def test_ci_runs_exactly_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # Besides the command: what the tests need from the system, installed when missing
    # (`command -v TOOL >/dev/null || ...`).
    lines = [ln for ln in script.splitlines()
             if ln.strip() and not ln.startswith("#")
             and not ln.startswith(("set ", "cd ", "command -v "))]
    assert lines == [_quick_start_commands()[1]]

"""deploy/safety-gateway.service: systemd itself checks it (``systemd-analyze verify``: no error
and no warning, e.g. a misspelt key or value), it asks for what the brief of issue 18 asks
(notify, watchdog, own user, hardening), and ``systemd-analyze security --offline`` rates it.

The unit's ExecStart names the installed path (/opt/safety-gateway/...); the copy verified here
names this checkout's ``safety-gateway`` instead, because verify insists the program exists.
Nothing is installed or started: systemd-analyze reads files only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "safety-gateway.service"
INSTALLED = "/opt/safety-gateway/.venv/bin/safety-gateway"


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found is not None, ("systemd-analyze not found: install Debian's `systemd` package "
                               "(it only reads the unit file; nothing is started)")
    return found


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    program = Path(sys.executable).parent / "safety-gateway"
    assert program.exists(), program
    text = UNIT.read_text() if text is None else text
    assert INSTALLED in text
    copy = tmp_path / "safety-gateway.service"
    copy.write_text(text.replace(INSTALLED, str(program)))
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([analyze(), "verify", str(unit)], capture_output=True, text=True,
                          timeout=120, check=False)


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_verifies_the_unit_without_a_warning(tmp_path):
    result = verify(local_copy(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == "", (result.stdout, result.stderr)


def test_verify_catches_a_misspelt_option(tmp_path):
    """The check above can fail: a misspelt key is only a warning (exit 0) for systemd, so the
    test holds the output to be empty as well."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    result = verify(local_copy(tmp_path, broken))
    assert "Unknown key 'ProtectSystm'" in result.stderr


def test_the_unit_asks_for_what_a_safety_service_needs():
    d = directives(UNIT.read_text())
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"], "KillMode": ["mixed"],
        "Restart": ["on-failure"], "ProtectSystem": ["strict"], "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"], "NoNewPrivileges": ["yes"], "CapabilityBoundingSet": [""],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "SystemCallFilter": ["@system-service"], "MemoryDenyWriteExecute": ["yes"],
        "StateDirectory": ["safety-gateway"], "User": ["safety-gateway"],
        "RestartPreventExitStatus": ["2 3"],
    }
    for key, value in expected.items():
        assert d.get(key) == value, (key, d.get(key))
    assert "StartLimitBurst" in d and "StartLimitIntervalSec" in d
    assert d["ExecStart"] == [f"{INSTALLED} run /etc/safety-gateway/site.yaml"]
    # The watchdog must outlast a cycle by far and systemd must wait for the shutdown policy
    # (4 stages bounded by 5 s each in gateway/runtime/gateway.py, then the children).
    assert d["WatchdogSec"] == ["10s"]
    assert d["TimeoutStopSec"] == ["60s"]
    # `systemctl reload` re-reads the site file (SIGHUP: gateway.runtime.signals).
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    users = (ROOT / "deploy" / "sysusers.d" / "safety-gateway.conf").read_text()
    assert re.search(r"^u safety-gateway ", users, re.MULTILINE)


def exposure(unit: Path) -> float:
    result = subprocess.run([analyze(), "security", "--offline=true", str(unit)],
                            capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, (result.stdout[-2000:], result.stderr)
    return float(match.group(1))


def test_systemd_rates_the_hardening(tmp_path):
    """systemd's own rating (0 = fully locked down, 10 = unprotected): 1.6 when written. The
    same unit without its [Service] hardening rates far worse, so the bound means something."""
    assert exposure(local_copy(tmp_path)) <= 2.0
    text = UNIT.read_text()
    service_start = text.index("# A dedicated, unprivileged user")
    bare = text[:service_start] + "\n[Install]\nWantedBy=multi-user.target\n"
    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    assert exposure(local_copy(bare_dir, bare)) > 5.0

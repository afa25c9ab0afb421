"""The README and docs/ stay true: every link resolves inside the repository, every key the site
loader reads is documented, and every command printed in the README is run by a test (here,
or by the test it is mapped to)."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

_FENCE = re.compile(r"^ *```")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (a ``# comment`` in bash is no heading)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return "\n".join(out)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", _prose(page.read_text()),
                                                     flags=re.M)}


# ---------------------------------------------------------------------------- links


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text and "/work/" not in text, f"{page.name}: a path outside"
    bad = []
    for target in _LINK.findall(_prose(text)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        if path.startswith(("/", "file:", "~")):
            bad.append(f"{target}: absolute")
            continue
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            bad.append(f"{target}: no such file in the repository")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            bad.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not bad, f"{page.name}: {bad}"


def test_the_links_check_catches_what_it_should(tmp_path: Path) -> None:
    # The same rules on a page with one link of each bad kind (a check that cannot fail
    # proves nothing).
    page = tmp_path / "page.md"
    page.write_text("# Top\n[a](../shared/DESIGN.md) [b](/etc/passwd) [c](page.md#nowhere)\n"
                    "[d](page.md#top)\n```bash\n# not a heading\n```\n")
    text = _prose(page.read_text())
    targets = _LINK.findall(text)
    assert targets == ["../shared/DESIGN.md", "/etc/passwd", "page.md#nowhere", "page.md#top"]
    assert _anchors(page) == {"top"}
    assert _slug("On shift: `safety-gateway ctl`") == "on-shift-safety-gateway-ctl"
    assert _slug("The dashboard's login") == "the-dashboards-login"


# ---------------------------------------------------------------------- configuration


def _loader_keys() -> set[str]:
    """Every YAML key the site loader reads (gateway/config/loader.py, by its syntax tree):
    the first argument of the Section getters, the names a loop or comprehension reads in
    turn, the field tables of the simple sections, and the top-level sections."""
    tree = ast.parse((ROOT / "gateway" / "config" / "loader.py").read_text())
    getters = re.compile(r"^(req_\w+|opt_\w+|map|raw|has|items_of|get)$")
    keys: set[str] = set()

    def strings(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Tuple | ast.List):
            return [e.value for e in node.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        return []

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                getters.match(node.func.attr) and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            keys.add(node.args[0].value)
        elif isinstance(node, ast.For | ast.comprehension):
            keys.update(strings(node.iter))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "_read_simple" and len(node.args) >= 4
              and isinstance(node.args[3], ast.Dict)):
            for key in node.args[3].keys:
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    keys.add(key.value)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_SECTIONS" for t in node.targets):
            keys.update(strings(node.value))
    return {k for k in keys if re.fullmatch(r"[a-z][a-z0-9_]*", k)}


def _documented_words(page: Path) -> set[str]:
    words: set[str] = set()
    for code in re.findall(r"`([^`]+)`", _prose(page.read_text(encoding="utf-8"))):
        words.update(re.findall(r"[a-z][a-z0-9_]*", code))
    return words


def test_every_key_the_loader_reads_is_in_the_configuration_reference() -> None:
    keys = _loader_keys()
    # The extraction finds keys of every kind of reading (a getter, a loop, a simple section).
    assert {"site", "cycle_ms", "separate_write_connection", "max_per_source",
            "allow_deprecated_policies", "gross_violation", "bypass_max_concurrent",
            "head_sinks", "client_ca", "max_delay_s", "nonfinite_policy"} <= keys
    page = ROOT / "docs" / "configuration.md"
    missing = sorted(keys - _documented_words(page))
    assert not missing, f"keys the loader reads but docs/configuration.md never names: {missing}"
    headings = set(re.findall(r"^### `(\w+)`", page.read_text(), flags=re.M))
    from gateway.config.loader import _SECTIONS

    assert set(_SECTIONS) <= headings, set(_SECTIONS) - headings


# --------------------------------------------------------------- README commands

_SHELL = ("bash", "sh", "shell", "console")


def readme_commands() -> list[str]:
    """Every command in the README's shell code blocks, in order (continued lines joined;
    comments and blank lines dropped)."""
    commands: list[str] = []
    lang: str | None = None
    pending = ""
    for line in README.read_text(encoding="utf-8").splitlines():
        fence = re.match(r"^ *```(\w*)", line)
        if fence:
            lang = None if lang is not None else fence.group(1)
            continue
        if lang in _SHELL:
            text = line.strip().removeprefix("$ ")
            if not pending and (not text or text.startswith("#")):
                continue
            if text.endswith("\\"):
                pending += text[:-1]
                continue
            commands.append(pending + text)
            pending = ""
        elif lang is not None:
            # A command hidden in an output or config block would escape this test.
            assert not line.lstrip().startswith(("$ ", "safety-gateway ", ".venv/bin/")), (
                f"a command outside a shell block: {line!r}")
    return commands


DRILL_DB = "reports/drill/backdoor_water_tank/audit.db"
# Commands this file runs itself, with a word their output must show.
CHEAP = {
    ".venv/bin/safety-gateway map configs/water_tank.yaml": "legend:",
    f".venv/bin/safety-gateway incidents list --db {DRILL_DB}": "",
    f".venv/bin/safety-gateway audit verify {DRILL_DB}": "intact",
    f".venv/bin/safety-gateway audit show {DRILL_DB} --kind incident": "",
    ".venv/bin/safety-gateway model keygen keys/alice.key --trust registry "
    "--passphrase-env ALICE_PASSPHRASE": "alice.key",
    ".venv/bin/safety-gateway model list --registry registry": "",
}
# The "run against the simulator" block: run in order by test_the_first_run_block_runs.
FIRST_RUN = [
    "export SAFETY_GATEWAY_ADMIN_PASSWORD='a long secret'",
    "export SAFETY_GATEWAY_OPERATOR_PASSWORD='another long secret'",
    ".venv/bin/safety-gateway check configs/water_tank.yaml",
    ".venv/bin/safety-gateway simulate water_tank &",
    ".venv/bin/safety-gateway run configs/water_tank.yaml",
    ".venv/bin/safety-gateway ctl status --via opc.tcp://127.0.0.1:4841/gateway/ --user operator "
    "--password-env SAFETY_GATEWAY_OPERATOR_PASSWORD",
]
# Commands too slow (or too stateful) to repeat here, and the tests that run them.
MAPPED = {
    # The default drill with --report, as the quick start runs it (tests/drill/conftest.py).
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/safety-gateway drill "
    "--report reports/drill": ("tests/drill/test_drills.py::test_default_drill_with_report",),
    # CI runs the second command; this test keeps .ci/run identical to it.
    "{ test -x /usr/bin/chromium && command -v promtool >/dev/null && command -v nats-server "
    ">/dev/null || { apt-get update -q && apt-get install -y -q chromium prometheus "
    "nats-server; }; } && python3 -m venv .venv && "
    "SAFETY_GATEWAY_REQUIRE_COMPILED=1 .venv/bin/pip install -q -e \".[test]\" && "
    ".venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/python -m pytest": (
        "tests/test_readme.py::test_ci_runs_exactly_the_readme_test_command",),
    # Every scenario runs (hijack_water_tank among them) in one drill call with --jobs 2;
    # --report's files are checked on the default drill.
    ".venv/bin/safety-gateway drill hijack_water_tank --report reports/hijack": (
        "tests/drill/test_drills.py::test_scenario_passes_its_scorecard",
        "tests/drill/test_drills.py::test_default_drill_with_report"),
    ".venv/bin/safety-gateway drill --all --jobs 2": (
        "tests/drill/test_drills.py::test_scenario_passes_its_scorecard",),
    # ctl reload against a real `safety-gateway run` with its communications process.
    ".venv/bin/safety-gateway ctl reload --via opc.tcp://127.0.0.1:4841/gateway/ --user admin "
    "--password-env SAFETY_GATEWAY_ADMIN_PASSWORD --dry-run": (
        "tests/runtime/test_reload_run.py::"
        "test_ctl_reload_against_a_running_gateway_keeps_every_session",),
    # The incident commands need an incident: tests/incident/test_cli.py makes one.
    f".venv/bin/safety-gateway incidents show ID --db {DRILL_DB}": (
        "tests/incident/test_cli.py::test_list_and_show",),
    f'.venv/bin/safety-gateway incidents note ID "inflow valve checked on site" --by alice '
    f"--db {DRILL_DB}": ("tests/incident/test_cli.py::test_note_ack_check_resolve",),
    f".venv/bin/safety-gateway incidents export ID --out reports/evidence --db {DRILL_DB}": (
        "tests/incident/test_cli.py::test_export",),
}


def test_every_readme_command_is_run_by_a_test() -> None:
    commands = readme_commands()
    assert len(commands) == len(set(commands)), "a command printed twice"
    known = [*CHEAP, *FIRST_RUN, *MAPPED]
    assert len(known) == len(set(known))
    unaccounted = [c for c in commands if c not in known]
    assert not unaccounted, f"README commands no test runs: {unaccounted}"
    stale = [c for c in known if c not in commands]
    assert not stale, f"listed here but no longer in the README: {stale}"
    # The first-run block is one block, in this order.
    start = commands.index(FIRST_RUN[0])
    assert commands[start:start + 5] == FIRST_RUN[:5]


def test_the_mapped_tests_exist() -> None:
    ids = sorted({i for ids in MAPPED.values() for i in ids})
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                             "-p", "no:cacheprovider", *ids], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    collected = result.stdout.splitlines()
    for test_id in ids:
        assert any(line == test_id or line.startswith(test_id + "[") for line in collected), (
            f"{test_id} is not collected")


def _argv(command: str) -> list[str]:
    """The command as this interpreter runs it: .venv/bin/safety-gateway is gateway.cli."""
    words = shlex.split(command)
    assert words[0] == ".venv/bin/safety-gateway", command
    return [sys.executable, "-m", "gateway.cli", *words[1:]]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A folder laid out like the repository for the README's relative paths: the example
    sites (their audit path ../reports lands here), and a fresh audit database where the
    default drill leaves its own."""
    from gateway.audit import AuditLog

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    db = tmp_path / DRILL_DB
    db.parent.mkdir(parents=True)
    with AuditLog(db, flush_interval_s=0.01) as audit:
        audit.append("decision", {"k": 0})
    (tmp_path / "keys").mkdir()
    (tmp_path / "registry").mkdir()
    return tmp_path


@pytest.mark.parametrize("command", list(CHEAP))
def test_cheap_readme_commands_run(command: str, workspace: Path, monkeypatch, capsys) -> None:
    # In this process (the same entry point as the installed script, without an interpreter
    # start per command), from the workspace, as the README's relative paths expect.
    from gateway.cli import main

    monkeypatch.chdir(workspace)
    monkeypatch.setenv("ALICE_PASSPHRASE", "correct horse battery staple")
    assert main(_argv(command)[3:]) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert CHEAP[command] in out + err
    assert "Traceback" not in err


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(condition: Callable[[], bool], timeout_s: float, what: str,
          *alive: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for proc in alive:
            if proc.poll() is not None:
                raise AssertionError(f"exited with {proc.returncode} while waiting: {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


def test_the_first_run_block_runs(workspace: Path) -> None:
    # The block as a user types it, in a copy of the repository's layout: two exports, check,
    # the simulator in the background, the gateway; then ctl status from a second terminal.
    # The block uses the example sites' fixed ports: someone else's server on one of them
    # would answer in place of ours.
    busy = [port for port in (5020, 4840, 1502, 4841) if _listening(port)]
    assert not busy, f"the example ports are taken on this machine: {busy}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen[str]] = []
    export, check, simulate, run, status = (FIRST_RUN[:2], FIRST_RUN[2], FIRST_RUN[3],
                                            FIRST_RUN[4], FIRST_RUN[5])
    for line in export:
        name, _, value = shlex.split(line)[1].partition("=")
        env[name] = value
    try:
        result = subprocess.run(_argv(check), cwd=workspace, env=env, capture_output=True,
                                text=True, timeout=120, check=False)
        assert result.returncode == 0 and ": ok: site 'water-tank'" in result.stdout, (
            result.stderr)
        assert simulate.endswith(" &")
        sim = subprocess.Popen(_argv(simulate.removesuffix(" &")), cwd=workspace, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(sim)
        _wait(lambda: _listening(5020), 60, "the simulator listens", sim)
        gw = subprocess.Popen(_argv(run), cwd=workspace, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        procs.append(gw)
        answer: list[subprocess.CompletedProcess[str]] = []

        def status_answers() -> bool:
            answer[:] = [subprocess.run(_argv(status), cwd=workspace, env=env,
                                        capture_output=True, text=True, timeout=60,
                                        check=False)]
            return answer[0].returncode == 0

        # Start-up, with the communications process's OPC UA server: seconds on a busy host.
        # Wait for its port first: each ctl attempt costs an interpreter start.
        _wait(lambda: _listening(4841), 120, "the northbound OPC UA server listens", gw)
        _wait(status_answers, 60, "ctl status answers", gw)
        assert "mode:" in answer[0].stdout and "latched:" in answer[0].stdout
        # The operator's password worked: the gateway did not disable the user.
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=60)
        assert gw.returncode == 0, err
        assert "is disabled" not in err
        assert (workspace / "reports" / "water_tank_audit.db").is_file()
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()

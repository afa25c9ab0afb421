"""Engine selection is explicit and never silent; a missing compiler is loud, not fatal,
unless the compiled engine is required."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.envelope import engine as eng

ROOT = Path(__file__).resolve().parents[2]


def test_default_is_compiled_when_installed():
    assert eng.select_engine({}) == "cython"


def test_python_can_be_forced():
    assert eng.select_engine({"SAFETY_GATEWAY_ENGINE": "python"}) == "python"


def test_unknown_engine_name_is_an_error():
    with pytest.raises(eng.EngineUnavailable, match="must be one of"):
        eng.select_engine({"SAFETY_GATEWAY_ENGINE": "fortran"})


def test_forcing_python_contradicts_requiring_compiled():
    with pytest.raises(eng.EngineUnavailable, match="contradicts"):
        eng.select_engine({"SAFETY_GATEWAY_ENGINE": "python",
                           "SAFETY_GATEWAY_REQUIRE_COMPILED": "1"})


def test_missing_compiled_engine(monkeypatch):
    monkeypatch.setattr(eng, "_COMPILED", None)
    monkeypatch.setattr(eng, "_IMPORT_ERROR", "no module")
    assert eng.select_engine({}) == "python"
    with pytest.raises(eng.EngineUnavailable, match="not installed"):
        eng.select_engine({"SAFETY_GATEWAY_REQUIRE_COMPILED": "1"})
    with pytest.raises(eng.EngineUnavailable, match="not installed"):
        eng.select_engine({"SAFETY_GATEWAY_ENGINE": "cython"})


def _run_cli_without_compiled(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Block the compiled module in a fresh interpreter, then run the real CLI.
    code = ("import sys; sys.modules['_fastcheck.envelope'] = None; "
            "from gateway.cli import main; sys.exit(main(['check', 'configs/water_tank.yaml']))")
    env = {**os.environ, **env_extra}
    env.pop("SAFETY_GATEWAY_ENGINE", None)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_start_refuses_without_compiled_engine_when_required():
    result = _run_cli_without_compiled({"SAFETY_GATEWAY_REQUIRE_COMPILED": "1"})
    assert result.returncode == 3, result.stderr
    assert "compiled envelope engine is not installed" in result.stderr
    assert "Traceback" not in result.stderr


def test_start_falls_back_loudly_without_compiled_engine():
    result = _run_cli_without_compiled({"SAFETY_GATEWAY_REQUIRE_COMPILED": ""})
    assert result.returncode == 0, result.stderr
    assert "engine python" in result.stdout
    assert "envelope engine: python (reference)" in result.stderr


def _build(tmp_path: Path, require: str) -> subprocess.CompletedProcess[str]:
    # `CC=false` is a compiler that always fails: the machine-without-a-compiler case.
    env = {**os.environ, "CC": "false", "SAFETY_GATEWAY_REQUIRE_COMPILED": require}
    return subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_build_without_compiler_warns_and_succeeds(tmp_path):
    result = _build(tmp_path, "")
    assert result.returncode == 0, result.stderr
    assert "was NOT built" in result.stderr
    assert not list((tmp_path / "lib").rglob("*.so"))


def test_build_without_compiler_fails_when_compiled_is_required(tmp_path):
    result = _build(tmp_path, "1")
    assert result.returncode != 0

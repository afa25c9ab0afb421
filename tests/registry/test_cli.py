"""``safety-gateway model …`` subcommands: output and exit codes (0 ok, 1 refused, 2 input)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest

from gateway.registry.cli import add_parser
from simulators.zoo.graphs import linear, serialize, sha256_hex

REPO = Path(__file__).resolve().parents[2]
PASSPHRASE_VAR = "SG_TEST_KEY_PASSPHRASE"


def run(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="safety-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    status: int = args.func(args)
    return status


def write_model(path: Path, gain: float = 0.5) -> Path:
    path.write_bytes(serialize(linear(np.array([[gain], [0.25]]), np.array([0.1]))))
    return path


@pytest.fixture
def env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Path]:
    """A registry with a trusted key, a model and a canary CSV."""
    monkeypatch.setenv(PASSPHRASE_VAR, "a long test passphrase")
    registry = tmp_path / "registry"
    key = tmp_path / "signer.pem"
    assert run("model", "keygen", key, "--trust", registry,
               "--passphrase-env", PASSPHRASE_VAR) == 0
    out = capsys.readouterr().out
    assert re.search(r"key id [0-9a-f]{16}", out)
    assert "trusted in" in out
    canary = tmp_path / "canary.csv"
    # Columns in another order than the model's: they are matched by name.
    canary.write_text("flow,level\n0,0\n1.5,2.5\n-3,4.9\n")
    return {
        "registry": registry,
        "key": key,
        "model": write_model(tmp_path / "model.onnx"),
        "canary": canary,
    }


def register(env: dict[str, Path], model: Path | None = None) -> int:
    return run(
        "model", "register", "--registry", env["registry"], "tank", model or env["model"],
        "--key", env["key"], "--passphrase-env", PASSPHRASE_VAR, "--canary", env["canary"],
        "--inputs", "level,flow", "--outputs", "valve", "--output-scale", "100",
    )


def signer(env: dict[str, Path], key: Path | None = None) -> tuple[str | Path, ...]:
    return ("--key", key or env["key"], "--passphrase-env", PASSPHRASE_VAR)


def test_register_list_approve_verify(env: dict[str, Path], capsys) -> None:
    assert register(env) == 0
    assert "registered tank v1" in capsys.readouterr().out

    assert run("model", "list", "--registry", env["registry"], "--json") == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert (entry["name"], entry["version"], entry["approved"]) == ("tank", 1, False)
    assert entry["sha256"] == sha256_hex(env["model"].read_bytes())

    assert run("model", "verify", "--registry", env["registry"], "tank", "1") == 1
    assert "tank v1 is not approved" in capsys.readouterr().err
    assert run("model", "verify", "--registry", env["registry"], "tank", "1",
               "--allow-unapproved") == 0

    assert run("model", "approve", "--registry", env["registry"], "tank", "1", "--by", "alice",
               *signer(env)) == 0
    assert "approved by alice" in capsys.readouterr().out
    assert run("model", "verify", "--registry", env["registry"], "tank") == 0
    assert "3 canary cases" in capsys.readouterr().out

    assert run("model", "list", "--registry", env["registry"], "tank") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "VERSION", "SHA256"]
    assert lines[1].split()[:2] == ["tank", "1"]
    assert "yes (alice)" in lines[1]


def test_canary_columns_are_matched_by_name(env: dict[str, Path], capsys) -> None:
    assert register(env) == 0
    canary_file = env["registry"] / "models" / "tank" / "1" / "canary.json"
    assert json.loads(canary_file.read_text())["inputs"][1] == [2.5, 1.5]


def test_register_from_a_site_file(env: dict[str, Path], tmp_path: Path, capsys) -> None:
    model = tmp_path / "site_model.onnx"
    model.write_bytes(serialize(linear(np.array([[2.0]]), np.array([1.0]))))
    site_text = (REPO / "configs" / "water_tank.yaml").read_text()
    start = site_text.index("controller:")
    end = site_text.index("fallback:")
    controller = (
        "controller:\n  kind: onnx\n  model: site_model.onnx\n"
        f"  sha256: {sha256_hex(model.read_bytes())}\n"
        "  inputs: [level]\n  outputs: [inflow_valve]\n  output_scale: [10.0]\n\n"
    )
    site = tmp_path / "site.yaml"
    site.write_text(site_text[:start] + controller + site_text[end:])
    canary = tmp_path / "rows.json"
    canary.write_text("[[1.0], [2.0]]")
    assert run(
        "model", "register", "--registry", env["registry"], "tank", model, "--key", env["key"],
        "--passphrase-env", PASSPHRASE_VAR, "--canary", canary, "--site", site, "--json",
    ) == 0
    version = json.loads(capsys.readouterr().out)
    assert version["version"] == 1
    canary_doc = json.loads(
        (env["registry"] / "models" / "tank" / "1" / "canary.json").read_text()
    )
    assert canary_doc["settings"]["inputs"] == ["level"]
    assert canary_doc["outputs"] == [[30.0], [50.0]]

    # A site without an onnx controller cannot supply the settings.
    assert run(
        "model", "register", "--registry", env["registry"], "tank", model, "--key", env["key"],
        "--passphrase-env", PASSPHRASE_VAR, "--canary", canary,
        "--site", REPO / "configs" / "water_tank.yaml",
    ) == 2
    assert "no onnx controller" in capsys.readouterr().err


def test_refusals_exit_1(env: dict[str, Path], capsys) -> None:
    assert register(env) == 0
    assert run("model", "approve", "--registry", env["registry"], "tank", "1", "--by", "a",
               *signer(env)) == 0
    model_file = env["registry"] / "models" / "tank" / "1" / "model.onnx"
    original = model_file.read_bytes()
    write_model(model_file, gain=0.6)
    capsys.readouterr()
    assert run("model", "verify", "--registry", env["registry"], "tank") == 1
    err = capsys.readouterr().err
    assert err.startswith("safety-gateway model verify: tank v1: model file")
    assert len(err.splitlines()) == 1
    model_file.write_bytes(original)

    assert run("model", "revoke", "--registry", env["registry"], "tank", "1", "--by", "bob",
               "--reason", "backdoor", *signer(env)) == 0
    assert "current version" in capsys.readouterr().out
    assert run("model", "verify", "--registry", env["registry"], "tank") == 1
    assert "revoked" in capsys.readouterr().err
    assert run("model", "approve", "--registry", env["registry"], "tank", "1", "--by", "a",
               *signer(env)) == 1
    assert run("model", "rollback", "--registry", env["registry"], "tank", "--by", "carol",
               *signer(env)) == 1
    assert "no approved, unrevoked version before" in capsys.readouterr().err


def test_rollback(env: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert register(env) == 0
    assert register(env, write_model(tmp_path / "v2.onnx", gain=0.7)) == 0
    for version in ("1", "2"):
        assert run("model", "approve", "--registry", env["registry"], "tank", version,
                   "--by", "alice", *signer(env)) == 0
    capsys.readouterr()
    assert run("model", "rollback", "--registry", env["registry"], "tank", "--by", "carol",
               *signer(env)) == 0
    assert "current version is now v1" in capsys.readouterr().out
    assert run("model", "list", "--registry", env["registry"], "--json") == 0
    current = [v["version"] for v in json.loads(capsys.readouterr().out) if v["current"]]
    assert current == [1]


def test_bad_input_exits_2(env: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert run("model", "list", "--registry", tmp_path / "nowhere") == 2
    assert "no registry folder" in capsys.readouterr().err
    assert register(env, tmp_path / "missing.onnx") == 2
    assert "model file not found" in capsys.readouterr().err
    assert register(env) == 0
    assert run("model", "approve", "--registry", env["registry"], "tank", "9", "--by", "a",
               *signer(env)) == 2
    assert "tank has no version 9" in capsys.readouterr().err
    assert run("model", "verify", "--registry", env["registry"], "pump") == 2
    assert run("model", "keygen", env["key"], "--passphrase-env", PASSPHRASE_VAR) == 2
    assert "already exists" in capsys.readouterr().err

    env["canary"].write_text("level,speed\n1,2\n")
    assert register(env) == 2
    assert "missing ['flow'], unknown ['speed']" in capsys.readouterr().err
    env["canary"].write_text("flow,level\n1,x\n")
    assert register(env) == 2
    assert "data row 1: not a number" in capsys.readouterr().err

    with pytest.raises(SystemExit) as caught:
        run("model", "approve", "--registry", env["registry"], "tank", "v1", "--by", "a",
            *signer(env))
    assert caught.value.code == 2


def test_diff_exit_codes(tmp_path: Path, capsys) -> None:
    a = write_model(tmp_path / "a.onnx")
    same = write_model(tmp_path / "same.onnx")
    b = write_model(tmp_path / "b.onnx", gain=0.75)
    assert run("model", "diff", a, same) == 0
    assert "identical" in capsys.readouterr().out
    assert run("model", "diff", a, b) == 1
    assert "layer0_weight FLOAT[2,1]: 1 of 2 elements changed, max |diff| 0.25" in (
        capsys.readouterr().out
    )
    assert run("model", "diff", a, b, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["initializers_changed"][0]["max_abs_diff"] == 0.25

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xff\xff")
    assert run("model", "diff", a, garbage) == 2
    assert f"{garbage}: B: not a parseable ONNX model" in capsys.readouterr().err
    assert run("model", "diff", tmp_path / "missing.onnx", a) == 2
    assert "file A not found" in capsys.readouterr().err

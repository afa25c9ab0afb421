"""After the default drill, an operator carries the incident through its phases with the
commands a new user has: list it, read it, export the evidence, verify the audit chain, find
the backdoor's input region, roll the model back, review and resolve the incident.

(Re-enabling the AI through SHADOW with an authorised AUTO after the clean period is the mode
machine's, tested in tests/supervisor/test_modes.py and test_supervisor.py.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from simulators.zoo import policies
from simulators.zoo.graphs import sha256_hex

ROOT = Path(__file__).resolve().parents[2]


def sg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                            text=True, timeout=timeout, check=False, cwd=ROOT)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _onnx_site(tmp: Path, model: Path) -> Path:
    """The example tank with its AI as the zoo's in-process ONNX policy."""
    iface = policies.INTERFACES["water_tank"]
    text = (ROOT / "configs" / "water_tank.yaml").read_text()
    controller = (
        "controller:\n  kind: onnx\n"
        f"  model: {model}\n  sha256: {sha256_hex(model.read_bytes())}\n"
        f"  inputs: [{', '.join(iface.inputs)}]\n  outputs: [{', '.join(iface.outputs)}]\n"
        f"  input_offset: {list(iface.input_offset)}\n  input_scale: {list(iface.input_scale)}\n"
        f"  output_offset: {list(iface.output_offset)}\n"
        f"  output_scale: {list(iface.output_scale)}\n\n")
    text = re.sub(r"^controller:\n(?:  .*\n|\n)*", controller, text, flags=re.M)
    path = tmp / "water_tank_onnx.yaml"
    path.write_text(text)
    return path


def test_operator_story_after_the_default_drill(default_report, tmp_path, monkeypatch):
    db = default_report / "backdoor_water_tank" / "audit.db"

    # Investigation: the incident is listed and readable.
    listed = sg("incidents", "list", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    (incident,) = json.loads(listed.stdout)
    ident = incident["id"]
    shown = sg("incidents", "show", ident, "--db", str(db))
    assert shown.returncode == 0 and "envelope.gross" in shown.stdout
    assert sg("incidents", "note", ident, "the demand band looks deliberate", "--by", "alice",
              "--db", str(db)).returncode == 0

    # Forensics: the chain verifies; the evidence bundle exports with its report.
    verified = sg("audit", "verify", str(db), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    out = tmp_path / "evidence"
    assert sg("incidents", "export", ident, "--out", str(out), "--db", str(db)).returncode == 0
    bundle = out / ident
    assert "envelope.gross" in (bundle / "report.md").read_text()

    # Find the backdoor: the suspect model against the known-good one, seeded with the
    # incident's own flight recording.
    zoo = tmp_path / "zoo"
    assert subprocess.run([sys.executable, "-m", "simulators.zoo", str(zoo)], check=False,
                          capture_output=True, cwd=ROOT).returncode == 0
    suspect, good = zoo / "water_tank" / "backdoor.onnx", zoo / "water_tank" / "nominal.onnx"
    site = _onnx_site(tmp_path, good)
    found = sg("localise", "--site", str(site), "--seeds", str(bundle / "flight_recorder.jsonl"),
               "--json", str(suspect), str(good))
    assert found.returncode == 1, found.stderr  # 1: the models diverge somewhere
    ranges = json.loads(found.stdout)["ranges"]
    tag, low, high = policies.BACKDOOR_TRIGGER["water_tank"]
    lo, hi = ranges[tag]
    assert abs(lo - low) < 1e-6 and abs(hi - high) < 1e-6  # the band, found from outside
    assert ranges["level"] == [0.0, 5.0]  # the other inputs do not matter to the trigger
    diff = sg("model", "diff", str(good), str(suspect))
    assert diff.returncode == 1 and "added" in diff.stdout

    # Recovery: the registry holds the known-good version 1 and the backdoored version 2;
    # rollback goes back to the last approved version before it.
    reg, key = tmp_path / "registry", tmp_path / "signer.pem"
    # The key is encrypted; its passphrase comes from the environment, never the command line.
    monkeypatch.setenv("SG_STORY_PASSPHRASE", "the operator's long passphrase")
    signed = ("--key", str(key), "--passphrase-env", "SG_STORY_PASSPHRASE")
    assert sg("model", "keygen", str(key), "--trust", str(reg),
              *signed[2:]).returncode in (0,)
    canary = tmp_path / "canary.json"
    canary.write_text(json.dumps(policies.canary_inputs("water_tank").tolist()))
    for model in (good, suspect):
        r = sg("model", "register", "--registry", str(reg), *signed, "--canary",
               str(canary), "--site", str(site), "tank", str(model))
        assert r.returncode == 0, r.stderr
    for version in ("1", "2"):
        assert sg("model", "approve", "--registry", str(reg), "tank", version, "--by",
                  "alice", *signed).returncode == 0
    assert sg("model", "revoke", "--registry", str(reg), "tank", "2", "--by", "alice",
              "--reason", ident, *signed).returncode == 0
    rolled = sg("model", "rollback", "--registry", str(reg), "tank", "--by", "alice", *signed)
    assert rolled.returncode == 0, rolled.stderr
    versions = json.loads(sg("model", "list", "--registry", str(reg), "--json").stdout)
    current = [v for v in versions if v["current"]]
    assert [v["version"] for v in current] == [1]
    assert sg("model", "verify", "--registry", str(reg), "tank", "2").returncode == 1

    # Resolving waits for the checklist and the review (exit 3, saying what is open); the
    # review is recorded with an action item; an administrator resolves with the rest of the
    # checklist open, saying why; the action item is closed after; the chain still verifies.
    summary = "backdoored model rolled back to version 1"
    refused = sg("incidents", "resolve", ident, "--by", "alice", "--summary", summary,
                 "--db", str(db))
    assert refused.returncode == 3 and "no post-incident review" in refused.stderr, \
        refused.stderr
    assert sg("incidents", "review", ident, "--root-cause", "a backdoored model version",
              "--action", "sign and approve models before they load", "bob", "2099-01-31",
              "--by", "alice", "--db", str(db)).returncode == 0
    assert sg("incidents", "resolve", ident, "--by", "alice", "--summary", summary,
              "--force", "--reason", "drill: checklist walked on paper", "--db",
              str(db)).returncode == 0
    assert sg("incidents", "action-done", ident, "1", "--by", "bob", "--db",
              str(db)).returncode == 0
    assert sg("incidents", "actions", "--db", str(db)).stdout.strip() == "no open action items"
    final = json.loads(sg("incidents", "show", ident, "--db", str(db), "--json").stdout)
    assert final["phase"] == "resolved" and final["resolution"]["forced"]
    assert [n["text"] for n in final["notes"]] == ["the demand band looks deliberate"]
    assert sg("audit", "verify", str(db)).returncode == 0

"""The forensic loop on the evidence of a real drill, as a new user runs it: replay and
localise with the project's own site file, a self-contained bundle, its verification, and
replay and localise straight from the bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.cli import main

SITE = Path(__file__).resolve().parents[2] / "configs" / "water_tank.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_replay_of_the_bundles_recording_on_the_shipped_site_shows_no_divergence(
        drill_bundle, capsys):
    """The window starts 30 s before the trip, with the AI in control (AUTO since 30 s): the
    warm start must begin in AUTO and reproduce every decision, not report 300 of them."""
    recording = drill_bundle.bundle / "flight_recorder.jsonl"
    code, out, err = run(capsys, "replay", "--site", str(SITE), "--recording", str(recording),
                         "--json")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["exact_start"] is False
    assert result["cycles"] > 550
    assert result["decision_divergent_cycles"] == 0
    assert result["proposal_divergent_cycles"] == 0
    assert not result["diverged"]


def test_replay_recomputes_with_a_model_on_the_shipped_site(drill_bundle, capsys, tmp_path):
    """The shipped site's controller is external; the recording's header says how the model
    was wired, so the model can be re-run on it (before: "has no onnx controller")."""
    from simulators.zoo import policies

    model = tmp_path / "backdoor.onnx"
    model.write_bytes(policies.build("water_tank", "backdoor"))  # the drill's model, rebuilt
    recording = drill_bundle.bundle / "flight_recorder.jsonl"
    code, out, err = run(capsys, "replay", "--site", str(SITE), "--recording", str(recording),
                         "--model", str(model), "--json")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["recomputed"] is True
    assert not result["diverged"], result
    assert any("controller as recorded" in n for n in result["notes"])


def test_localise_on_the_shipped_site_with_the_recording_finds_the_trigger(
        drill_bundle, capsys, tmp_path):
    from simulators.zoo import policies

    reference = tmp_path / "nominal.onnx"
    reference.write_bytes(policies.build("water_tank", "nominal"))
    suspect = tmp_path / "backdoor.onnx"
    suspect.write_bytes(policies.build("water_tank", "backdoor"))
    recording = drill_bundle.bundle / "flight_recorder.jsonl"
    code, out, err = run(capsys, "localise", "--site", str(SITE), str(suspect), str(reference),
                         "--seeds", str(recording), "--budget", "20000", "--json")
    assert code == 1, out + err  # found a region
    result = json.loads(out)
    _assert_demand_band(result)
    # Without a recording the external site cannot say what the model reads: a clear error.
    code, out, err = run(capsys, "localise", "--site", str(SITE), str(suspect), str(reference))
    assert code == 2
    assert "controller is external" in err and "--seeds" in err


def _assert_demand_band(result: dict) -> None:
    lo, hi = policies_band()
    regions = result["regions"]
    assert regions
    demand = regions[0]["ranges"]["demand"]
    assert lo - 1e-6 <= demand[0] <= demand[1] <= hi + 1e-6, demand


def policies_band() -> tuple[float, float]:
    from simulators.zoo import policies

    band = policies.BACKDOOR_TRIGGER["water_tank"]
    return float(band[1]), float(band[2])


def test_the_bundle_is_self_contained(drill_bundle):
    bundle = drill_bundle.bundle
    models = json.loads((bundle / "models.json").read_text())["model"]
    assert models["file"] == "models/backdoor.onnx"
    import hashlib

    data = (bundle / models["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == models["sha256"]
    config = json.loads((bundle / "config.json").read_text())
    assert (bundle / "site.yaml").read_bytes() == SITE.read_bytes()
    assert config["site"]["sha256"] == hashlib.sha256(SITE.read_bytes()).hexdigest()
    assert config["site"]["file"] == "site.yaml"
    assert config["playbook"]["file"] == "playbook.yaml"
    assert (hashlib.sha256((bundle / "playbook.yaml").read_bytes()).hexdigest()
            == config["playbook"]["sha256"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    # The chain proof: the excerpt runs without a gap to the signed head, which is copied.
    proof = json.loads((bundle / "chain_proof.json").read_text())
    assert proof["signed_head"]["file"] == "audit_head.json"
    lines = (bundle / "audit_excerpt.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["seq"] == proof["signed_head"]["seq"]
    assert (bundle / "audit_head.pub").is_file()


def test_verify_bundle_accepts_the_bundle_as_exported(drill_bundle, capsys):
    code, out, err = run(capsys, "incidents", "verify-bundle", str(drill_bundle.bundle))
    assert code == 0, out + err
    assert "VALID" in out
    assert "signature holds" in out
    assert "identical to the window in the chain" in out


@pytest.mark.parametrize(("name", "expected"), [
    ("models/backdoor.onnx", "models/backdoor.onnx"),
    ("flight_recorder.jsonl", "flight_recorder.jsonl"),
    ("site.yaml", "site.yaml"),
    ("chain_proof.json", "chain_proof.json"),
    ("incident.json", "incident.json"),
])
def test_verify_bundle_names_a_file_with_one_byte_changed(drill_bundle, capsys, tmp_path,
                                                          name, expected):
    copy = shutil.copytree(drill_bundle.bundle, tmp_path / "b")
    target = copy / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    code, out, _ = run(capsys, "incidents", "verify-bundle", str(copy))
    assert code == 1
    assert "TAMPERED" in out
    assert f"problem: {expected}: sha256 or size differs from the manifest" in out


def test_verify_bundle_names_the_record_when_the_manifest_is_rewritten_too(
        drill_bundle, capsys, tmp_path):
    """A forger who rewrites a file and its manifest entry is still caught by the chain: the
    copied model must hash to what the incident recorded, and an altered record breaks."""
    import hashlib

    copy = shutil.copytree(drill_bundle.bundle, tmp_path / "b")
    model = copy / "models" / "backdoor.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    excerpt = copy / "audit_excerpt.jsonl"
    lines = excerpt.read_text().splitlines()
    k = len(lines) // 2
    record = json.loads(lines[k])
    record["actor"] = record["actor"] + "x"
    lines[k] = json.dumps(record, sort_keys=True)
    excerpt.write_text("\n".join(lines) + "\n")
    manifest = json.loads((copy / "manifest.json").read_text())
    for path in (model, excerpt):
        data = path.read_bytes()
        manifest["files"][path.relative_to(copy).as_posix()] = {
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = run(capsys, "incidents", "verify-bundle", str(copy))
    assert code == 1
    assert f"record seq {record['seq']}" in out and "altered" in out
    assert "models/backdoor.onnx: its sha256 is not the one the incident recorded" in out


def test_verify_bundle_unusable_input(capsys, tmp_path):
    code, _, err = run(capsys, "incidents", "verify-bundle", str(tmp_path / "nope"))
    assert code == 2
    assert "no such folder" in err
    code, _, err = run(capsys, "incidents", "verify-bundle", str(tmp_path))
    assert code == 2
    assert "no manifest.json" in err


def test_replay_and_localise_run_straight_from_the_bundle(drill_bundle, capsys, tmp_path):
    from simulators.zoo import policies

    bundle = str(drill_bundle.bundle)
    code, out, err = run(capsys, "replay", "--bundle", bundle)
    assert code == 0, out + err
    assert "no divergence" in out
    code, out, err = run(capsys, "replay", "--bundle", bundle, "--rerun", "--json")
    assert code == 0, out + err
    assert json.loads(out)["recomputed"] is True
    reference = tmp_path / "nominal.onnx"
    reference.write_bytes(policies.build("water_tank", "nominal"))
    code, out, err = run(capsys, "localise", "--bundle", bundle, str(reference),
                         "--budget", "20000", "--json")
    assert code == 1, out + err
    _assert_demand_band(json.loads(out))
    code, _, err = run(capsys, "replay", "--bundle", str(tmp_path))
    assert code == 2
    assert "not an evidence bundle" in err
    # A bundle without its model (exported after the file was deleted): the suspect is given.
    copy = shutil.copytree(drill_bundle.bundle, tmp_path / "b")
    shutil.rmtree(copy / "models")
    models = json.loads((copy / "models.json").read_text())
    models["model"].update({"file": None, "missing": "deleted for the test"})
    (copy / "models.json").write_text(json.dumps(models))
    code, _, err = run(capsys, "localise", "--bundle", str(copy), str(reference))
    assert code == 2
    assert "holds no model file" in err
    suspect = tmp_path / "backdoor.onnx"
    suspect.write_bytes(policies.build("water_tank", "backdoor"))
    code, out, err = run(capsys, "localise", "--bundle", str(copy), str(suspect),
                         str(reference), "--budget", "20000", "--json")
    assert code == 1, out + err
    _assert_demand_band(json.loads(out))


def test_a_head_beyond_the_excerpt_is_left_out_not_claimed(drill_bundle, tmp_path, capsys):
    """With more records between the window and the signed head than an excerpt holds, the
    bundle cannot link the two: it says so, and the bundle still verifies."""
    from gateway.incident.export import export_incident

    bundle = export_incident(drill_bundle.audit_db, drill_bundle.incident, tmp_path,
                             max_records=50)
    assert not (bundle / "audit_head.json").exists()
    proof = json.loads((bundle / "chain_proof.json").read_text())
    assert proof["signed_head"] is None
    assert "not within the excerpt" in proof["signed_head_omitted"]
    code, out, _ = run(capsys, "incidents", "verify-bundle", str(bundle))
    assert code == 0, out
    assert "no signed head (the signed head (seq" in out


def test_a_bundle_naming_a_file_outside_itself_is_refused(drill_bundle, tmp_path, capsys):
    copy = shutil.copytree(drill_bundle.bundle, tmp_path / "b")
    config = json.loads((copy / "config.json").read_text())
    config["site"]["file"] = "../../elsewhere.yaml"
    (copy / "config.json").write_text(json.dumps(config))
    code, _, err = run(capsys, "replay", "--bundle", str(copy))
    assert code == 2
    assert "lies outside the bundle" in err

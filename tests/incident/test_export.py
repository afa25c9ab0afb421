"""Evidence bundles: every file, hashes that match, a chain proof, a readable report."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from gateway.audit.chain import Record
from gateway.audit.store import NotAuditDatabase
from gateway.forensics.recorder import read_jsonl
from gateway.incident.export import ExportError, export_incident
from gateway.incident.model import UnknownIncident
from gateway.incident.store import load_incident
from tests.incident.rig import CONFIG_SHA, MODEL_SHA, Rig, recorder_of

FILES = {"incident.json", "flight_recorder.csv", "flight_recorder.jsonl", "audit_excerpt.jsonl",
         "chain_proof.json", "models.json", "config.json", "report.md", "manifest.json",
         "process.png", "commands.png", "modes.png", "playbook.yaml", "audit_head.json",
         "audit_head.pub", "drafts"}
DRAFTS = {f"drafts/{a}.md" for a in ("regulator", "customers", "board", "internal")}


@pytest.fixture(scope="module")
def incident_db(tmp_path_factory):
    """An attack, its incident taken through every phase, and some decisions audited too."""
    tmp = tmp_path_factory.mktemp("incident")
    rig = Rig(tmp, after_s=2.0, window_s=4.0)
    rig.good(30)
    rig.to_auto()
    d = rig.hijack()
    assert rig.audit is not None
    rig.audit.append("decision", {"at_s": d.at_s, "mode": str(d.mode)})  # not the incident's
    rig.good(40)
    ident = rig.manager.incidents[0].id
    rig.manager.acknowledge(ident, "alice", "hmi-1")
    rig.manager.check(ident, "forensics", 0, "alice")
    rig.manager.resolve(ident, "alice", "hmi-1", "hijacked policy; rolled back")
    rig.close()
    return rig.db, ident


@pytest.fixture(scope="module")
def bundle(incident_db, tmp_path_factory):
    db, ident = incident_db
    out = tmp_path_factory.mktemp("out")
    path = export_incident(db, ident, out)
    assert path == out / ident
    return path


def test_export_writes_every_file_and_the_manifest_matches(incident_db, bundle):
    _, ident = incident_db
    assert {p.name for p in bundle.iterdir()} == FILES
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["incident"] == ident
    assert set(manifest["files"]) == FILES - {"manifest.json", "drafts"} | DRAFTS
    for name, entry in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    for png in ("process.png", "commands.png", "modes.png"):
        assert (bundle / png).read_bytes().startswith(b"\x89PNG")


def test_the_bundle_holds_the_incident_and_the_flight_recorder(incident_db, bundle):
    db, ident = incident_db
    incident = load_incident(db, ident)
    data = json.loads((bundle / "incident.json").read_text())
    assert data["incident"]["id"] == ident
    assert data["incident"]["phase"] == "resolved"
    assert data["incident"]["trigger"]["detector"] == "envelope.gross"
    recording = read_jsonl(bundle / "flight_recorder.jsonl")  # replayable
    assert len(recording.frames) == recorder_of(incident).frames == 61
    with (bundle / "flight_recorder.csv").open() as src:
        rows = list(csv.reader(src))
    assert len(rows) == 1 + 61
    assert rows[0][:4] == ["t_s", "seq", "mode", "source"]
    assert "applied.inflow_valve" in rows[0]
    # The rig's model file does not exist: the bundle says so instead of pointing at it.
    assert json.loads((bundle / "models.json").read_text())["model"] == {
        "path": "models/nominal.onnx", "sha256": MODEL_SHA, "file": None,
        "missing": "cannot read models/nominal.onnx: No such file or directory"}
    assert json.loads((bundle / "models.json").read_text())["recording_model_sha256"] == \
        MODEL_SHA
    config = json.loads((bundle / "config.json").read_text())
    assert config["config_sha256"] == CONFIG_SHA
    assert config["playbook"]["rule"] == "ai_behaviour"


def test_the_audit_excerpt_and_its_chain_proof(incident_db, bundle):
    _, ident = incident_db
    lines = (bundle / "audit_excerpt.jsonl").read_text().splitlines()
    records = [Record(**json.loads(line)) for line in lines]
    own = [r for r in records if r.kind == "incident"]
    assert own and all(json.loads(r.payload)["incident"] == ident for r in own)
    assert any(r.kind == "decision" for r in records)  # the window's other records
    assert all(r.computed_hash() == r.hash for r in records)
    proof = json.loads((bundle / "chain_proof.json").read_text())
    assert proof["ok"] is True
    assert proof["verify"]["ok"] is True
    assert proof["head_at_export"]["seq"] == proof["verify"]["last_seq"]
    excerpt = proof["excerpt"]
    assert excerpt["records"] == len(records)
    assert excerpt["hashes_recompute"] and excerpt["links_within_runs"]
    assert excerpt["runs_link_to_database"]
    assert [records[0].seq, records[-1].seq] == [excerpt["first_seq"], excerpt["last_seq"]]


def test_the_report_reads_like_a_post_incident_report(bundle):
    report = (bundle / "report.md").read_text()
    for heading in ("# Post-incident report", "## Summary", "## Trigger and evidence",
                    "## Phases", "## Containment", "## Timeline", "## Checklist",
                    "## Flight recorder", "## Evidence"):
        assert heading in report
    for needle in ("envelope.gross", "inflow_valve", "auto → manual", "hijacked policy",
                   "alice", "[x]", "[ ]", "![Process values](process.png)",
                   "![AI proposal vs applied command](commands.png)", "![Mode](modes.png)",
                   MODEL_SHA, CONFIG_SHA, "chain intact"):
        assert needle in report, needle


def test_an_existing_bundle_is_kept_unless_replaced(incident_db, tmp_path):
    db, ident = incident_db
    export_incident(db, ident, tmp_path)
    with pytest.raises(ExportError, match="exists"):
        export_incident(db, ident, tmp_path)
    bundle = export_incident(db, ident, tmp_path, overwrite=True)
    assert {p.name for p in bundle.iterdir()} == FILES
    assert [p.name for p in tmp_path.iterdir()] == [ident]  # no temporary folder left behind
    other = tmp_path / "x"
    (other / ident).mkdir(parents=True)
    (other / ident / "precious.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an evidence bundle"):
        export_incident(db, ident, other, overwrite=True)
    assert (other / ident / "precious.txt").read_text() == "mine"


def test_unknown_incidents_and_databases(incident_db, tmp_path):
    db, _ = incident_db
    with pytest.raises(UnknownIncident):
        export_incident(db, "INC-nope", tmp_path)
    with pytest.raises(NotAuditDatabase):
        export_incident(tmp_path / "missing.db", "INC-nope", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_incident_without_a_recorder_exports_without_plots(tmp_path):
    rig = Rig(tmp_path)
    rig.manager.recorder = None
    rig.to_auto()
    rig.hijack()
    ident = rig.manager.incidents[0].id
    rig.close()
    bundle = export_incident(rig.db, ident, tmp_path / "out")
    names = {p.name for p in bundle.iterdir()}
    assert names == FILES - {"flight_recorder.csv", "flight_recorder.jsonl", "process.png",
                             "commands.png", "modes.png"}
    assert "No flight-recorder window" in (bundle / "report.md").read_text()

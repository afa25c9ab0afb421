"""The evidence bundle carries the people's work: the communications drafts and approvals,
and a report with the cause, severity, reporting deadlines, the review and its action items,
the plant-safety statement and a forced resolution with its reason."""

from __future__ import annotations

import json

from gateway.incident.bundle import verify_bundle
from gateway.incident.comms import render_draft
from gateway.incident.export import export_incident
from tests.incident.rig import Rig


def test_the_bundle_carries_the_drafts_and_the_people_s_work(tmp_path):
    rig = Rig(tmp_path, after_s=1.0, window_s=2.0)
    rig.to_auto()
    rig.hijack()
    rig.good(15)
    m = rig.manager
    ident = m.incidents[0].id
    inc = m.get(ident)
    deadlines = inc.deadlines()
    assert len(deadlines) >= 2  # the hijack's severity starts the reporting clocks
    m.report_made(ident, deadlines[0].obligation, "carol", "cli", ref="CSIRT-4711")
    text = render_draft(m.get(ident), "regulator", now_wall_s=rig.wall())
    m.approve_draft(ident, "regulator", text, "carol", "cli")
    m.review(ident, "alice", "cli", "a backdoored policy update",
             factors=["no signature check on the AI host"], went_well=["failover in a cycle"],
             actions=[("sign every model", "mallory", "2099-01-31"),
                      ("page the shift lead directly", "oscar", "2000-01-01")])
    m.resolve(ident, "alice", "cli", "rolled back", enforce=True,
              force_reason="the plant owner closed it at the shift change")
    rig.close()

    bundle = export_incident(rig.db, ident, tmp_path / "out")
    drafts = {p.name for p in (bundle / "drafts").iterdir()}
    assert drafts == {"regulator.md", "customers.md", "board.md", "internal.md",
                      "regulator.approved-1.md"}
    assert (bundle / "drafts" / "regulator.approved-1.md").read_text().endswith(text)
    assert "Cause: ai_behaviour: " in (bundle / "drafts" / "internal.md").read_text()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {f"drafts/{name}" for name in drafts} <= set(manifest["files"])
    verdict = verify_bundle(bundle)
    assert verdict.ok, verdict

    report = (bundle / "report.md").read_text()
    assert "| Cause | **ai_behaviour**: the AI controller's commands or model |" in report
    assert f"| Severity | {m.get(ident).severity} |" in report
    for heading in ("## Severity", "## Reporting deadlines", "## Post-incident review",
                    "## Plant safety systems"):
        assert heading in report, heading
    assert f"| {deadlines[0].obligation} | " in report and "| met | by carol" in report
    assert "CSIRT-4711" in report
    assert f"| {deadlines[1].obligation} | " in report
    assert "**Root cause**: a backdoored policy update" in report
    assert "- no signature check on the AI host" in report
    assert "| 1 | sign every model | mallory | 2099-01-31 | open |" in report
    assert "| 2 | page the shift lead directly | oscar | 2000-01-01 | **overdue** |" in report
    assert m.get(ident).plant_safety and m.get(ident).plant_safety in report
    assert ("**Resolved by force**: the plant owner closed it at the shift change. "
            "Still open then:\n\n- checklist detection 0: ") in report
    assert "- `drafts/`" in report
    # A tampered draft is caught like any other file.
    (bundle / "drafts" / "board.md").write_text("all is well\n")
    assert not verify_bundle(bundle).ok

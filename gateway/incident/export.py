"""Evidence bundles: everything about one incident, in one folder, with a readable report.

:func:`export_incident` writes ``<out_dir>/<incident id>/``:

``incident.json``
    the incident as folded from the audit database;
``flight_recorder.jsonl`` / ``flight_recorder.csv``
    the frozen flight-recorder window, exactly as stored (JSONL, readable by
    ``safety-gateway replay``), and as CSV;
``audit_excerpt.jsonl``
    every audit record of the incident plus every record appended during its time window (the
    flight-recorder window and on to the incident's last record), and on to the signed head
    (below) when there is one, so that the records from the window to the head form one
    unbroken run; one JSON object per line with ``seq``, ``at_s``, ``kind``, ``actor``,
    ``source``, ``payload`` (the stored canonical text), ``prev_hash`` and ``hash``;
``chain_proof.json``
    the result of :func:`gateway.audit.verify` on the whole database and its head at export;
    for the excerpt: that every record's hash recomputes from its fields, that records with
    consecutive ``seq`` link (``prev_hash`` is the hash of the one before), and that the first
    record of each run links to the record before it in the database; the database's genesis
    hash (the first record's ``prev_hash``);
``audit_head.json`` / ``audit_head.pub``
    the database's signed head (``AUDIT.db.head.json``) and the public key beside it, copied
    when they exist: the excerpt's last record is the head's;
``models/<file>``, ``models.json``
    the model file the incident names, copied when it can still be read and its sha256 is the
    one the incident recorded; ``models.json`` gives its original path, sha256, the copy
    (``file``, relative to the bundle) or why there is none (``missing``), and the model the
    recording names;
``site.yaml``, ``playbook.yaml``, ``config.json``
    the site configuration as loaded (the file named by the gateway's latest ``config_load``
    audit record, copied when its sha256 is the incident's ``config_sha256``) and the playbook
    (likewise against the playbook's sha256); ``config.json`` gives their sources, hashes and
    copies (or why they are missing);
``drafts/<audience>.md``, ``drafts/<audience>.approved-<n>.md``
    the communications drafts (regulator, customers, board, internal) as they render at
    export, and every approved text with who approved it
    (:func:`gateway.incident.comms.bundle_drafts`);
``report.md`` and its plots (``process.png``, ``commands.png``, ``modes.png``)
    the post-incident report: with the incident's cause, severity, reporting deadlines and
    their state at export, the post-incident review and its action items, the plant-safety
    statement, and whether the resolution was forced (and why);
``manifest.json``
    the sha256 and size of every other file of the bundle.

:func:`gateway.incident.bundle.verify_bundle` checks a bundle against its manifest and its
chain proof; ``safety-gateway replay --bundle`` and ``localise --bundle`` run from one.

Reading never blocks a gateway writing the same database (read-only connections).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.audit.chain import Record
from gateway.audit.signed_head import (
    SignedHead,
    SignedHeadError,
    head_path,
    key_path,
    public_key_path,
)
from gateway.audit.store import open_read, read_records, verify
from gateway.forensics.recorder import read_jsonl, write_csv
from gateway.incident.causes import CAUSE_WORDS
from gateway.incident.comms import bundle_drafts
from gateway.incident.model import (
    ChecklistPhase,
    Incident,
    Phase,
    evidence_text,
    finite_json,
    utc_text,
)
from gateway.incident.store import incident_records, load_incident, load_window

if TYPE_CHECKING:
    import os

    from gateway.forensics.recorder import Frame, Recording

__all__ = ["ExportError", "export_incident", "incident_figures", "render_report", "save_figure"]

BUNDLE_FORMAT: Final = "safety-gateway-evidence-bundle"
BUNDLE_VERSION: Final = 1
MAX_EXCERPT_RECORDS: Final = 200_000
_MODES: Final = ("auto", "shadow", "manual", "safe_stop")


class ExportError(Exception):
    """The bundle cannot be written (the target exists, or the file system failed)."""


def export_incident(db: str | os.PathLike[str], incident_id: str,
                    out_dir: str | os.PathLike[str], *, overwrite: bool = False,
                    max_records: int = MAX_EXCERPT_RECORDS) -> Path:
    """Write the evidence bundle of ``incident_id`` into ``out_dir/<incident id>/`` and return
    that folder. The bundle is assembled in a temporary folder beside it and renamed into
    place, so a bundle is never half written. An existing bundle is replaced only with
    ``overwrite`` (and only if it is one: it holds a ``manifest.json``).

    Raises :class:`~gateway.incident.model.UnknownIncident`,
    :class:`~gateway.audit.store.NotAuditDatabase` for a missing or foreign database, and
    :class:`ExportError` for a target that exists or a file-system failure.
    """
    incident = load_incident(db, incident_id)
    out_root = Path(out_dir)
    target = out_root / incident.id
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if not overwrite:
            raise ExportError(f"{target} exists; choose another folder, or overwrite it")
        if not (target / "manifest.json").is_file():
            raise ExportError(f"{target} exists and is not an evidence bundle; not replacing it")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{incident.id}.", dir=out_root))
    except OSError as exc:
        raise ExportError(f"cannot write in {out_root}: {exc}") from None
    try:
        _write_bundle(db, incident, work, max_records)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    except OSError as exc:
        raise ExportError(f"cannot write the bundle in {out_root}: {exc}") from None
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------ writing


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(finite_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n",
                    encoding="utf-8")


def _write_bundle(db: str | os.PathLike[str], incident: Incident, work: Path,
                  max_records: int) -> None:
    exported_at = time.time()
    _dump(work / "incident.json", {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
                                   "exported_wall_s": exported_at,
                                   "incident": incident.to_json()})

    recording: Recording | None = None
    window = load_window(db, incident.id)
    if window is not None:
        jsonl = work / "flight_recorder.jsonl"
        jsonl.write_text(window.text(), encoding="utf-8")
        recording = read_jsonl(jsonl)
        write_csv(work / "flight_recorder.csv", recording.frames, recording.info)

    head_file = head_path(db)
    signed: SignedHead | None = None
    if head_file.is_file():
        try:
            signed = SignedHead.read(head_file)
        except SignedHeadError:
            signed = None  # chain_proof's verify reports the broken head
    records, truncated = _excerpt(db, incident, max_records,
                                  None if signed is None else signed.head.seq)
    with (work / "audit_excerpt.jsonl").open("w", encoding="utf-8") as out:
        for rec in records:
            out.write(json.dumps(rec.to_json(), sort_keys=True, allow_nan=False) + "\n")
    proof = _chain_proof(db, records, truncated)
    if signed is not None and not any(r.seq == signed.head.seq for r in records):
        # Too many records between the window and the head (or a head older than the
        # window): the excerpt does not reach it, so the bundle cannot prove a link to it.
        proof["signed_head_omitted"] = (
            f"the signed head (seq {signed.head.seq}) is not within the excerpt (seq "
            f"{records[0].seq if records else '-'} to {records[-1].seq if records else '-'})")
        signed = None
    if signed is not None:
        shutil.copyfile(head_file, work / "audit_head.json")
        public = public_key_path(key_path(db))
        if public.is_file():
            shutil.copyfile(public, work / "audit_head.pub")
        proof["signed_head"] = {"file": "audit_head.json", "seq": signed.head.seq,
                                "hash": signed.head.hash, "key_id": signed.key_id,
                                "public_key_file": ("audit_head.pub"
                                                    if (work / "audit_head.pub").is_file()
                                                    else None)}
    else:
        proof["signed_head"] = None
    _dump(work / "chain_proof.json", proof)

    model_entry: dict[str, Any] = {"path": incident.model.path,
                                   "sha256": incident.model.sha256}
    if incident.model.path:
        name = Path(incident.model.path).name or "model.onnx"
        model_entry.update(_copy_checked(Path(incident.model.path), incident.model.sha256,
                                         work / "models" / name, f"models/{name}"))
    else:
        model_entry.update({"file": None, "missing": "the incident names no model file"})
    _dump(work / "models.json", {
        "model": model_entry,
        "recording_model_sha256": (recording.info.model_sha256
                                   if recording is not None and recording.info is not None
                                   else None)})
    site_source = _site_source(db, incident)
    site_entry: dict[str, Any] = {"source": None if site_source is None else str(site_source),
                                  "sha256": incident.config_sha256}
    if site_source is None:
        site_entry.update({"file": None, "missing": "no config_load record names the site "
                                                    "file"})
    else:
        site_entry.update(_copy_checked(site_source, incident.config_sha256,
                                        work / "site.yaml", "site.yaml"))
    playbook_entry: dict[str, Any] = {"name": incident.playbook.name,
                                      "source": incident.playbook.source,
                                      "sha256": incident.playbook.sha256,
                                      "rule": incident.playbook.rule}
    if incident.playbook.source:
        playbook_entry.update(_copy_checked(Path(incident.playbook.source),
                                            incident.playbook.sha256,
                                            work / "playbook.yaml", "playbook.yaml"))
    else:
        playbook_entry.update({"file": None, "missing": "built-in playbook, no file"})
    _dump(work / "config.json", {"config_sha256": incident.config_sha256,
                                 "site": site_entry, "playbook": playbook_entry})

    drafts = bundle_drafts(incident, now_wall_s=exported_at)
    for name, text in drafts.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    plots = _plots(work, incident, recording) if recording is not None and \
        recording.frames else []
    report = render_report(incident, recording, proof, [p.name for p in plots],
                           exported_at, window_complete=window is not None and window.complete)
    (work / "report.md").write_text(report, encoding="utf-8")

    files = {}
    for path in sorted(p for p in work.rglob("*") if p.is_file()):
        data = path.read_bytes()
        files[path.relative_to(work).as_posix()] = {
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _dump(work / "manifest.json", {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
                                   "incident": incident.id, "exported_wall_s": exported_at,
                                   "database": str(Path(db).resolve()), "files": files})


def _copy_checked(source: Path, sha256: str | None, target: Path, name: str
                  ) -> dict[str, Any]:
    """Copy ``source`` to ``target`` if its bytes hash to ``sha256``: ``{"file": name}``, else
    ``{"file": None, "missing": why}`` (the bundle says what it could not keep)."""
    if sha256 is None:
        return {"file": None, "missing": "no sha256 recorded: the copy could not be checked"}
    try:
        data = source.read_bytes()
    except OSError as exc:
        return {"file": None, "missing": f"cannot read {source}: {exc.strerror or exc}"}
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        return {"file": None, "missing": f"{source} has changed since (sha256 {actual})"}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return {"file": name}


def _site_source(db: str | os.PathLike[str], incident: Incident) -> Path | None:
    """The site file the gateway loaded last before the incident opened (its latest
    ``config_load`` record), or None."""
    found: Path | None = None
    for rec in read_records(db, kinds=("config_load",)):
        if rec.at_s > incident.opened_wall_s:
            break
        try:
            payload = json.loads(rec.payload)
        except json.JSONDecodeError:
            continue
        if isinstance(payload, dict) and isinstance(payload.get("file"), str):
            found = Path(payload["file"])
    return found


def _excerpt(db: str | os.PathLike[str], incident: Incident, max_records: int,
             head_seq: int | None = None) -> tuple[list[Record], bool]:
    """The incident's records and those in its time window (wall clock), by seq; with
    ``head_seq`` (the signed head's), also every record from the window's first to the
    head, so that the excerpt links to the signed head without a gap."""
    own = incident_records(db, incident.id)
    first_wall = incident.opened_wall_s
    fr = incident.flight_recorder
    offset = (incident.opened_wall_s - incident.opened_at_s
              if incident.opened_at_s is not None and math.isfinite(incident.opened_at_s)
              else None)
    if fr is not None and offset is not None:
        first_wall = min(first_wall, fr.start_s + offset)
    last_wall = max((r.at_s for r in own), default=incident.opened_wall_s)
    if fr is not None and offset is not None:
        last_wall = max(last_wall, fr.end_s + offset)
    by_seq = {r.seq: r for r in own}
    conn, _ = open_read(db)
    truncated = False
    try:
        rows = conn.execute(
            "SELECT seq, at_s, kind, actor, source, payload, prev_hash, hash FROM records "
            "WHERE at_s >= ? AND at_s <= ? ORDER BY seq LIMIT ?",
            (first_wall, last_wall, max_records + 1)).fetchall()
    finally:
        conn.close()
    if len(rows) > max_records:
        rows = rows[:max_records]
        truncated = True
    for row in rows:
        by_seq.setdefault(row[0], Record(*row))
    if head_seq is not None and by_seq and not truncated:
        first = min(by_seq)
        if head_seq >= first and head_seq - first < max_records:
            for rec in read_records(db, first_seq=first, last_seq=head_seq):
                by_seq.setdefault(rec.seq, rec)
    return [by_seq[s] for s in sorted(by_seq)], truncated


def _chain_proof(db: str | os.PathLike[str], records: list[Record], truncated: bool
                 ) -> dict[str, Any]:
    result = verify(db)
    bad_hash = [r.seq for r in records if r.computed_hash() != r.hash]
    runs: list[list[int]] = []
    bad_link: list[int] = []
    prev: Record | None = None
    for rec in records:
        if prev is not None and rec.seq == prev.seq + 1:
            runs[-1][1] = rec.seq
            if rec.prev_hash != prev.hash:
                bad_link.append(rec.seq)
        else:
            runs.append([rec.seq, rec.seq])
        prev = rec
    # Each run's first record must link to the record before it in the database.
    unanchored: list[int] = []
    by_seq = {r.seq: r for r in records}
    firsts = {run[0]: by_seq[run[0]] for run in runs}
    conn, header = open_read(db)
    try:
        for seq, rec in firsts.items():
            if seq == 1:
                if rec.prev_hash != header.genesis:
                    unanchored.append(seq)
                continue
            row = conn.execute("SELECT hash FROM records WHERE seq = ?", (seq - 1,)).fetchone()
            if row is None or row[0] != rec.prev_hash:
                unanchored.append(seq)
    finally:
        conn.close()
    excerpt_ok = not bad_hash and not bad_link and not unanchored
    return {
        "format": "safety-gateway-chain-proof", "version": 1,
        "database": str(Path(db).resolve()), "db_id": result.db_id,
        "genesis": header.genesis,
        "verify": result.to_json(),
        "head_at_export": result.head().to_json(),
        "excerpt": {
            "file": "audit_excerpt.jsonl", "records": len(records),
            "first_seq": records[0].seq if records else None,
            "last_seq": records[-1].seq if records else None,
            "truncated": truncated, "runs": runs,
            "hashes_recompute": not bad_hash, "bad_hashes": bad_hash,
            "links_within_runs": not bad_link, "bad_links": bad_link,
            "runs_link_to_database": not unanchored, "unlinked_runs": unanchored,
            "ok": excerpt_ok,
        },
        "ok": result.ok and excerpt_ok,
    }


# ------------------------------------------------------------------------------------ report


def _rel(at_s: float | None, trigger_s: float | None) -> str:
    if at_s is None or trigger_s is None or not (math.isfinite(at_s)
                                                 and math.isfinite(trigger_s)):
        return ""
    return f"{at_s - trigger_s:+.2f} s"


def _t(at_s: float | None) -> str:
    return "-" if at_s is None else f"{at_s:.3f} s"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_report(incident: Incident, recording: Recording | None, proof: dict[str, Any],
                  plots: list[str], exported_wall_s: float, *,
                  window_complete: bool = False) -> str:
    """The post-incident report in Markdown."""
    t0 = incident.opened_at_s
    trig = incident.trigger
    md: list[str] = [f"# Post-incident report: {incident.id}", ""]
    resolved = incident.resolution
    md += ["## Summary", "",
           "| | |", "|---|---|",
           f"| Site | {_cell(incident.site)} |",
           f"| Phase | **{incident.phase}** |",
           f"| Opened | {utc_text(incident.opened_wall_s)} (supervisor time {_t(t0)}) |",
           f"| Trigger | `{_cell(trig.detector)}`: {_cell(trig.reason)} |",
           f"| Cause | **{incident.cause}**: {_cell(CAUSE_WORDS[incident.cause])} |",
           f"| Severity | {incident.severity or 'not classified'} |",
           f"| Mode at trip | {incident.mode_at_trip} → {incident.mode_after_trip} |",
           f"| Trips | {len(incident.trips)} |",
           f"| Model | `{_cell(incident.model.path or '-')}` sha256 "
           f"`{incident.model.sha256 or '-'}` |",
           f"| Config sha256 | `{incident.config_sha256 or '-'}` |",
           f"| Playbook | {_cell(incident.playbook.name)}, rule "
           f"`{_cell(incident.playbook.rule or '-')}` |",
           f"| Audit chain | {'intact' if proof.get('verify', {}).get('ok') else 'BROKEN'}: "
           f"{_cell(proof.get('verify', {}).get('message', ''))} |",
           f"| Exported | {utc_text(exported_wall_s)} |", ""]
    if resolved is not None:
        md += [f"**Resolution** by {_cell(resolved.who)} at {utc_text(resolved.wall_s)}: "
               f"{resolved.summary}", ""]
        if resolved.forced:
            md += [f"**Resolved by force**: {resolved.force_reason}. Still open then:", ""]
            md += [f"- {item}" for item in resolved.open] or ["- nothing listed"]
            md.append("")
    md += _people_sections(incident, exported_wall_s)

    md += ["## Trigger and evidence", "",
           f"Detector `{trig.detector}` tripped at supervisor time {_t(trig.at_s)} "
           f"(demanded mode: {trig.target or '-'}): {trig.reason}", ""]
    if trig.evidence:
        md += ["| Evidence | Value |", "|---|---|"]
        md += [f"| {_cell(k)} | {_cell(v)} |" for k, v in trig.evidence]
        md.append("")
    if len(incident.trips) > 1:
        md += ["Further trips joined this incident:", ""]
        md += [f"- {_rel(t.at_s, t0)} `{t.detector}`: {t.reason}"
               + (f" ({evidence_text(t.evidence)})" if t.evidence else "")
               for t in incident.trips[1:]]
        md.append("")

    md += ["## Phases", "", "| Phase | Reached (UTC) | From trip | By | Why |",
           "|---|---|---|---|---|"]
    for phase in Phase:
        change = incident.phase_change(phase)
        if change is None:
            md.append(f"| {phase} | - | | | |")
        else:
            md.append(f"| {phase} | {utc_text(change.wall_s)} | {_rel(change.at_s, t0)} | "
                      f"{_cell(change.by or 'gateway')} | {_cell(change.reason)} |")
    md.append("")

    md += ["## Containment", ""]
    if incident.containment:
        md += ["| Step | Status | From trip | Detail |", "|---|---|---|---|"]
        for c in incident.containment:
            step = c.step if c.factor is None else f"{c.step} x{c.factor:g}"
            md.append(f"| {step} | {c.status} | {_rel(c.at_s, t0)} | {_cell(c.detail)} |")
    else:
        md.append("No containment step recorded.")
    md.append("")

    md += ["## Notifications", ""]
    if incident.notifications:
        md += ["| Hook | Kind | Target | Outcome | Detail |", "|---|---|---|---|---|"]
        md += [f"| {n.hook} | {n.kind} | {_cell(n.target)} | "
               f"{'sent' if n.ok else '**failed**'} | {_cell(n.detail)} |"
               for n in incident.notifications]
    elif incident.notifications_planned:
        md.append("Planned, no outcome recorded: " + ", ".join(incident.notifications_planned))
    else:
        md.append("None.")
    md.append("")

    md += ["## Timeline", "", "| UTC | From trip | What | Who |", "|---|---|---|---|"]
    md += [f"| {utc_text(e.wall_s)} | {_rel(e.at_s, t0)} | {_cell(e.text)} | "
           f"{_cell(e.who or '')} |" for e in incident.timeline]
    md.append("")

    md += ["## Checklist", ""]
    for step in ChecklistPhase:
        items = incident.checklist_of(step)
        md += [f"### {step.value.capitalize()}", ""]
        if not items:
            md += ["(no items)", ""]
            continue
        for k, item in enumerate(items):
            mark = "x" if item.done else " "
            done = f" (done by {item.by}, {utc_text(item.wall_s)})" if item.done else ""
            md.append(f"- [{mark}] {k}. {item.text}{done}")
        md.append("")

    md += ["## Notes", ""]
    md += [f"- {utc_text(n.wall_s)} **{_cell(n.who)}**"
           + (f" ({_cell(n.source)})" if n.source else "")
           + (" acknowledged" if n.acknowledge else "") + (f": {n.text}" if n.text else "")
           for n in incident.notes] or ["None."]
    md.append("")

    md += ["## Flight recorder", ""]
    fr = incident.flight_recorder
    if recording is None or fr is None:
        md.append("No flight-recorder window stored for this incident.")
    else:
        frames = recording.frames
        md.append(f"{len(frames)} cycles from {_rel(fr.start_s, fr.trigger_s)} to "
                  f"{_rel(fr.end_s, fr.trigger_s)} around the trip "
                  f"({'complete' if window_complete else 'incomplete'}); files "
                  "`flight_recorder.jsonl` (replay with `safety-gateway replay`) and "
                  "`flight_recorder.csv`.")
        md.append("")
        for name, title in (("process.png", "Process values"),
                            ("commands.png", "AI proposal vs applied command"),
                            ("modes.png", "Mode")):
            if name in plots:
                md += [f"### {title}", "", f"![{title}]({name})", ""]
    md.append("")

    excerpt = proof.get("excerpt", {})
    md += ["## Evidence", "",
           f"- `audit_excerpt.jsonl`: {excerpt.get('records', 0)} records"
           + (" (truncated)" if excerpt.get("truncated") else "")
           + f", seq {excerpt.get('first_seq')} to {excerpt.get('last_seq')}; hashes "
           + ("recompute" if excerpt.get("hashes_recompute") else "DO NOT recompute")
           + ", links " + ("hold" if excerpt.get("links_within_runs")
                           and excerpt.get("runs_link_to_database") else "BROKEN"),
           f"- `chain_proof.json`: whole chain {proof.get('verify', {}).get('message', '')}; "
           f"head at export seq {proof.get('head_at_export', {}).get('seq')} "
           f"`{proof.get('head_at_export', {}).get('hash', '')}`",
           "- `models.json`, `config.json`: model, site configuration and playbook, with their "
           "hashes; copies in `models/`, `site.yaml`, `playbook.yaml` (`safety-gateway replay "
           "--bundle` and `localise --bundle` run from them)",
           "- `audit_head.json`: the audit chain's signed head, when the database had one",
           "- `drafts/`: the communications drafts as rendered at export, and every approved "
           "text",
           "- `manifest.json`: sha256 of every file in this bundle (check with "
           "`safety-gateway incidents verify-bundle DIR`)", ""]
    return "\n".join(md)


def _people_sections(incident: Incident, now_wall_s: float) -> list[str]:
    """Severity, reporting deadlines (their state at ``now_wall_s``), the review with its
    action items, and the plant-safety statement, as report sections."""
    md: list[str] = ["## Severity", ""]
    if incident.severity_changes:
        md += ["| Level | Since (UTC) | Why | By |", "|---|---|---|---|"]
        md += [f"| {c.level} | {utc_text(c.wall_s)} | {_cell(c.reason)} | "
               f"{_cell(c.by or 'gateway')} |" for c in incident.severity_changes]
    else:
        md.append("Not classified.")
    md.append("")
    md += ["## Reporting deadlines", ""]
    deadlines = incident.deadlines()
    if deadlines:
        md += ["| Obligation | Due (UTC) | State at export | Report |", "|---|---|---|---|"]
        for d in deadlines:
            made = ("-" if d.report is None else
                    f"by {_cell(d.report.who)} at {utc_text(d.report.wall_s)}: "
                    f"{_cell(d.report.ref)}")
            md.append(f"| {_cell(d.obligation)} | {utc_text(d.due_wall_s)} | "
                      f"{d.status(now_wall_s)} | {made} |")
    else:
        md.append("No reporting clock runs for this incident.")
    md.append("")
    md += ["## Post-incident review", ""]
    review = incident.review
    if review is None:
        md.append("No review recorded.")
    else:
        md += [f"By {_cell(review.who)} at {utc_text(review.wall_s)} (revision "
               f"{review.revisions}).", "", f"**Root cause**: {review.root_cause}", ""]
        for title, items in (("Contributing factors", review.factors),
                             ("Went well", review.went_well),
                             ("Went badly", review.went_badly)):
            if items:
                md += [f"{title}:", "", *(f"- {item}" for item in items), ""]
    if incident.actions:
        today = datetime.fromtimestamp(now_wall_s, UTC).date()
        if md[-1]:
            md.append("")
        md += ["| # | Action | Owner | Due | State |", "|---|---|---|---|---|"]
        for a in incident.actions:
            state = (f"done by {_cell(a.done_by)} at {utc_text(a.done_wall_s or 0.0)}"
                     + (f": {_cell(a.note)}" if a.note else "") if a.done else
                     "**overdue**" if a.overdue(today) else "open")
            md.append(f"| {a.number} | {_cell(a.text)} | {_cell(a.owner)} | "
                      f"{a.due.isoformat()} | {state} |")
    md.append("")
    md += ["## Plant safety systems", "",
           incident.plant_safety or "Not stated in the playbook.", ""]
    return md


def _plots(work: Path, incident: Incident, recording: Recording) -> list[Path]:
    units = _units(work / "site.yaml")
    return [save_figure(fig, work / name)
            for name, fig in incident_figures(incident, recording, units)]


def _units(site_file: Path) -> dict[str, str]:
    """Each tag's unit from the bundle's copy of the site file ({} when it has none or it
    does not load: the plots then name the variables without units)."""
    if not site_file.is_file():
        return {}
    from gateway.config import ConfigError, load_config

    try:
        site = load_config(site_file)
    except (ConfigError, OSError):
        return {}
    return {t.name: t.unit for t in site.tags if t.unit}


def _label(name: str, units: dict[str, str]) -> str:
    unit = units.get(name)
    return f"{name} [{unit}]" if unit else name


# Distinct styles so that neither curve hides the other where they coincide: the applied
# command solid and wide, the AI's proposal dashed and thin on top with sparse markers.
_APPLIED_STYLE: Final = {"color": "tab:blue", "linestyle": "-", "linewidth": 2.2, "alpha": 0.8,
                         "zorder": 2}
_PROPOSAL_STYLE: Final = {"color": "tab:orange", "linestyle": "--", "linewidth": 1.1,
                          "marker": "x", "markersize": 4, "zorder": 3}
_TIME_LABEL: Final = "time from the trip [s] (supervisor time)"


def incident_figures(incident: Incident, recording: Recording,
                     units: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    """The report's figures as ``(file name, matplotlib figure)``: process values, AI proposal
    against applied command (every actuator), and the mode, over the flight-recorder window
    with the trips marked. ``units`` maps tag names to their units (axis labels read
    ``name [unit]``). Legends sit outside the axes, right of them, so they cover no curve.
    The caller saves or closes the figures (:func:`save_figure`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    units = units or {}
    frames: tuple[Frame, ...] = recording.frames
    info = recording.info
    t0 = incident.flight_recorder.trigger_s if incident.flight_recorder else frames[0].now_s
    t = [f.now_s - t0 for f in frames]
    n_s = len(frames[0].snapshot.sensors)
    n_a = len(frames[0].decision.command)
    sensors = (list(info.sensor_names) if info and len(info.sensor_names) == n_s
               else [f"sensor{i}" for i in range(n_s)])
    actuators = (list(info.actuator_names) if info and len(info.actuator_names) == n_a
                 else [f"actuator{i}" for i in range(n_a)])
    trips = [tr.at_s - t0 for tr in incident.trips
             if tr.at_s is not None and t[0] <= tr.at_s - t0 <= t[-1]]
    every = max(1, len(frames) // 40)  # about 40 markers per curve, whatever the window

    def marks(ax: Any) -> None:
        for k, x in enumerate(trips):
            ax.axvline(x, color="tab:red", linestyle=":", linewidth=1.4, zorder=4,
                       label="trip" if k == 0 else None)

    def legend(ax: Any) -> None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  fontsize=8, frameon=False)

    figures: list[tuple[str, Any]] = []
    fig, axes = plt.subplots(n_s, 1, figsize=(9, 2.2 * n_s), squeeze=False, sharex=True)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(t, [float(f.snapshot.sensors[i]) for f in frames], color="tab:blue",
                linewidth=1.2, label=sensors[i])
        ax.set_ylabel(_label(sensors[i], units), fontsize=9)
        marks(ax)
        legend(ax)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(_TIME_LABEL)
    fig.suptitle(f"{incident.id}: process values")
    figures.append(("process.png", fig))

    fig, axes = plt.subplots(n_a, 1, figsize=(9, 2.2 * n_a), squeeze=False, sharex=True)
    for i, ax in enumerate(axes[:, 0]):
        proposed = []
        for f in frames:
            values = f.proposal.values if f.proposal is not None else None
            ok = isinstance(values, np.ndarray) and values.shape == (n_a,)
            proposed.append(float(values[i]) if ok and values is not None else math.nan)
        ax.plot(t, [float(f.decision.command[i]) for f in frames], label="applied",
                **_APPLIED_STYLE)
        ax.plot(t, proposed, label="AI proposal", markevery=every, **_PROPOSAL_STYLE)
        ax.set_ylabel(_label(actuators[i], units), fontsize=9)
        marks(ax)
        legend(ax)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(_TIME_LABEL)
    fig.suptitle(f"{incident.id}: AI proposal vs applied command")
    figures.append(("commands.png", fig))

    fig, ax = plt.subplots(figsize=(9, 2.2))
    ax.step(t, [_MODES.index(str(f.decision.mode)) if str(f.decision.mode) in _MODES else -1
                for f in frames], where="post", color="tab:purple", label="mode")
    ax.set_yticks(range(len(_MODES)), [m.upper() for m in _MODES])
    ax.set_ylim(-0.5, len(_MODES) - 0.5)
    ax.set_ylabel("mode", fontsize=9)
    marks(ax)
    ax.set_xlabel(_TIME_LABEL)
    legend(ax)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{incident.id}: gateway mode")
    figures.append(("modes.png", fig))
    return figures


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG (90 dpi) and close a matplotlib figure (drill reports too)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

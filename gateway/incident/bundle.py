"""Evidence bundles, read back: what is in one, and whether it is what was exported.

:func:`open_bundle` finds the files forensics needs (the site file as loaded, the flight
recording, the model) so that ``safety-gateway replay --bundle`` and ``localise --bundle`` run
from a bundle alone. :func:`verify_bundle` checks one, without the audit database:

1. **the manifest**: every file it lists is there with its sha256 and size, and no file is
   there that it does not list;
2. **the chain proof**: every record of ``audit_excerpt.jsonl`` hashes to its ``hash``, each
   links to the one before it (``prev_hash``), the first record of the database links to its
   genesis hash; with a signed head (``audit_head.json``), its signature holds and its record
   is the excerpt's (same seq, same hash);
3. **the evidence against the chain**: the incident's records in the excerpt are the chain's
   word on what happened, so the flight recording must be the window stored in them byte for
   byte, and the copied model, site file and playbook must hash to the sha256 the incident
   recorded.

A manifest alone proves nothing against someone who rewrites a file and the manifest
together; the chain does, up to its signed head, whose key should be compared with the
gateway's own (``key_id`` is printed). Records after the head are not covered.

:func:`add_verify_parser` adds ``verify-bundle`` to ``safety-gateway incidents``: exit 0 valid,
1 tampered (the file or record is named), 2 unusable input (no bundle there).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import argparse

    from gateway.audit.chain import Record

__all__ = ["Bundle", "BundleError", "BundleVerdict", "add_verify_parser", "open_bundle",
           "verify_bundle"]

EXIT_OK: Final = 0
EXIT_TAMPERED: Final = 1
EXIT_INPUT: Final = 2


class BundleError(Exception):
    """Not a usable evidence bundle (no folder, no manifest, a manifest that is not one)."""


@dataclass(frozen=True)
class Bundle:
    """An evidence bundle's forensic files (None where the bundle has none)."""

    path: Path
    incident: str
    site: Path | None
    recording: Path | None
    model: Path | None
    model_sha256: str | None
    missing: tuple[str, ...] = ()


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: cannot read: {exc}") from None


def _manifest(path: Path) -> dict[str, Any]:
    from gateway.incident.export import BUNDLE_FORMAT

    if not path.is_dir():
        raise BundleError(f"{path}: no such folder")
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise BundleError(f"{path}: not an evidence bundle (no manifest.json)")
    manifest = _json(manifest_file)
    if (not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT
            or not isinstance(manifest.get("files"), dict)):
        raise BundleError(f"{manifest_file}: not an evidence bundle's manifest")
    return manifest


def open_bundle(path: str | Path) -> Bundle:
    """The forensic files of the bundle at ``path``. Raises :class:`BundleError` when it is
    not a bundle. Files the bundle could not keep are listed in ``missing`` with why."""
    root = Path(path)
    manifest = _manifest(root)
    missing: list[str] = []

    def kept(entry: Any, what: str) -> Path | None:
        name = entry.get("file") if isinstance(entry, dict) else None
        if isinstance(name, str):
            target = root / name
            if not target.resolve().is_relative_to(root.resolve()):
                raise BundleError(f"{root}: {what} {name!r} lies outside the bundle")
            return target
        why = entry.get("missing") if isinstance(entry, dict) else None
        missing.append(f"{what}: {why or 'not in the bundle'}")
        return None

    config = _json(root / "config.json") if (root / "config.json").is_file() else {}
    models = _json(root / "models.json") if (root / "models.json").is_file() else {}
    model_entry = models.get("model") if isinstance(models, dict) else None
    recording = root / "flight_recorder.jsonl"
    if not recording.is_file():
        missing.append("flight recording: the incident has none stored")
    return Bundle(
        path=root, incident=str(manifest.get("incident", "")),
        site=kept(config.get("site") if isinstance(config, dict) else None, "site file"),
        recording=recording if recording.is_file() else None,
        model=kept(model_entry, "model"),
        model_sha256=(model_entry.get("sha256") if isinstance(model_entry, dict) else None),
        missing=tuple(missing))


# -------------------------------------------------------------------------------- verifying


@dataclass
class BundleVerdict:
    """What :func:`verify_bundle` found: ``problems`` (tampering or inconsistency, each naming
    the file or record), ``notes`` (what holds, and what the bundle lacks)."""

    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"bundle": str(self.path), "ok": self.ok, "problems": self.problems,
                "notes": self.notes}


def verify_bundle(path: str | Path) -> BundleVerdict:
    """Check the bundle at ``path`` (see the module docstring). Raises :class:`BundleError`
    when it is not a bundle at all; every other finding is in the verdict."""
    root = Path(path)
    manifest = _manifest(root)
    verdict = BundleVerdict(root)
    _check_manifest(root, manifest["files"], verdict)
    try:
        records = _check_chain(root, verdict)
        if records is not None:
            _check_evidence(root, records, verdict)
    except BundleError as exc:  # a file of the bundle no longer reads: tampered, not unusable
        verdict.problems.append(str(exc))
    return verdict


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_manifest(root: Path, files: dict[str, Any], verdict: BundleVerdict) -> None:
    for name, entry in sorted(files.items()):
        target = root / name
        if not isinstance(entry, dict) or not target.resolve().is_relative_to(root.resolve()):
            verdict.problems.append(f"manifest.json: entry {name!r} is malformed")
            continue
        if not target.is_file():
            verdict.problems.append(f"{name}: listed in the manifest, missing from the bundle")
            continue
        data = target.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.get("sha256") or \
                len(data) != entry.get("bytes"):
            verdict.problems.append(f"{name}: sha256 or size differs from the manifest "
                                    f"(changed since export)")
    listed = set(files) | {"manifest.json"}
    for extra in sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()):
        if extra not in listed:
            verdict.problems.append(f"{extra}: not in the manifest (added since export)")
    if not verdict.problems:
        verdict.notes.append(f"manifest: {len(files)} files, every sha256 matches")


def _check_chain(root: Path, verdict: BundleVerdict) -> list[Record] | None:
    from gateway.audit.chain import Record

    excerpt = root / "audit_excerpt.jsonl"
    proof_file = root / "chain_proof.json"
    if not excerpt.is_file() or not proof_file.is_file():
        verdict.problems.append("audit_excerpt.jsonl / chain_proof.json: missing, the bundle "
                                "has no chain proof")
        return None
    proof = _json(proof_file)
    records: list[Record] = []
    for number, line in enumerate(excerpt.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            records.append(Record(**json.loads(line)))
        except (TypeError, ValueError) as exc:
            verdict.problems.append(f"audit_excerpt.jsonl:{number}: not an audit record "
                                    f"({exc})")
            return None
    broken = len(verdict.problems)
    prev: Record | None = None
    for rec in records:
        if rec.computed_hash() != rec.hash:
            verdict.problems.append(f"audit_excerpt.jsonl: record seq {rec.seq} ({rec.kind}) "
                                    f"does not hash to its recorded hash (altered)")
        if prev is not None and rec.seq == prev.seq + 1 and rec.prev_hash != prev.hash:
            verdict.problems.append(f"audit_excerpt.jsonl: record seq {rec.seq} does not link "
                                    f"to seq {prev.seq} (chain broken)")
        if prev is not None and rec.seq <= prev.seq:
            verdict.problems.append(f"audit_excerpt.jsonl: record seq {rec.seq} out of order")
        prev = rec
    genesis = proof.get("genesis") if isinstance(proof, dict) else None
    if records and records[0].seq == 1 and genesis is not None \
            and records[0].prev_hash != genesis:
        verdict.problems.append("audit_excerpt.jsonl: record seq 1 does not start from the "
                                "database's genesis hash")
    if len(verdict.problems) == broken:
        verdict.notes.append(f"audit excerpt: {len(records)} records, seq "
                             f"{records[0].seq if records else '-'} to "
                             f"{records[-1].seq if records else '-'}, every hash and link holds")
    _check_head(root, proof, records, verdict)
    return records


def _check_head(root: Path, proof: Any, records: list[Record], verdict: BundleVerdict) -> None:
    from gateway.audit.signed_head import SignedHead, SignedHeadError, read_public_key

    head_file = root / "audit_head.json"
    if not head_file.is_file():
        expected = isinstance(proof, dict) and proof.get("signed_head")
        if expected:
            verdict.problems.append("audit_head.json: the chain proof names a signed head, "
                                    "the bundle has none (removed)")
        else:
            why = proof.get("signed_head_omitted") if isinstance(proof, dict) else None
            verdict.notes.append("no signed head" + (f" ({why})" if why else "") + ": the "
                                 "excerpt's records are proved to link to each other only, "
                                 "not to a head kept elsewhere")
        return
    pinned: bytes | None = None
    pub = root / "audit_head.pub"
    try:
        if pub.is_file():
            pinned = read_public_key(pub)
        signed = SignedHead.read(head_file, pinned)
    except (SignedHeadError, OSError) as exc:
        verdict.problems.append(f"audit_head.json: {exc}")
        return
    head = signed.head
    if isinstance(proof, dict) and proof.get("db_id") and head.db_id \
            and head.db_id != proof.get("db_id"):
        verdict.problems.append(f"audit_head.json: the head is of database {head.db_id}, the "
                                f"excerpt of {proof.get('db_id')}")
        return
    by_seq = {r.seq: r for r in records}
    rec = by_seq.get(head.seq)
    if rec is None:
        if records and head.seq < records[0].seq:
            verdict.notes.append(f"signed head seq {head.seq} is older than the excerpt "
                                 f"(from seq {records[0].seq}): the excerpt is not covered")
        else:
            verdict.problems.append(f"audit_excerpt.jsonl: no record seq {head.seq}, the "
                                    f"signed head's (the excerpt was cut short)")
        return
    if rec.hash != head.hash:
        verdict.problems.append(f"audit_excerpt.jsonl: record seq {head.seq}'s hash is not "
                                f"the signed head's (records replaced)")
        return
    run_start = head.seq
    while run_start - 1 in by_seq:
        run_start -= 1
    verdict.notes.append(f"signed head: seq {head.seq}, signature holds (key {signed.key_id}:"
                         f" compare it with the gateway's own audit key); records seq "
                         f"{run_start} to {head.seq} link to it")


def _check_evidence(root: Path, records: list[Record], verdict: BundleVerdict) -> None:
    """The bundle's evidence files against what the chain recorded."""
    incident_file = root / "incident.json"
    if not incident_file.is_file():
        verdict.problems.append("incident.json: missing")
        return
    data = _json(incident_file)
    ident = data.get("incident", {}).get("id") if isinstance(data, dict) else None
    opened: dict[str, Any] | None = None
    window: list[dict[str, Any]] = []
    for rec in records:
        if rec.kind != "incident":
            continue
        try:
            payload = json.loads(rec.payload)
        except json.JSONDecodeError:
            continue
        if not isinstance(payload, dict) or payload.get("incident") != ident:
            continue
        if payload.get("action") == "open" and opened is None:
            opened = payload
        elif payload.get("action") == "flight_recorder":
            window.append(payload)
    if opened is None:
        verdict.problems.append(f"audit_excerpt.jsonl: no record opens incident {ident!r} "
                                f"(incident.json names another incident, or records removed)")
        return
    recording = root / "flight_recorder.jsonl"
    if window or recording.is_file():
        stored = _window_text(window)
        if not recording.is_file():
            verdict.problems.append("flight_recorder.jsonl: missing, the chain stores a "
                                    "window for this incident")
        elif stored is None or recording.read_text(encoding="utf-8") != stored:
            verdict.problems.append("flight_recorder.jsonl: not the window stored in the "
                                    "audit chain (altered)")
        else:
            verdict.notes.append("flight recording: identical to the window in the chain")
    model_rec = opened.get("model")
    playbook_rec = opened.get("playbook")
    model: dict[str, Any] = model_rec if isinstance(model_rec, dict) else {}
    playbook: dict[str, Any] = playbook_rec if isinstance(playbook_rec, dict) else {}
    copies = (("model", "models.json", "model", model.get("sha256")),
              ("site file", "config.json", "site", opened.get("config_sha256")),
              ("playbook", "config.json", "playbook", playbook.get("sha256")))
    for what, index, key, sha in copies:
        entry = _json(root / index).get(key) if (root / index).is_file() else None
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            why = entry.get("missing") if isinstance(entry, dict) else None
            verdict.notes.append(f"{what}: not in the bundle ("
                                 f"{why or 'exported before bundles kept copies'}), so the "
                                 f"bundle is not self-contained")
            continue
        target = root / name
        if not target.is_file():
            verdict.problems.append(f"{name}: missing")
        elif _sha256(target) != sha:
            verdict.problems.append(f"{name}: its sha256 is not the one the incident recorded "
                                    f"in the audit chain ({sha})")
        else:
            verdict.notes.append(f"{what}: {name}, sha256 as recorded in the audit chain")


def _window_text(parts: list[dict[str, Any]]) -> str | None:
    """The flight-recorder window stored in ``parts`` (as the incident store reads it)."""
    chunks: list[str] = []
    header: str | None = None
    for payload in parts:
        if payload.get("part") != len(chunks) or not isinstance(payload.get("frames_jsonl"),
                                                                str):
            continue
        if not chunks and isinstance(payload.get("header"), str):
            header = payload["header"]
        chunks.append(payload["frames_jsonl"])
    if not chunks:
        return None
    return (header + "\n" if header is not None else "") + "".join(chunks)


# -------------------------------------------------------------------------------- command


def add_verify_parser(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``verify-bundle DIR [--json]`` to the ``incidents`` subcommands."""
    verify = commands.add_parser(
        "verify-bundle", help="check an evidence bundle: its manifest, its audit chain proof "
        "and signed head, and its files against the chain (exit 1 if tampered)")
    verify.add_argument("bundle", type=Path, metavar="DIR")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=_verify_command)


def _verify_command(args: argparse.Namespace) -> int:
    try:
        verdict = verify_bundle(args.bundle)
    except BundleError as exc:
        print(f"safety-gateway incidents verify-bundle: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
    else:
        print(f"bundle {verdict.path}: {'VALID' if verdict.ok else 'TAMPERED'}")
        print("\n".join([f"  problem: {p}" for p in verdict.problems]
                        + [f"  {n}" for n in verdict.notes]))
    return EXIT_OK if verdict.ok else EXIT_TAMPERED

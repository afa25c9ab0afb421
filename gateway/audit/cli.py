"""``safety-gateway audit verify|head|show|tail``: check an audit database's chain, publish
its head, read its records.

``verify`` checks the chain against the signed head the gateway exports beside the database
(``<db>.head.json``, :mod:`gateway.audit.signed_head`) unless ``--head`` or ``--head-file``
names another; it reports a head older than the chain as records not covered (not broken), a
missing head file as a warning (BROKEN with ``--require-head``), and lists the unclean ends
recorded in the chain with the window of records each may have lost.

Exit codes (as for the rest of ``safety-gateway``): 0 the chain is intact (``head``: the head
was published everywhere asked); 1 BROKEN, with the reason: a broken chain (the first broken
record named), a database file that exists but cannot be read as an audit database (truncated,
garbled, not one), a head file whose signature does not hold or that the chain no longer
contains (``head``: a sink failed, or the chain is broken and its head is not exported); 2 bad
input: a database or head file named on the command line that does not exist, an exported head
given as text that cannot be parsed, a bad sink or option. Either is one line on standard
error, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from gateway.audit.chain import ExportedHead, VerifyResult
    from gateway.audit.export import HeadSink
    from gateway.audit.signed_head import SignedHead

# Every command builds this parser (``safety-gateway --help``, ``check``, ``run``): the audit
# modules the commands below use are imported in each command, when it runs.

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``audit verify`` and ``audit head`` under the ``safety-gateway`` parser's
    subcommands; each sets ``func`` to a callable ``(Namespace) -> int``."""
    audit = sub.add_parser("audit", help="verify the audit log's hash chain; export its head")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    check = commands.add_parser(
        "verify", help="recompute the chain; name the first broken record",
        description="Recompute every record's hash and link. Exit 0 if the chain is intact, "
                    "1 if broken (the first broken record is named), 2 for bad input.")
    check.add_argument("db", help="audit database (SQLite)")
    check.add_argument("--head", metavar="FILE|JSON",
                       help="an exported head (JSON, or a file of heads one per line: the "
                            "last is used) that the chain must still contain: detects "
                            "truncation up to that head")
    check.add_argument("--head-file", metavar="FILE",
                       help="the signed head file to check against (default: DB.head.json "
                            "beside the database; e.g. a sink's copy on another disk)")
    check.add_argument("--pubkey", metavar="FILE",
                       help="the gateway's audit public key that must have signed the head "
                            "(default: DB.head-key.pub beside the database, if present)")
    check.add_argument("--require-head", action="store_true",
                       help="a missing signed head file is BROKEN (exit 1), not a warning")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(func=cmd_verify)
    for name, text in (("show", "print the records and exit"),
                       ("tail", "print the records, then follow new ones until interrupted")):
        reader = commands.add_parser(name, help=text, description=text + "; times are ISO "
                                     "8601 UTC. Exit 0; 1 if the database cannot be read; "
                                     "2 for bad input.")
        reader.add_argument("db", help="audit database (SQLite)")
        reader.add_argument("--since", metavar="T",
                            help="only records at or after T (ISO 8601, UTC unless a zone is "
                                 "given, e.g. 2026-12-05T12:00:00Z; or epoch seconds)")
        reader.add_argument("--kind", action="append", metavar="K",
                            help="only records of kind K (repeatable: decision, operator, "
                                 "mode, event, alarm, state, start, shutdown, unclean_end, ...)")
        reader.add_argument("--json", action="store_true", help="one JSON object per line")
        reader.set_defaults(func=cmd_show if name == "show" else cmd_tail)
    head = commands.add_parser(
        "head", help="print the chain head as JSON, and send it to sinks",
        description="Verify the chain, then print its head (seq, hash, at_s, db_id) as one "
                    "line of JSON and send it to each --to sink.")
    head.add_argument("db", help="audit database (SQLite)")
    head.add_argument("--to", action="append", default=[], metavar="SINK",
                      help="file:PATH, syslog:HOST:PORT, syslog:/SOCKET or http:URL "
                           "(repeatable)")
    head.add_argument("--no-verify", action="store_true",
                      help="export the last record's head without verifying the chain first")
    head.set_defaults(func=cmd_head)


def _fail_input(command: str, message: str) -> int:
    print(f"safety-gateway audit {command}: {message}", file=sys.stderr)
    return EXIT_INPUT


def load_head(spec: str) -> ExportedHead:
    """An exported head from JSON text, or from a file of heads (the last line is used).
    Raises ``ValueError`` naming what is wrong."""
    from gateway.audit.chain import ExportedHead

    text = spec.strip()
    if not text.startswith("{"):
        path = Path(spec)
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read exported head {spec}: {exc}") from None
        if not lines:
            raise ValueError(f"{spec}: no exported head in the file")
        text = lines[-1]
    return ExportedHead.loads(text)


def _broken(args: argparse.Namespace, reason: str, extra: dict[str, Any] | None = None,
            ) -> int:
    if args.json:
        print(json.dumps({"ok": False, "problem": "unreadable", "message": reason,
                          **(extra or {})}, indent=2))
    print(f"{args.db}: BROKEN: {reason}", file=sys.stderr)
    return EXIT_FAILED


def _signed_head(args: argparse.Namespace) -> tuple[SignedHead | None, str | None, int | None]:
    """The signed head to check against: (head, warning, exit code to stop with)."""
    # Imported here: it loads the cryptography package, which no other audit command and
    # not `safety-gateway --help` needs.
    from gateway.audit.signed_head import (
        SignedHead,
        SignedHeadError,
        head_path,
        key_path,
        public_key_path,
        read_public_key,
    )

    db = Path(args.db)
    path = Path(args.head_file) if args.head_file else head_path(db)
    if args.head_file and not path.is_file():
        return None, None, _fail_input("verify", f"{path}: no such head file")
    pub_path = Path(args.pubkey) if args.pubkey else public_key_path(key_path(db))
    pinned = None
    try:
        pinned = read_public_key(pub_path)
    except FileNotFoundError:
        if args.pubkey:
            return None, None, _fail_input("verify", f"{pub_path}: no such public key file")
    except SignedHeadError as exc:
        return None, None, _broken(args, str(exc))
    try:
        return SignedHead.read(path, pinned), None, None
    except FileNotFoundError:
        message = (f"no exported head ({path} is missing): truncation of the chain's tail "
                   "cannot be detected")
        if args.require_head:
            return None, None, _broken(args, message)
        return None, message, None
    except SignedHeadError as exc:
        return None, None, _broken(args, f"exported head: {exc}")


def _unclean_ends(db: str) -> list[dict[str, Any]]:
    from gateway.audit.show import iso_utc
    from gateway.audit.store import read_records

    ends = []
    for rec in read_records(db, kinds=("unclean_end",)):
        try:
            window = json.loads(rec.payload)
        except ValueError:
            window = {}
        if not isinstance(window, dict):
            window = {}
        ends.append({"seq": rec.seq, "at": iso_utc(rec.at_s), **window})
    return ends


def _unclean_line(end: dict[str, Any]) -> str:
    from gateway.audit.show import iso_utc

    def when(key: str) -> str:
        value = end.get(key)
        return iso_utc(value) if isinstance(value, (int, float)) else "?"

    last = ", ".join(part for part in (str(end.get("after_kind") or ""),
                                       when("after_wall_s")) if part)
    return (f"unclean end recorded at seq {end['seq']} ({end['at']}): the run before it "
            f"stopped without its shutdown record; records it appended after seq "
            f"{end.get('after_seq', '?')} ({last}) and before {when('until_wall_s')} may be "
            "missing")


def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.audit.show import iso_utc
    from gateway.audit.store import AuditError, verify

    db = Path(args.db)
    if not db.exists():
        return _fail_input("verify", f"{db}: no such file")
    if not db.is_file():
        return _fail_input("verify", f"{db}: not a file")
    head: ExportedHead | None = None
    signed: SignedHead | None = None
    warning = None
    if args.head is not None:
        try:
            head = load_head(args.head)
        except ValueError as exc:
            return _fail_input("verify", str(exc))
    else:
        signed, warning, stop = _signed_head(args)
        if stop is not None:
            return stop
        head = signed.head if signed is not None else None
    try:
        result = verify(db, head)
        ends = _unclean_ends(args.db) if result.ok else []
    except AuditError as exc:
        return _broken(args, str(exc))
    uncovered = None
    if result.ok and signed is not None and result.last_seq > signed.head.seq:
        uncovered = (f"records after seq {signed.head.seq} (seqs {signed.head.seq + 1}.."
                     f"{result.last_seq}) are not covered by the signed head, exported at "
                     f"{iso_utc(signed.exported_at_s)}: a deletion among them would not show")
    if args.json:
        out = _json_result(result, signed, warning, uncovered, ends)
        print(json.dumps(out, indent=2))
    if warning is not None:
        print(f"{args.db}: warning: {warning}", file=sys.stderr)
    if not result.ok:
        problem = result.problem.value if result.problem is not None else "broken"
        print(f"{args.db}: BROKEN at seq {result.broken_seq} ({problem}): {result.message}",
              file=sys.stderr)
        return EXIT_FAILED
    if not args.json:
        print(f"{args.db}: {result.message}; head seq {result.last_seq} {result.last_hash}")
        if signed is not None:
            print(f"{args.db}: signed head seq {signed.head.seq} (key {signed.key_id}"
                  f"{'' if signed.pinned else ', not pinned: no public key file'}, exported "
                  f"at {iso_utc(signed.exported_at_s)}) is in the chain")
        if uncovered is not None:
            print(f"{args.db}: note: {uncovered}")
        for end in ends:
            print(f"{args.db}: {_unclean_line(end)}")
    return EXIT_OK


def _json_result(result: VerifyResult, signed: SignedHead | None, warning: str | None,
                 uncovered: str | None, ends: list[dict[str, Any]]) -> dict[str, Any]:
    from gateway.audit.show import iso_utc

    out = result.to_json()
    out["signed_head"] = None if signed is None else {
        **signed.head.to_json(), "exported_at": iso_utc(signed.exported_at_s),
        "key_id": signed.key_id, "pinned": bool(signed.pinned)}
    out["not_covered"] = uncovered
    out["warnings"] = [warning] if warning is not None else []
    out["unclean_ends"] = ends
    return out


def _reader_args(args: argparse.Namespace, command: str,
                 ) -> tuple[float | None, tuple[str, ...] | None] | int:
    from gateway.audit.show import parse_time

    db = Path(args.db)
    if not db.is_file():
        return _fail_input(command, f"{db}: no such file")
    since = None
    if args.since is not None:
        try:
            since = parse_time(args.since)
        except ValueError as exc:
            return _fail_input(command, f"--since: {exc}")
    return since, (tuple(args.kind) if args.kind else None)


def cmd_show(args: argparse.Namespace) -> int:
    from gateway.audit.show import show
    from gateway.audit.store import AuditError

    parsed = _reader_args(args, "show")
    if isinstance(parsed, int):
        return parsed
    since, kinds = parsed
    try:
        show(args.db, since_s=since, kinds=kinds, as_json=args.json)
    except AuditError as exc:
        print(f"{args.db}: BROKEN: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from gateway.audit.show import tail
    from gateway.audit.store import AuditError

    parsed = _reader_args(args, "tail")
    if isinstance(parsed, int):
        return parsed
    since, kinds = parsed
    try:
        tail(args.db, since_s=since, kinds=kinds, as_json=args.json)
    except AuditError as exc:
        print(f"{args.db}: BROKEN: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_head(args: argparse.Namespace) -> int:
    from gateway.audit.export import parse_sink, send_head
    from gateway.audit.store import AuditError, last_head, verify

    try:
        sinks: list[HeadSink] = [parse_sink(spec) for spec in args.to]
    except ValueError as exc:
        return _fail_input("head", str(exc))
    try:
        if args.no_verify:
            head = last_head(args.db)
        else:
            result = verify(args.db)
            if not result.ok:
                print(f"{args.db}: not exporting the head of a broken chain: BROKEN at seq "
                      f"{result.broken_seq}: {result.message}", file=sys.stderr)
                return EXIT_FAILED
            head = result.head()
    except AuditError as exc:
        if not Path(args.db).is_file():
            return _fail_input("head", str(exc))
        print(f"{args.db}: BROKEN: {exc}", file=sys.stderr)  # exists, cannot be read
        return EXIT_FAILED
    print(head.dumps())
    try:
        errors = send_head(head, sinks)
    finally:
        for sink in sinks:
            sink.close()
    for error in errors:
        print(f"safety-gateway audit head: {error}", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK

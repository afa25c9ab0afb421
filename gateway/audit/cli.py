"""``safety-gateway audit verify|head``: check an audit database's chain, publish its head.

Exit codes (as for the rest of ``safety-gateway``): 0 the chain is intact (``head``: the head
was published everywhere asked); 1 the chain is broken, with the first broken record named
(``head``: a sink failed, or the chain is broken and its head is not exported); 2 bad input: a
missing file, a file that is not an audit database, an unreadable exported head, a bad sink.
Bad input is one line on standard error, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.audit.chain import ExportedHead
from gateway.audit.export import HeadSink, parse_sink, send_head
from gateway.audit.store import NotAuditDatabase, last_head, verify

if TYPE_CHECKING:
    import argparse

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
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(func=cmd_verify)
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


def cmd_verify(args: argparse.Namespace) -> int:
    head = None
    if args.head is not None:
        try:
            head = load_head(args.head)
        except ValueError as exc:
            return _fail_input("verify", str(exc))
    try:
        result = verify(args.db, head)
    except NotAuditDatabase as exc:
        return _fail_input("verify", str(exc))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    if result.ok:
        if not args.json:
            print(f"{args.db}: {result.message}; head seq {result.last_seq} "
                  f"{result.last_hash}")
        return EXIT_OK
    problem = result.problem.value if result.problem is not None else "broken"
    print(f"{args.db}: BROKEN at seq {result.broken_seq} ({problem}): {result.message}",
          file=sys.stderr)
    return EXIT_FAILED


def cmd_head(args: argparse.Namespace) -> int:
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
    except NotAuditDatabase as exc:
        return _fail_input("head", str(exc))
    print(head.dumps())
    try:
        errors = send_head(head, sinks)
    finally:
        for sink in sinks:
            sink.close()
    for error in errors:
        print(f"safety-gateway audit head: {error}", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK

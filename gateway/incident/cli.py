"""``safety-gateway incidents list|show|note|ack|check|severity|reported|draft|approve-draft|
review|actions|action-done|resolve|export|playbook``: incidents, by hand.

:func:`add_parser` adds ``incidents`` to the top-level subparsers; each subcommand sets ``func``
to a callable taking the parsed ``argparse.Namespace`` and returning the exit code:

- 0: done;
- 1: the incident does not exist, the request was refused (already resolved, item already
  done), the audit database is held by a running gateway, the records could not be written, or
  (``export``) the bundle was written but the audit chain does not verify;
- 2: bad input (a missing file or one that is not an audit database, an empty text or name,
  an unknown severity; ``playbook``: an invalid playbook, each problem printed as
  ``file:line: key: message``).
- 3: (``resolve``) refused because required checklist items or the review are open; the
  message lists them (an administrator may ``--force --reason TEXT``).

Errors print one line on stderr, never a traceback.

Reading (``list``, ``show``, ``export``) works while a gateway runs: it uses read-only
connections. Writing (``note``, ``ack``, ``check``, ``severity``, ``reported``, ``review``,
``action-done``, ``approve-draft``, ``resolve``) appends hash-chained records
through an :class:`~gateway.audit.log.AuditLog`, and only one audit log may write a database
at a time (an exclusive lock beside it, so that two writers never fork the chain). While a
gateway holds the database, these commands fail with exit 1 and say so: the request must then
go through the running gateway, ``--via opc.tcp://HOST:PORT/PATH`` (its OPC UA incident
methods, as the OPC UA user ``--user`` with the password from ``--password-env``; all but
``approve-draft``), which records
it in the same chain with that user as the actor. Through ``--via`` the exit code is 0 when the
gateway accepted, 1 when it refused (the reason is printed) or could not be reached.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from gateway.incident.manager import IncidentManager
    from gateway.incident.model import Incident

__all__ = ["add_parser", "format_incident"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INPUT: Final = 2
EXIT_OPEN_ITEMS: Final = 3


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``incidents`` and its subcommands to ``sub``."""
    top = sub.add_parser("incidents", help="list, read, annotate, resolve and export incidents",
                         description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = top.add_subparsers(dest="incidents_command", required=True, metavar="COMMAND",
                                  parser_class=type(top))

    def db_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--db", required=True, type=Path, metavar="DB",
                            help="the audit database (SQLite)")

    def writer_args(parser: argparse.ArgumentParser, who: str) -> None:
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--db", type=Path, metavar="DB",
                           help="the audit database (SQLite), when no gateway holds it")
        where.add_argument("--via", metavar="ENDPOINT",
                           help="a running gateway's OPC UA endpoint (opc.tcp://...): it "
                                "records the request in its own audit chain")
        parser.add_argument("--by", metavar="WHO", help=f"{who} (with --db; through --via "
                            "the gateway records the OPC UA user)")
        parser.add_argument("--user", metavar="NAME", help="OPC UA user name (with --via)")
        parser.add_argument("--password-env", metavar="VAR",
                            help="environment variable holding the OPC UA password")

    listing = commands.add_parser("list", help="list incidents, newest last")
    db_arg(listing)
    listing.add_argument("--open", action="store_true", help="only those not resolved")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_command(_list))

    show = commands.add_parser("show", help="one incident: trigger, phases, timeline, checklist")
    show.add_argument("id", metavar="ID")
    db_arg(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_command(_show))

    note = commands.add_parser("note", help="add an operator's note (moves it to investigating)")
    note.add_argument("id", metavar="ID")
    note.add_argument("text", metavar="TEXT")
    writer_args(note, "who writes it")
    note.add_argument("--json", action="store_true", help="print the incident as JSON")
    note.set_defaults(func=_command(_note))

    ack = commands.add_parser("ack", help="acknowledge an incident (moves it to investigating)")
    ack.add_argument("id", metavar="ID")
    ack.add_argument("text", nargs="?", default="", metavar="TEXT")
    writer_args(ack, "who acknowledges")
    ack.add_argument("--json", action="store_true", help="print the incident as JSON")
    ack.set_defaults(func=_command(_ack))

    check = commands.add_parser("check", help="mark a checklist item done")
    check.add_argument("id", metavar="ID")
    check.add_argument("phase", metavar="PHASE",
                       help="detection, containment, investigation, forensics or recovery")
    check.add_argument("item", metavar="ITEM", help="the item's number in its phase (from 0) "
                       "as `show` lists it, or its exact text")
    writer_args(check, "who did it")
    check.add_argument("--json", action="store_true", help="print the incident as JSON")
    check.set_defaults(func=_command(_check))

    severity = commands.add_parser(
        "severity", help="raise an incident's severity, with a reason",
        description="Raise the incident's severity (low < medium < high < critical); the "
                    "playbook's escalation for the new severity starts. Severity never falls.")
    severity.add_argument("id", metavar="ID")
    severity.add_argument("level", metavar="LEVEL", help="low, medium, high or critical")
    severity.add_argument("--reason", required=True, metavar="TEXT", help="why")
    writer_args(severity, "who raises it")
    severity.add_argument("--json", action="store_true", help="print the incident as JSON")
    severity.set_defaults(func=_command(_severity))

    reported = commands.add_parser(
        "reported", help="record that a report a reporting clock asks for was made",
        description="Stop the reminders of a reporting obligation (as `show` lists them) "
                    "for this incident: the report was made.")
    reported.add_argument("id", metavar="ID")
    reported.add_argument("obligation", metavar="OBLIGATION")
    reported.add_argument("--ref", default="", metavar="TEXT",
                          help="the report's reference, or where it went")
    writer_args(reported, "who made it")
    reported.add_argument("--json", action="store_true", help="print the incident as JSON")
    reported.set_defaults(func=_command(_reported))

    audiences = ("regulator", "customers", "board", "internal")
    draft = commands.add_parser(
        "draft", help="render a communication (Markdown) from the incident's facts",
        description="Print (or write to --out) the draft for the audience, from the "
                    "templates in configs/playbooks/templates/ (or --templates DIR). A draft "
                    "is not sent: a person edits it if needed and approves it with "
                    "approve-draft. Exit 2 for a template that cannot be used.")
    draft.add_argument("id", metavar="ID")
    draft.add_argument("--for", dest="audience", required=True, choices=audiences)
    db_arg(draft)
    draft.add_argument("--next-update", metavar="TEXT",
                       help="when the next update will be given (default: the earliest "
                            "reporting deadline not met, else within 24 hours)")
    draft.add_argument("--templates", type=Path, metavar="DIR",
                       help="a folder with regulator.md, customers.md, board.md, internal.md")
    draft.add_argument("--out", type=Path, metavar="FILE", help="write the draft here")
    draft.set_defaults(func=_command(_draft))

    approve = commands.add_parser(
        "approve-draft", help="record who approved a communication, and its text's sha256",
        description="Record the approval of the text in --file (as edited), or of the draft "
                    "as it renders now, with its sha256 and the text itself.")
    approve.add_argument("id", metavar="ID")
    approve.add_argument("--for", dest="audience", required=True, choices=audiences)
    approve.add_argument("--file", type=Path, metavar="FILE", help="the text approved")
    approve.add_argument("--next-update", metavar="TEXT", help="as for draft")
    approve.add_argument("--templates", type=Path, metavar="DIR", help="as for draft")
    writer_args(approve, "who approves it")
    approve.add_argument("--json", action="store_true", help="print the incident as JSON")
    approve.set_defaults(func=_command(_approve_draft))

    book = commands.add_parser(
        "playbook", help="check a playbook file and print its people: contacts, severity "
                         "rules, escalation, reporting clocks",
        description="Exit 2, each problem printed as file:line: key: message, if it is "
                    "invalid.")
    book.add_argument("path", type=Path, metavar="PATH", nargs="?",
                      help="the playbook (default: configs/playbooks/default.yaml)")
    book.add_argument("--json", action="store_true", help="print JSON")
    book.set_defaults(func=_command(_playbook))

    review = commands.add_parser(
        "review", help="record the post-incident review (again: revise it, add actions)",
        description="Record the root cause, contributing factors, what went well and badly, "
                    "and action items with owners and due dates. A later review revises the "
                    "root cause and lessons and adds its action items.")
    review.add_argument("id", metavar="ID")
    review.add_argument("--root-cause", required=True, metavar="TEXT")
    review.add_argument("--factor", action="append", default=[], metavar="TEXT",
                        help="a contributing factor (repeat for more)")
    review.add_argument("--went-well", action="append", default=[], metavar="TEXT")
    review.add_argument("--went-badly", action="append", default=[], metavar="TEXT")
    review.add_argument("--action", nargs=3, action="append", default=[],
                        metavar=("TEXT", "OWNER", "DUE"),
                        help="an action item, its owner and its due date (YYYY-MM-DD); "
                             "repeat for more")
    writer_args(review, "who records it")
    review.add_argument("--json", action="store_true", help="print the incident as JSON")
    review.set_defaults(func=_command(_review))

    actions = commands.add_parser("actions", help="list open action items across incidents")
    db_arg(actions)
    actions.add_argument("--all", action="store_true", help="closed ones too")
    actions.add_argument("--json", action="store_true", help="print JSON")
    actions.set_defaults(func=_command(_actions))

    done = commands.add_parser("action-done", help="close an action item")
    done.add_argument("id", metavar="ID")
    done.add_argument("number", metavar="N", help="the item's number, as `actions` lists it")
    done.add_argument("--note", default="", metavar="TEXT", help="what was done")
    writer_args(done, "who closes it")
    done.add_argument("--json", action="store_true", help="print the incident as JSON")
    done.set_defaults(func=_command(_action_done))

    resolve = commands.add_parser(
        "resolve", help="resolve an incident with a summary",
        description="Refused (exit 3) while required checklist items or the review are "
                    "open, unless an administrator forces it with --force --reason TEXT "
                    "(recorded, with what was open).")
    resolve.add_argument("id", metavar="ID")
    resolve.add_argument("--summary", required=True, metavar="TEXT",
                         help="what happened and what was done")
    resolve.add_argument("--force", action="store_true",
                         help="(administrator) resolve although required items are open")
    resolve.add_argument("--reason", metavar="TEXT", help="why it is forced (with --force)")
    writer_args(resolve, "who resolves it")
    resolve.add_argument("--json", action="store_true", help="print the incident as JSON")
    resolve.set_defaults(func=_command(_resolve))

    export = commands.add_parser(
        "export", help="write the evidence bundle and post-incident report",
        description="Write OUT/ID/: incident.json, flight_recorder.{jsonl,csv}, "
                    "audit_excerpt.jsonl, chain_proof.json, models.json, config.json, "
                    "report.md with plots, manifest.json. Exit 1 if the audit chain does "
                    "not verify (the bundle is written anyway: it is evidence).")
    export.add_argument("id", metavar="ID")
    export.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="folder to write the bundle in (as DIR/ID/)")
    db_arg(export)
    export.add_argument("--force", action="store_true",
                        help="replace an earlier bundle of the same incident")
    export.add_argument("--json", action="store_true", help="print the result as JSON")
    export.set_defaults(func=_command(_export))

    from gateway.incident.bundle import add_verify_parser  # issue 19: verify-bundle DIR

    add_verify_parser(commands)


def _command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from gateway.audit.store import AuditError, NotAuditDatabase
        from gateway.incident.model import IncidentError, UnknownIncident

        try:
            return fn(args)
        except _Fail as exc:
            _error(args, str(exc))
            return exc.code
        except NotAuditDatabase as exc:
            _error(args, str(exc))
            return EXIT_INPUT
        except UnknownIncident as exc:
            _error(args, str(exc))
            return EXIT_FAILED
        except (IncidentError, AuditError) as exc:
            _error(args, str(exc))
            return EXIT_FAILED
    return run


def _error(args: argparse.Namespace, message: str) -> None:
    print(f"safety-gateway incidents {args.incidents_command}: {message}", file=sys.stderr)


def _need_db(args: argparse.Namespace) -> Path:
    db: Path = args.db
    if not db.is_file():
        raise _Fail(EXIT_INPUT, f"{db}: no such audit database")
    return db


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=str))


def _utc(wall_s: float | None) -> str:
    from gateway.incident.model import utc_text

    return utc_text(wall_s)


# ---------------------------------------------------------------------------------- reading


def _list(args: argparse.Namespace) -> int:
    from gateway.incident.store import load_incidents

    incidents = load_incidents(_need_db(args))
    if args.open:
        incidents = [i for i in incidents if i.is_open]
    if args.json:
        _print_json([i.summary() for i in incidents])
        return EXIT_OK
    if not incidents:
        print("no incidents")
        return EXIT_OK
    for inc in incidents:
        s = inc.summary()
        print(f"{inc.id}  {inc.phase:<13}  {inc.severity or '-':<8}  {inc.cause:<14}  "
              f"opened {_utc(inc.opened_wall_s)}  "
              f"{inc.trigger.detector}: {inc.trigger.reason}  "
              f"(trips {s['trips']}, checklist {s['checklist_done']}/{s['checklist_items']})")
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    from gateway.incident.store import load_incident

    problems: list[str] = []
    incident = load_incident(_need_db(args), args.id, problems=problems)
    if args.json:
        out = incident.to_json()
        out["problems"] = problems
        now = time.time()
        out["deadlines"] = [{"obligation": d.obligation, "description": d.description,
                             "start_wall_s": d.start_wall_s, "due_wall_s": d.due_wall_s,
                             "remind_wall_s": d.remind_wall_s, "status": d.status(now),
                             "due_utc": _utc(d.due_wall_s)} for d in incident.deadlines()]
        _print_json(_finite(out))
    else:
        print(format_incident(incident))
        for problem in problems:
            print(f"warning: {problem}")
    return EXIT_OK


def _finite(obj: Any) -> Any:
    from gateway.incident.model import finite_json

    return finite_json(obj)


def format_incident(incident: Incident, now_wall_s: float | None = None) -> str:
    """A readable, plain-text account of an incident (``incidents show``); reporting
    deadlines are judged at ``now_wall_s`` (default: the wall clock)."""
    from gateway.incident.model import ChecklistPhase, Phase, evidence_text

    t0 = incident.opened_at_s
    lines = [f"{incident.id}  ({incident.phase})",
             f"  site      {incident.site}",
             f"  opened    {_utc(incident.opened_wall_s)}  (supervisor time {t0})",
             f"  trigger   {incident.trigger.detector}: {incident.trigger.reason}",
             f"  cause     {incident.cause}"]
    if incident.trigger.evidence:
        lines.append(f"  evidence  {evidence_text(incident.trigger.evidence)}")
    lines += [f"  mode      {incident.mode_at_trip} -> {incident.mode_after_trip}",
              f"  model     {incident.model.path or '-'}  sha256 {incident.model.sha256 or '-'}",
              f"  config    sha256 {incident.config_sha256 or '-'}",
              f"  playbook  {incident.playbook.name} rule {incident.playbook.rule or '-'}"]
    fr = incident.flight_recorder
    if fr is not None:
        state = "stored" if fr.stored else "not stored yet"
        lines.append(f"  recorder  {fr.frames} frames, {fr.start_s - fr.trigger_s:+g} s to "
                     f"{fr.end_s - fr.trigger_s:+g} s around the trip ({state})")
    sev = incident.severity_changes[-1] if incident.severity_changes else None
    if sev is not None:
        lines.append(f"  severity  {sev.level}  since {_utc(sev.wall_s)}: {sev.reason}"
                     + (f" ({sev.by})" if sev.by else ""))
    c = incident.consequence
    if c is not None and c.min_margin is not None:
        where = "beyond" if c.excursion else "from"
        lines.append(f"  closest   {abs(c.min_margin):.1%} of the span {where} a danger limit "
                     f"({c.sensor}={c.value:g})")
    if incident.resolution is not None:
        r = incident.resolution
        lines.append(f"  resolved  by {r.who} at {_utc(r.wall_s)}: {r.summary}")
    lines += ["", "phases:"]
    for phase in Phase:
        change = incident.phase_change(phase)
        if change is not None:
            lines.append(f"  {phase:<13} {_utc(change.wall_s)}  {change.reason}"
                         + (f" ({change.by})" if change.by else ""))
    if incident.plant_safety:
        lines += ["", "plant safety systems:", f"  {incident.plant_safety}"]
    lines += ["", "containment:"]
    lines += [f"  {c.step:<16} {c.status:<11} {c.detail}" for c in incident.containment] or [
        "  (none)"]
    deadlines = incident.deadlines()
    if incident.people.obligations:
        lines += ["", "reporting deadlines (record a report with: incidents reported ID NAME):"]
        now = time.time() if now_wall_s is None else now_wall_s
        for d in deadlines:
            state = d.status(now)
            if d.report is not None:
                state += f" by {d.report.who} at {_utc(d.report.wall_s)}"
                state += f" ({d.report.ref})" if d.report.ref else ""
            lines.append(f"  {d.obligation:<18} due {_utc(d.due_wall_s)}  [{state}]  "
                         f"clock from {_utc(d.start_wall_s)}, reminder at "
                         f"{_utc(d.remind_wall_s)}"
                         + (f"; {d.description}" if d.description else ""))
        waiting = [o for o in incident.people.obligations
                   if o.name not in {d.obligation for d in deadlines}]
        lines += [f"  {o.name:<18} not running (starts at severity {o.min_severity})"
                  for o in waiting]
    if incident.review is not None:
        rv = incident.review
        lines += ["", f"review (by {rv.who} at {_utc(rv.wall_s)}"
                      + (f", revision {rv.revisions}" if rv.revisions > 1 else "") + "):",
                  f"  root cause   {rv.root_cause}"]
        lines += [f"  factor       {t}" for t in rv.factors]
        lines += [f"  went well    {t}" for t in rv.went_well]
        lines += [f"  went badly   {t}" for t in rv.went_badly]
    if incident.actions:
        lines += ["", "action items (close with: incidents action-done ID N --by WHO --db DB):"]
        lines += [f"  [{'x' if a.done else ' '}] {a.number}. {a.text}  (owner {a.owner}, due "
                  f"{a.due})" + (f"  done by {a.done_by}" if a.done else "")
                  for a in incident.actions]
    if incident.is_open:
        needed = incident.open_requirements()
        lines += ["", f"to resolve: {len(needed)} required item(s) open"
                  + (" (checklist below" + (", review" if "review" in needed else "") + ")"
                     if needed else "")]
    elif incident.resolution is not None and incident.resolution.forced:
        r = incident.resolution
        lines += ["", f"resolution FORCED by {r.who}: {r.force_reason}; open then:"]
        lines += [f"  - {t}" for t in r.open]
    if incident.approvals:
        lines += ["", "approved communications:"]
        lines += [f"  {a.audience:<10} by {a.who} at {_utc(a.wall_s)}  sha256 {a.sha256}"
                  for a in incident.approvals]
    if incident.escalations:
        lines += ["", "escalations:"]
        lines += [f"  {_utc(e.wall_s)}  {e.contact} ({e.role}) via {', '.join(e.hooks)}: "
                  f"{e.reason}" for e in incident.escalations]
    if incident.notifications:
        lines += ["", "notifications:"]
        lines += [f"  {n.hook} ({n.kind}) {'sent' if n.ok else 'FAILED'}: {n.detail}"
                  for n in incident.notifications]
    lines += ["", "timeline:"]
    for e in incident.timeline:
        rel = (f"{e.at_s - t0:+9.2f} s" if e.at_s is not None and t0 is not None
               else " " * 11)
        lines.append(f"  {_utc(e.wall_s)} {rel}  {e.text}" + (f"  [{e.who}]" if e.who else ""))
    lines += ["", "checklist (check with: incidents check ID PHASE N --by WHO --db DB):"]
    for step in ChecklistPhase:
        items = incident.checklist_of(step)
        if not items:
            continue
        lines.append(f"  {step}:")
        lines += [f"    [{'x' if item.done else ' '}] {k}. {item.text}"
                  + (f"  (by {item.by})" if item.done else "")
                  for k, item in enumerate(items)]
    return "\n".join(lines)


def _export(args: argparse.Namespace) -> int:
    from gateway.incident.export import ExportError, export_incident

    db = _need_db(args)
    try:
        bundle = export_incident(db, args.id, args.out, overwrite=args.force)
    except ExportError as exc:
        raise _Fail(EXIT_FAILED, str(exc)) from None
    proof = json.loads((bundle / "chain_proof.json").read_text(encoding="utf-8"))
    files = sorted(p.name for p in bundle.iterdir())
    if args.json:
        _print_json({"bundle": str(bundle), "files": files, "chain_ok": proof["ok"],
                     "verify": proof["verify"]["message"]})
    else:
        print(f"{bundle}: {len(files)} files; report {bundle / 'report.md'}")
        print(f"audit chain: {proof['verify']['message']}")
    if not proof["ok"]:
        _error(args, "the audit chain does not verify; the bundle records where it breaks")
        return EXIT_FAILED
    return EXIT_OK


# ---------------------------------------------------------------------------------- writing


def _writer(args: argparse.Namespace) -> tuple[Any, IncidentManager]:
    """An audit log on the database and a manager holding the incident. Raises _Fail."""
    from gateway.audit.log import AuditLog
    from gateway.audit.store import AuditError, NotAuditDatabase, lock_path
    from gateway.incident.manager import IncidentManager
    from gateway.incident.playbook import Playbook
    from gateway.incident.store import load_incident

    db = _need_db(args)
    by = args.by
    if not by.strip():
        raise _Fail(EXIT_INPUT, "--by must name who does it")
    held = _Fail(EXIT_FAILED, f"{db} is open for writing by a running gateway; send this "
                              "request through it with --via ENDPOINT (its OPC UA server "
                              "records it in the same audit chain)")
    # First: the gateway may hold an incident it has not written yet.
    if _held(lock_path(db.resolve())):
        raise held
    load_incident(db, args.id)  # unknown id or foreign file: before taking the lock
    try:
        audit = AuditLog(db)
    except NotAuditDatabase as exc:
        raise _Fail(EXIT_INPUT, str(exc)) from None
    except AuditError as exc:
        if _held(lock_path(db.resolve())):
            raise held from None
        raise _Fail(EXIT_FAILED, str(exc)) from None
    # Read again under the lock: nothing can change the incident from here on.
    incident = load_incident(db, args.id)
    manager = IncidentManager(incident.site, Playbook(name="", rules=()), audit,
                              existing=[incident])
    return audit, manager


def _held(lock: Path) -> bool:
    """Whether another process holds the audit writer's lock."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases our lock, if we got it
    return False


def _source() -> str:
    return f"cli@{socket.gethostname()}"


def _write(args: argparse.Namespace, change: Callable[[IncidentManager], Incident],
           done: str, via: tuple[str, tuple[str, ...]]) -> int:
    from gateway.incident.model import BadRequest, IncidentError, OpenItems

    if args.via is not None:
        return _through_gateway(args, *via)
    if args.by is None:
        raise _Fail(EXIT_INPUT, "--by must name who does it")
    if args.user is not None or args.password_env is not None:
        raise _Fail(EXIT_INPUT, "--user and --password-env go with --via")
    audit, manager = _writer(args)
    try:
        try:
            incident = change(manager)
        except IncidentError as exc:
            code = (EXIT_INPUT if isinstance(exc, BadRequest) else
                    EXIT_OPEN_ITEMS if isinstance(exc, OpenItems) else EXIT_FAILED)
            raise _Fail(code, str(exc)) from None
    finally:
        written = audit.close(timeout_s=10.0)
    if not written:
        raise _Fail(EXIT_FAILED, f"the records could not be written to {args.db}: "
                                 f"{audit.alarm or 'audit storage failing'}")
    if args.json:
        _print_json(_finite(incident.to_json()))
    else:
        print(f"{incident.id}: {done}; phase {incident.phase}")
    return EXIT_OK


def _note(args: argparse.Namespace) -> int:
    return _write(args, lambda m: m.note(args.id, args.by, _source(), args.text), "note added",
                  ("IncidentNote", (args.text,)))


def _ack(args: argparse.Namespace) -> int:
    return _write(args, lambda m: m.acknowledge(args.id, args.by, _source(), args.text),
                  "acknowledged", ("IncidentAcknowledge", (args.text,)))


def _check(args: argparse.Namespace) -> int:
    return _write(args, lambda m: m.check(args.id, args.phase, args.item, args.by, _source()),
                  f"checklist {args.phase} item {args.item} done",
                  ("IncidentCheck", (args.phase, args.item)))


def _no_via(args: argparse.Namespace) -> None:
    if args.via is not None:
        raise _Fail(EXIT_INPUT, f"`{args.incidents_command}` cannot go through --via yet (the "
                                "gateway's OPC UA server has no method for it); stop the "
                                "gateway or use --db when it does not hold the database")


def _severity(args: argparse.Namespace) -> int:
    return _write(args, lambda m: m.raise_severity(args.id, args.level, args.by, _source(),
                                                   args.reason),
                  f"severity {args.level}", ("IncidentSeverity", (args.level, args.reason)))


def _reported(args: argparse.Namespace) -> int:
    return _write(args, lambda m: m.report_made(args.id, args.obligation, args.by, _source(),
                                                args.ref),
                  f"report {args.obligation} recorded",
                  ("IncidentReported", (args.obligation, args.ref)))


def _render(args: argparse.Namespace, incident: Incident) -> str:
    from gateway.incident.comms import TemplateError, render_draft

    try:
        return render_draft(incident, args.audience, next_update=args.next_update,
                            templates=args.templates)
    except TemplateError as exc:
        raise _Fail(EXIT_INPUT, str(exc)) from None


def _draft(args: argparse.Namespace) -> int:
    from gateway.incident.store import load_incident

    text = _render(args, load_incident(_need_db(args), args.id))
    if args.out is None:
        print(text, end="")
        return EXIT_OK
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _Fail(EXIT_INPUT, f"{args.out}: cannot write: {exc.strerror}") from None
    print(f"{args.out}: draft for {args.audience}; approve with: safety-gateway incidents "
          f"approve-draft {args.id} --for {args.audience} --file {args.out} --by WHO --db DB")
    return EXIT_OK


def _approve_draft(args: argparse.Namespace) -> int:
    from gateway.incident.comms import text_sha256
    from gateway.incident.store import load_incident

    _no_via(args)
    if args.file is not None:
        try:
            text = args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise _Fail(EXIT_INPUT, f"{args.file}: cannot read: {exc}") from None
    else:
        text = _render(args, load_incident(_need_db(args), args.id))
    return _write(args, lambda m: m.approve_draft(args.id, args.audience, text, args.by,
                                                  _source()),
                  f"draft for {args.audience} approved (sha256 {text_sha256(text)})", ("", ()))


def _playbook(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError
    from gateway.incident.playbook import DEFAULT_PLAYBOOK, load_playbook

    path = args.path or DEFAULT_PLAYBOOK
    try:
        book = load_playbook(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INPUT
    people = book.people
    if args.json:
        _print_json({"name": book.name, "source": book.source, "sha256": book.sha256,
                     "people": people.to_json(), "danger_limits": book.danger_limits})
        return EXIT_OK
    lines = [f"{book.name}  ({book.source})", "contacts:"]
    lines += [f"  {c.name:<22} {c.role:<22} via {', '.join(c.reach)}"
              + (f"; {c.person}" if c.person else "") + (f"; {c.hours}" if c.hours else "")
              for c in people.contacts.values()] or ["  (none)"]
    lines.append(f"severity: default {people.default_severity}")
    lines += [f"  {r.level:<9} {r.name}" for r in people.severity_rules]
    lines.append("escalation:")
    for level, steps in people.escalation.items():
        lines += [f"  {level:<9} after {st.after_s / 60:g} min: {', '.join(st.contacts)}"
                  for st in steps]
    lines.append("reporting:")
    lines += [f"  {o.name:<18} within {o.within_s / 3600:g} h from severity {o.min_severity}, "
              f"reminder {o.lead_s / 60:g} min before: {', '.join(o.contacts)}"
              for o in people.obligations] or ["  (none)"]
    print("\n".join(lines))
    return EXIT_OK


def _resolve(args: argparse.Namespace) -> int:
    if args.force != (args.reason is not None):
        raise _Fail(EXIT_INPUT, "--force and --reason go together (an administrator's "
                                "reason for resolving with required items open)")
    # Through --db the database's file permissions are the authority (as for every command
    # here); the CLI enforces the playbook's requirements before resolving.
    return _write(args, lambda m: m.resolve(args.id, args.by, _source(), args.summary,
                                            enforce=True, force_reason=args.reason),
                  "resolved" + (" (forced)" if args.force else ""),
                  ("IncidentForceResolve", (args.summary, args.reason)) if args.force
                  else ("IncidentResolve", (args.summary,)))


def _review(args: argparse.Namespace) -> int:
    review = json.dumps({"root_cause": args.root_cause, "factors": args.factor,
                         "went_well": args.went_well, "went_badly": args.went_badly,
                         "actions": [{"text": t, "owner": o, "due": d}
                                     for t, o, d in args.action]})
    return _write(args, lambda m: m.review(
        args.id, args.by, _source(), args.root_cause, factors=args.factor,
        went_well=args.went_well, went_badly=args.went_badly,
        actions=[tuple(a) for a in args.action]), "review recorded",
        ("IncidentReview", (review,)))


def _action_done(args: argparse.Namespace) -> int:
    return _write(args, lambda m: m.action_done(args.id, args.number, args.by, _source(),
                                                args.note),
                  f"action item {args.number} closed",
                  ("IncidentActionDone", (args.number, args.note)))


def _actions(args: argparse.Namespace) -> int:
    import datetime as dt

    from gateway.incident.store import load_incidents

    today = dt.datetime.now(dt.UTC).date()
    rows = [(inc, item) for inc in load_incidents(_need_db(args)) for item in inc.actions
            if args.all or not item.done]
    if args.json:
        _print_json([{"incident": inc.id, "number": item.number, "text": item.text,
                      "owner": item.owner, "due": item.due.isoformat(), "done": item.done,
                      "done_by": item.done_by, "overdue": item.overdue(today)}
                     for inc, item in rows])
        return EXIT_OK
    if not rows:
        print("no open action items" if not args.all else "no action items")
        return EXIT_OK
    for inc, item in sorted(rows, key=lambda r: (r[1].due, r[0].id, r[1].number)):
        state = (f"done by {item.done_by}" if item.done else
                 "OVERDUE" if item.overdue(today) else "open")
        print(f"{inc.id} #{item.number}  due {item.due}  {item.owner:<12} [{state}]  "
              f"{item.text}")
    return EXIT_OK


def _through_gateway(args: argparse.Namespace, method: str, rest: tuple[str, ...]) -> int:
    """Call the running gateway's OPC UA incident method: exit 0 if it accepted, 1 if it
    refused or could not be reached, 2 for bad arguments."""
    import asyncio

    if args.by is not None:
        raise _Fail(EXIT_INPUT, "through --via the gateway records its OPC UA user; "
                                "name it with --user, not --by")
    if not args.via.startswith("opc.tcp://"):
        raise _Fail(EXIT_INPUT, f"--via {args.via!r}: not an opc.tcp:// endpoint")
    password: str | None = None
    if args.password_env is not None:
        if args.user is None:
            raise _Fail(EXIT_INPUT, "--password-env needs --user")
        password = os.environ.get(args.password_env)
        if password is None:
            raise _Fail(EXIT_INPUT, f"environment variable {args.password_env} is not set")
    from gateway.adapters.opcua.session import GatewayRefused, GatewayUnreachable, call_method

    try:
        accepted, message = asyncio.run(call_method(args.via, args.user, password, method,
                                                    (args.id, *rest)))
    except (GatewayUnreachable, GatewayRefused) as exc:
        raise _Fail(EXIT_FAILED, str(exc)) from None
    if args.json:
        _print_json({"id": args.id, "method": method, "accepted": accepted,
                     "message": message})
    elif accepted:
        print(f"{args.id}: {message}")
    if not accepted:
        raise _Fail(EXIT_FAILED, f"the gateway refused: {message}")
    return EXIT_OK

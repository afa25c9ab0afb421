"""``safety-gateway ctl status|mode|reset|bypass|unbypass|reload --via ENDPOINT``: the
shift's controls.

Each command opens one OPC UA session with the running gateway (its northbound server, as the
user ``--user`` with the password read from the environment variable ``--password-env``;
anonymous without ``--user``, if the site allows it) and does one thing:

- ``status``: print the mode, whether a trip is latched and why, the open incident and the
  bypasses in force with their expiry (``--json``: one JSON object);
- ``mode MODE``: ask for ``manual``, ``shadow``, ``auto`` or ``safe_stop`` (RequestMode;
  operator or admin);
- ``reset``: reset a latched trip (ResetTrip; admin);
- ``bypass DETECTOR SECONDS``: bypass a detector for that long (Bypass; admin);
- ``unbypass DETECTOR``: end a bypass (EndBypass; admin);
- ``candidate``: print the candidate site's report so far, in the shape of ``prove``'s: per
  constraint and detector what the candidate would have done (clamp, reject, trip, another
  mode) to the AI's proposals, the commands written and operators' write-throughs, how often,
  the worst cases with their times, and the last disagreement (CandidateReport; any role;
  ``--json``: the report as the gateway sent it; refused when the site names no candidate).
- ``reload [--dry-run | --commit]``: re-read and check the site file the gateway was started
  with, show the difference, and apply it between two cycles (ReloadSite; admin; ``--dry-run``
  only shows the difference, operator or admin). Where the site asks for two-person change
  (``operation.two_person_change: true``) the first call stages it and a second call
  (``--commit``) by a different admin commits it. A file that does not pass ``check`` is
  refused with ``check``'s errors and its exit code (2).

The gateway answers each request with its real outcome, printed on one line. Exit codes:

- 0: applied (``status``: read);
- 1: refused: the gateway refused the request, the login or the call (the reason is printed);
- 2: bad arguments (nothing was sent);
- 3: the gateway could not be reached, or did not answer within ``--timeout`` seconds.

A password is never taken on the command line (it would show in the process list and the
shell's history); errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

__all__ = ["add_parser"]

EXIT_APPLIED: Final = 0
EXIT_REFUSED: Final = 1
EXIT_INPUT: Final = 2
EXIT_UNREACHABLE: Final = 3

MODES: Final = ("manual", "shadow", "auto", "safe_stop")


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``ctl`` and its subcommands to ``sub``."""
    top = sub.add_parser("ctl", help="status, mode, reset and bypasses of a running gateway",
                         description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = top.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND",
                                  parser_class=type(top))

    def common(parser: argparse.ArgumentParser, via_required: bool = True) -> None:
        parser.add_argument("--via", required=via_required, metavar="ENDPOINT",
                            help="the running gateway's OPC UA endpoint (opc.tcp://...)")
        parser.add_argument("--user", metavar="NAME", help="OPC UA user name")
        parser.add_argument("--password-env", metavar="VAR",
                            help="environment variable holding the user's password")
        parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                            help="give up after this many seconds (default 10)")
        parser.add_argument("--json", action="store_true", help="print JSON")

    status = commands.add_parser("status", help="mode, latch, incident and bypasses")
    common(status)
    status.set_defaults(func=_command(_status))

    mode = commands.add_parser("mode", help="ask for a mode: manual, shadow, auto, safe_stop")
    mode.add_argument("mode", metavar="MODE", help=", ".join(MODES))
    common(mode)
    mode.set_defaults(func=_command(_mode))

    reset = commands.add_parser("reset", help="reset a latched trip (admin)")
    common(reset)
    reset.set_defaults(func=_command(_reset))

    bypass = commands.add_parser("bypass", help="bypass a detector for SECONDS (admin)")
    bypass.add_argument("detector", metavar="DETECTOR")
    bypass.add_argument("seconds", metavar="SECONDS")
    common(bypass)
    bypass.set_defaults(func=_command(_bypass))

    unbypass = commands.add_parser("unbypass", help="end a detector's bypass (admin)")
    unbypass.add_argument("detector", metavar="DETECTOR")
    common(unbypass)
    unbypass.set_defaults(func=_command(_unbypass))

    candidate = commands.add_parser("candidate",
                                    help="what the candidate site would have done so far")
    common(candidate, via_required=False)
    candidate.add_argument("--audit", metavar="DB",
                           help="instead of --via: the last report recorded in this audit "
                                "database (every minute while it changes, and at the stop)")
    candidate.set_defaults(func=_command(_candidate))

    reload = commands.add_parser("reload", help="re-read the site file and apply it between "
                                 "two cycles (admin)")
    how = reload.add_mutually_exclusive_group()
    how.add_argument("--dry-run", action="store_true",
                     help="check and show the difference; change nothing")
    how.add_argument("--commit", action="store_true",
                     help="commit a change staged by another admin (two-person change)")
    common(reload)
    reload.set_defaults(func=_command(_reload))


def _command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            code = fn(args)
        except _Fail as exc:
            print(f"safety-gateway ctl {args.ctl_command}: {exc}", file=sys.stderr)
            return exc.code
        return code
    return run


def _session_args(args: argparse.Namespace) -> tuple[str, str | None, str | None, float]:
    """(endpoint, user, password, timeout) after checking them; nothing is sent before."""
    via: str = args.via
    if not via.startswith("opc.tcp://"):
        raise _Fail(EXIT_INPUT, f"--via {via!r}: not an opc.tcp:// endpoint")
    timeout: float = args.timeout
    if not (math.isfinite(timeout) and timeout > 0):
        raise _Fail(EXIT_INPUT, f"--timeout must be a number of seconds > 0, not {timeout}")
    password: str | None = None
    if args.password_env is not None:
        if args.user is None:
            raise _Fail(EXIT_INPUT, "--password-env needs --user")
        password = os.environ.get(args.password_env)
        if password is None:
            raise _Fail(EXIT_INPUT, f"environment variable {args.password_env} is not set")
    return via, args.user, password, timeout


async def _bounded(coro: Any, timeout_s: float) -> Any:
    import asyncio

    # The session has its own timeout per service call; this bounds the whole conversation.
    async with asyncio.timeout(timeout_s * 2):
        return await coro


def _run(coro_factory: Any, timeout_s: float) -> Any:
    # Imported here, like the OPC UA session: every command builds this parser, and only
    # `ctl` talks to a running gateway.
    import asyncio

    from gateway.adapters.opcua.session import GatewayRefused, GatewayUnreachable

    try:
        return asyncio.run(_bounded(coro_factory(), timeout_s))
    except GatewayUnreachable as exc:
        raise _Fail(EXIT_UNREACHABLE, str(exc)) from None
    except TimeoutError:
        raise _Fail(EXIT_UNREACHABLE, f"no answer within {timeout_s * 2:g} s") from None
    except GatewayRefused as exc:
        raise _Fail(EXIT_REFUSED, str(exc)) from None


def _call(args: argparse.Namespace, method: str, values: tuple[str | float, ...]) -> int:
    from gateway.adapters.opcua.session import call_method

    via, user, password, timeout = _session_args(args)
    accepted, message = _run(lambda: call_method(via, user, password, method, values,
                                                 timeout), timeout)
    if args.json:
        print(json.dumps({"command": args.ctl_command, "method": method,
                          "applied": accepted, "message": message}, indent=2))
    if not accepted:
        raise _Fail(EXIT_REFUSED, f"refused: {message}")
    if not args.json:
        print(f"applied: {message}")
    return EXIT_APPLIED


def _mode(args: argparse.Namespace) -> int:
    mode = str(args.mode).strip().lower()
    if mode not in MODES:
        raise _Fail(EXIT_INPUT, f"MODE must be one of {', '.join(MODES)}, not {args.mode!r}")
    return _call(args, "RequestMode", (mode,))


def _reset(args: argparse.Namespace) -> int:
    return _call(args, "ResetTrip", ())


def _detector(args: argparse.Namespace) -> str:
    detector = str(args.detector).strip()
    if not detector:
        raise _Fail(EXIT_INPUT, "DETECTOR must not be empty")
    return detector


def _bypass(args: argparse.Namespace) -> int:
    detector = _detector(args)
    try:
        seconds = float(args.seconds)
    except ValueError:
        raise _Fail(EXIT_INPUT, f"SECONDS must be a number, not {args.seconds!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise _Fail(EXIT_INPUT, f"SECONDS must be finite and > 0, not {args.seconds!r}")
    return _call(args, "Bypass", (detector, seconds))


def _unbypass(args: argparse.Namespace) -> int:
    return _call(args, "EndBypass", (_detector(args),))


def _reload(args: argparse.Namespace) -> int:
    """ReloadSite; prints the outcome (the check's errors, or the difference). Exit codes:
    0 applied, staged, unchanged or dry run; 2 the file does not pass check; 1 refused or
    failed; 3 unreachable."""
    from gateway.adapters.opcua.session import call_method

    via, user, password, timeout = _session_args(args)
    mode = "dry_run" if args.dry_run else "commit" if args.commit else ""
    _, message = _run(lambda: call_method(via, user, password, "ReloadSite", (mode,),
                                          timeout), timeout)
    try:
        outcome = json.loads(message)
        status = str(outcome["status"])
    except (ValueError, KeyError, TypeError):
        raise _Fail(EXIT_REFUSED, f"refused: {message}") from None
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        stream = sys.stdout if status in _RELOAD_OK else sys.stderr
        print(f"{status}: {outcome.get('message', '')}", file=stream)
        for error in outcome.get("errors") or ():
            print(error, file=sys.stderr)  # exactly as `safety-gateway check` prints them
        diff = outcome.get("diff") or {}
        if not outcome.get("errors"):
            for change in diff.get("changes", ()):
                print(f"  {_change_text(change)}", file=stream)
    if status == "invalid":
        return EXIT_INPUT
    return EXIT_APPLIED if status in _RELOAD_OK else EXIT_REFUSED


_RELOAD_OK: Final = ("applied", "staged", "unchanged", "dry_run")


def _change_text(change: dict[str, Any]) -> str:
    where = ".".join(p for p in (change.get("name"), change.get("field")) if p)
    text = f"{change.get('area')} {where}".rstrip() + f" {change.get('direction')}"
    if change.get("old") or change.get("new"):
        text += f": {change.get('old') or '-'} -> {change.get('new') or '-'}"
    if change.get("restart"):
        text += f" (needs a restart: {change['restart']})"
    return text


def _status(args: argparse.Namespace) -> int:
    from gateway.adapters.opcua.session import read_status

    via, user, password, timeout = _session_args(args)
    status = _run(lambda: read_status(via, user, password, timeout), timeout)
    now = datetime.now(UTC)
    view = status.as_dict(now)
    if args.json:
        print(json.dumps(view, indent=2))
        return EXIT_APPLIED
    print(f"mode:      {view['mode']}")
    print("latched:   " + (f"yes: {view['trip_reason']}" if view["latched"] else "no"))
    print("incident:  " + (view["incident_id"] or "open") if view["active_incident"]
          else "incident:  none open")
    if not view["bypasses"]:
        print("bypasses:  none")
    for i, b in enumerate(view["bypasses"]):
        head = "bypasses:  " if i == 0 else "           "
        print(f"{head}{b['detector']} until {b['expires_utc']} "
              f"({b['seconds_left']:g} s left)")
    if view["last_rejection"]:
        print(f"last refused write: {view['last_rejection']}")
    return EXIT_APPLIED


def _candidate(args: argparse.Namespace) -> int:
    if (args.via is None) == (args.audit is None):
        raise _Fail(EXIT_INPUT, "give either --via ENDPOINT (a running gateway) or --audit DB "
                                "(the last recorded report)")
    report = _recorded_report(args.audit) if args.audit is not None else _live_report(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_APPLIED
    try:
        print("\n".join(_candidate_text(report)))
    except (KeyError, TypeError, ValueError) as exc:
        raise _Fail(EXIT_REFUSED, f"the gateway's report is malformed ({exc!r})") from None
    return EXIT_APPLIED


def _live_report(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.adapters.opcua.session import call_method

    via, user, password, timeout = _session_args(args)
    accepted, message = _run(lambda: call_method(via, user, password, "CandidateReport", (),
                                                 timeout), timeout)
    if not accepted:
        raise _Fail(EXIT_REFUSED, f"refused: {message}")
    try:
        report = json.loads(message)
    except ValueError:
        raise _Fail(EXIT_REFUSED, "the gateway's answer is not a report (not JSON)") from None
    if not isinstance(report, dict):
        raise _Fail(EXIT_REFUSED, "the gateway's answer is not a report (not an object)")
    return report


def _recorded_report(path: str) -> dict[str, Any]:
    import sqlite3

    from gateway.audit.store import AuditError
    from gateway.runtime.candidate import last_summary

    if not os.path.isfile(path):
        raise _Fail(EXIT_INPUT, f"--audit {path!r}: no such file")
    try:
        summary = last_summary(Path(path))
    except (AuditError, sqlite3.Error, OSError, ValueError) as exc:
        raise _Fail(EXIT_INPUT, f"--audit {path!r}: cannot be read ({exc})") from None
    if summary is None or not isinstance(summary.get("report"), dict):
        raise _Fail(EXIT_REFUSED, f"--audit {path!r}: no candidate report recorded")
    report: dict[str, Any] = summary["report"]
    return report


_KINDS: Final = {"proposal": "AI proposal", "applied": "written", "write": "write-through",
                 "detector": "detector", "mode": "mode"}


def _utc(at_utc: float | None) -> str:
    if at_utc is None:
        return "-"
    return datetime.fromtimestamp(float(at_utc), UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _candidate_text(report: dict[str, Any]) -> list[str]:
    """The report as lines of text (like ``prove``'s: a summary line, then per constraint or
    detector its count, first and last time and up to three worst cases)."""
    state = ("judging" if report["on"] else
             f"SWITCHED OFF after an error: {report['error']}")
    lines = [f"candidate {report['candidate']}: {state}",
             f"  since {_utc(report['started_utc'])}: {report['cycles_judged']} cycles and "
             f"{report.get('writes_judged', 0)} write-throughs judged, "
             f"{report['disagreements']} disagreements with the enforced site",
             f"  would have: {report['trips']} trips, {report['refusals']} refusals, "
             f"{report['clamps']} clamps, {report['mode_changes']} cycles in another mode"]
    cost = report.get("cost_us_per_cycle")
    if cost is not None:
        lines.append(f"  cost: {float(cost):.1f} us per cycle, after the write")
    last = report.get("last_disagreement")
    if last:
        lines.append(f"  last disagreement at {_utc(last['at_utc'])}: {last['what']}")
    order = {"trip": 0, "mode": 1, "reject": 2, "clamp": 3}
    for t in sorted(report["tallies"], key=lambda t: (order.get(t["action"], 9), t["name"],
                                                      t["kind"])):
        kind = _KINDS.get(t["kind"], t["kind"])
        lines.append(f"  {t['action']:<6} {kind:<13} {t['name']}: {t['count']}")
        for w in t["worst"][:3]:
            mag = w.get("magnitude")
            what = "" if mag is None else f"moved {float(mag):.4g}: "
            lines.append(f"      at {_utc(w.get('at_utc'))}: {what}{w['detail']}")
    if not report["tallies"]:
        lines.append("  nothing would have been clamped, refused or tripped")
    return lines

"""``safety-gateway fleet status|dashboard|incident``: the centre's view of the fleet.

- ``status [--json] [--site ID]``: every site's last heartbeat from ``SG_STATUS`` (created when
  absent: the command may be run before any site connected): health, mode, open incidents with
  the worst severity, heartbeat age, link state, backlog, model in use. A site silent for more
  than three of its heartbeat periods is **stale** (unreachable), never shown as healthy.
  ``--site ID`` shows that site with its incidents. Exit codes: 0 read; 2 bad arguments or no
  such site; 3 the NATS server could not be reached or did not answer.
- ``dashboard --port P``: the fleet page (``gateway.fleet.fleet_page``).
- ``incident SITE ACTION ID [ARG ...] --user U``: work an incident at a site; the site checks the
  user's password and role and answers (``gateway.fleet.commands``). The password comes from
  ``--password-env VAR``, ``--password-file FILE`` or, on a terminal, a prompt; never from the
  command line. Exit codes: 0 accepted; 1 refused by the site (login, role or the incident);
  2 bad arguments (nothing sent); 3 unreachable (no server, no answer within ``--timeout``).

The centre connects to ``--server`` (``nats://`` or ``tls://``), authenticated like a site by
``--credentials`` (a NATS credentials file) and/or a client certificate (``--certificate``,
``--private-key``, checked against ``--ca``).
"""

from __future__ import annotations

import getpass
import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client

__all__ = ["add_parsers", "add_temporary_group"]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_INPUT: Final = 2
EXIT_UNREACHABLE: Final = 3


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_temporary_group(sub: argparse._SubParsersAction[Any]) -> None:
    """Add a ``fleet`` group holding only this module's commands (until the fleet's own
    group, ``gateway.fleet.cli``, calls :func:`add_parsers`)."""
    top = sub.add_parser("fleet", help="the fleet of gateways on NATS JetStream",
                         description="The fleet of gateways on NATS JetStream.")
    commands = top.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND",
                                  parser_class=type(top))
    add_parsers(commands)


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``status``, ``dashboard`` and ``incident`` to the ``fleet`` group's ``commands``."""

    from gateway.fleet.cli import server_args

    def server(parser: argparse.ArgumentParser) -> None:
        server_args(parser)
        parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                            help="give up after this many seconds (default 10)")

    status = commands.add_parser("status", help="every site: mode, incidents, heartbeat, link")
    server(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--site", metavar="ID", help="one site, with its incidents")
    status.set_defaults(func=_command("status", _status))

    page = commands.add_parser("dashboard", help="serve the fleet page")
    server(page)
    page.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    page.add_argument("--port", type=int, default=8090, help="listen port (default 8090)")
    page.add_argument("--period", type=float, default=2.0, metavar="SECONDS",
                      help="read the fleet's status this often (default 2)")
    page.set_defaults(func=_command("dashboard", _dashboard))

    work = commands.add_parser("incident", help="work an incident at a site (the site decides)")
    work.add_argument("site", metavar="SITE", help="the site's id")
    work.add_argument("action", metavar="ACTION",
                      help="note, acknowledge, check, severity, reported, review, action_done, "
                           "approve_draft, resolve, force_resolve")
    work.add_argument("incident_id", metavar="ID", help="the incident's id")
    work.add_argument("args", metavar="ARG", nargs="*", help="the action's arguments")
    server(work)
    work.add_argument("--user", required=True, metavar="NAME", help="your user at the site")
    work.add_argument("--password-env", metavar="VAR",
                      help="environment variable holding the password")
    work.add_argument("--password-file", metavar="FILE", type=Path,
                      help="file holding the password (its first line)")
    work.add_argument("--json", action="store_true", help="print the answer as JSON")
    work.set_defaults(func=_command("incident", _incident))


def _command(name: str, fn: Callable[[argparse.Namespace], int]
             ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except _Fail as exc:
            print(f"safety-gateway fleet {name}: {exc}", file=sys.stderr)
            return exc.code
    return run


# ---------------------------------------------------------------------- the connection

def _checked(args: argparse.Namespace) -> float:
    """The timeout, after checking the connection arguments (nothing is sent before)."""
    url: str = args.server
    if not url.startswith(("nats://", "tls://")):
        raise _Fail(EXIT_INPUT, f"--server {url!r}: not a nats:// or tls:// URL")
    if (args.certificate is None) != (args.private_key is None):
        raise _Fail(EXIT_INPUT, "a client certificate needs both --certificate and "
                                "--private-key")
    for option in ("credentials", "ca", "certificate", "private_key"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            raise _Fail(EXIT_INPUT, f"--{option.replace('_', '-')} {path}: no such file")
    timeout: float = args.timeout
    if not (math.isfinite(timeout) and timeout > 0):
        raise _Fail(EXIT_INPUT, f"--timeout must be a number of seconds > 0, not {timeout}")
    return timeout


def connect_options(args: argparse.Namespace, *, reconnect: bool) -> dict[str, Any]:
    """``nats.connect`` keywords for the centre (``reconnect``: keep trying after a loss,
    for the page; a one-shot command gives up instead)."""
    import ssl

    options: dict[str, Any] = {
        "servers": [args.server], "name": "safety-gateway/centre",
        "connect_timeout": args.timeout, "allow_reconnect": reconnect,
        # nats-py 2.x never gives up on a first connection with 0 attempts: 1 is one retry.
        "max_reconnect_attempts": -1 if reconnect else 1, "reconnect_time_wait": 1}
    if args.server.startswith("tls://") or args.ca is not None or args.certificate is not None:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if args.ca is None else str(args.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if args.certificate is not None:
            context.load_cert_chain(str(args.certificate), str(args.private_key))
        options["tls"] = context
    if args.credentials is not None:
        options["user_credentials"] = str(args.credentials)
    return options


async def _quiet_error(exc: Exception) -> None:
    # nats-py logs every connection error through this callback; the command reports once.
    return None


def _run(args: argparse.Namespace, work: Callable[[Client], Awaitable[int]]) -> int:
    """Connect, run ``work``, close; unreachable servers and timeouts exit 3."""
    import asyncio

    import nats
    import nats.errors

    timeout = _checked(args)

    async def main() -> int:
        try:
            async with asyncio.timeout(timeout * 2 + 1):
                client = await nats.connect(**connect_options(args, reconnect=False),
                                            error_cb=_quiet_error)
                try:
                    return await work(client)
                finally:
                    await client.close()
        except TimeoutError:
            raise _Fail(EXIT_UNREACHABLE, f"no answer within {timeout * 2 + 1:g} s") from None
        except (nats.errors.Error, OSError) as exc:
            raise _Fail(EXIT_UNREACHABLE, f"cannot reach {args.server}: "
                                          f"{exc or type(exc).__name__}") from None

    return asyncio.run(main())


# ---------------------------------------------------------------------- status

def _status(args: argparse.Namespace) -> int:
    from gateway.fleet.status import ensure_status_stream, read_fleet
    from gateway.fleet.subjects import SiteIdError, check_site_id

    if args.site is not None:
        try:
            check_site_id(args.site)
        except SiteIdError as exc:
            raise _Fail(EXIT_INPUT, f"--site: {exc}") from None

    async def work(client: Client) -> int:
        js = client.jetstream(timeout=args.timeout)
        await ensure_status_stream(js)
        now = time.time()
        sites = await read_fleet(js, now, site=args.site)
        if args.site is not None and not sites:
            raise _Fail(EXIT_INPUT, f"site {args.site!r} has never sent a heartbeat")
        rows = [s.row() for s in sites]
        if args.json:
            print(json.dumps({"now_wall_s": now, "sites": rows}, indent=2))
        elif args.site is not None:
            _print_site(rows[0])
        else:
            _print_table(rows)
        return EXIT_OK

    return _run(args, work)


def _age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _model(model: dict[str, Any] | None) -> str:
    if not model:
        return "-"
    sha = model.get("sha256")
    text = str(model.get("version") or Path(str(model.get("path") or "?")).name)
    return f"{text} ({sha[:12]})" if isinstance(sha, str) else text


def _incidents(row: dict[str, Any]) -> str:
    n = row["open_incidents"]
    if n is None:
        return "unknown"
    return f"{n} open ({row['worst_severity']})" if n and row["worst_severity"] else f"{n} open"


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no site has sent a heartbeat yet")
        return
    head = ("SITE", "HEALTH", "MODE", "INCIDENTS", "HEARTBEAT", "LINK", "BACKLOG", "MODEL")
    lines = [head]
    for r in rows:
        health = r["health"].upper() if r["stale"] else r["health"]
        mode = "-" if r["mode"] is None else str(r["mode"]).upper()
        lines.append((r["site"], health, mode, _incidents(r),
                      _age(r["heartbeat_age_s"]), _text(r["link_state"]), _text(r["backlog"]),
                      _model(r["model"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    for r in rows:
        if r["stale"]:
            print(f"{r['site']}: STALE, unreachable: {r['problem']}; its mode and incidents "
                  "are as it last said")


def _when(wall_s: Any) -> str:
    if not isinstance(wall_s, int | float) or not math.isfinite(wall_s):
        return "?"
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print_site(r: dict[str, Any]) -> None:
    print(f"site:       {r['site']}")
    print(f"health:     {r['health'].upper() if r['stale'] else r['health']}"
          + (f" ({r['problem']})" if r["problem"] else ""))
    print(f"heartbeat:  {_age(r['heartbeat_age_s'])} (every {_text(r['heartbeat_s'])} s)")
    print(f"mode:       {_text(r['mode']).upper()}" + (" (as last reported)" if r["stale"] else ""))
    print("latched:    " + (f"yes: {r['trip_reason']}" if r["latched"] else
                            "no" if r["latched"] is not None else "-"))
    print(f"link:       {_text(r['link_state'])}, backlog {_text(r['backlog'])}")
    print(f"model:      {_model(r['model'])}")
    print(f"version:    {_text(r['gateway_version'])}")
    print(f"incidents:  {_incidents(r)}")
    if r["audit_error"]:
        print(f"            (the site cannot read its audit database: {r['audit_error']})")
    for i in r["incidents"] or []:
        print(f"  {i.get('id')}  {'OPEN' if i.get('open') else 'closed'}  {i.get('phase')}  "
              f"severity {_text(i.get('severity'))}  opened {_when(i.get('opened_wall_s'))}  "
              f"{i.get('detector')}: {i.get('reason')}")


# ---------------------------------------------------------------------- dashboard

def _dashboard(args: argparse.Namespace) -> int:
    from gateway.fleet.fleet_page import FleetPage

    timeout = _checked(args)
    if not 0 <= args.port <= 65535:
        raise _Fail(EXIT_INPUT, f"--port must be 0..65535, not {args.port}")
    if not (math.isfinite(args.period) and args.period > 0):
        raise _Fail(EXIT_INPUT, f"--period must be > 0, not {args.period}")

    import asyncio

    async def main() -> int:
        import signal

        import nats
        import nats.errors

        try:
            # Once connected it reconnects for ever; a first connection is given a deadline.
            async with asyncio.timeout(timeout * 2 + 1):
                client = await nats.connect(**connect_options(args, reconnect=True))
        except TimeoutError:
            raise _Fail(EXIT_UNREACHABLE, f"cannot reach {args.server} within "
                                          f"{timeout * 2 + 1:g} s") from None
        except (nats.errors.Error, OSError) as exc:
            raise _Fail(EXIT_UNREACHABLE, f"cannot reach {args.server}: "
                                          f"{exc or type(exc).__name__}") from None
        page = FleetPage(client.jetstream(timeout=timeout), client=client, host=args.host,
                         port=args.port, period_s=args.period, action_timeout_s=timeout)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            try:
                await page.start()
            except OSError as exc:
                raise _Fail(EXIT_INPUT, f"cannot listen on {args.host}:{args.port}: "
                                        f"{exc}") from None
            print(f"fleet page on http://{args.host}:{page.port}/ (Ctrl-C stops it)",
                  flush=True)
            await stop.wait()
        finally:
            await page.stop()
            try:
                await client.close()
            except (ConnectionResetError, nats.errors.Error) as exc:
                # nats-py flushes on close: a server already gone says so, nothing is lost.
                print(f"safety-gateway fleet dashboard: closing the connection: {exc}",
                      file=sys.stderr)
        return EXIT_OK

    return asyncio.run(main())


# ---------------------------------------------------------------------- incident work

def _password(args: argparse.Namespace) -> str:
    if args.password_env is not None and args.password_file is not None:
        raise _Fail(EXIT_INPUT, "give --password-env or --password-file, not both")
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if not password:
            raise _Fail(EXIT_INPUT, f"environment variable {args.password_env} is not set "
                                    "or empty")
        return password
    if args.password_file is not None:
        try:
            lines = args.password_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise _Fail(EXIT_INPUT, f"--password-file: {exc}") from None
        if not lines or not lines[0]:
            raise _Fail(EXIT_INPUT, f"--password-file {args.password_file}: empty")
        return str(lines[0])
    if not sys.stdin.isatty():
        raise _Fail(EXIT_INPUT, "no password: give --password-env or --password-file (no "
                                "terminal to ask on)")
    password = getpass.getpass(f"password of {args.user} at {args.site}: ")
    if not password:
        raise _Fail(EXIT_INPUT, "empty password")
    return password


def _incident(args: argparse.Namespace) -> int:
    from gateway.fleet.commands import Unreachable, ask_incident
    from gateway.fleet.subjects import SiteIdError, check_site_id

    try:
        check_site_id(args.site)
    except SiteIdError as exc:
        raise _Fail(EXIT_INPUT, f"SITE: {exc}") from None
    if not args.action or not args.incident_id:
        raise _Fail(EXIT_INPUT, "ACTION and ID must not be empty")
    if args.action == "evidence":
        raise _Fail(EXIT_INPUT, "evidence is downloaded from the site's own dashboard")
    timeout = _checked(args)
    password = _password(args)

    async def work(client: Client) -> int:
        try:
            answer = await ask_incident(client, args.site, user=args.user, password=password,
                                        action=args.action, incident_id=args.incident_id,
                                        args=tuple(args.args), timeout_s=timeout)
        except Unreachable as exc:
            raise _Fail(EXIT_UNREACHABLE, str(exc)) from None
        except ValueError as exc:
            raise _Fail(EXIT_UNREACHABLE, str(exc)) from None
        if args.json:
            print(json.dumps(answer.as_dict(), indent=2))
        if not answer.accepted:
            raise _Fail(EXIT_REFUSED, f"refused by {args.site}: {answer.reason}")
        if not args.json:
            print(f"accepted by {args.site}: {answer.reason}")
        return EXIT_OK

    return _run(args, work)

"""``safety-gateway fleet model …``: publish approved versions and roll them out to sites.

:func:`add_parsers` adds ``model publish|assign|advance|stop|show`` to the ``fleet`` command's
subparsers (``gateway.fleet.cli``). Each connects to the central NATS server (``--server``,
with ``--credentials`` or a client certificate where the server requires one), does one step
of ``gateway.fleet.models`` and prints what it did (``--json``: one JSON object).

Exit codes, as ``gateway.cli``: 0 done; 1 refused (the version is not approved, revoked or
fails verification; not published; a stopped rollout; nothing left to assign); 2 bad input
(unknown registry, name or version, a bad site id, bad arguments); 3 the server cannot be
reached. Errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.js import JetStreamContext

__all__ = ["add_parsers"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INPUT: Final = 2
EXIT_ENVIRONMENT: Final = 3


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``model`` and its subcommands to the ``fleet`` command's ``commands``."""
    model = commands.add_parser("model", help="publish approved model versions and roll them "
                                              "out to sites (SHADOW first)")
    sub = model.add_subparsers(dest="fleet_model_command", required=True, metavar="COMMAND",
                               parser_class=type(model))

    from gateway.fleet.cli import server_args as connection_args

    def server_args(parser: argparse.ArgumentParser) -> None:
        connection_args(parser)
        parser.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                            help="give up connecting, or waiting for the server's answer, "
                                 "after this many seconds (default 10)")
        parser.add_argument("--by", metavar="WHO",
                            help="who acts (recorded; default: the login name)")
        parser.add_argument("--json", action="store_true", help="print JSON")

    publish = sub.add_parser("publish", help="publish an approved, signed version of the "
                                             "registry to the fleet's object store")
    publish.add_argument("--registry", required=True, type=Path, metavar="DIR",
                         help="the central model registry")
    publish.add_argument("name", metavar="NAME")
    publish.add_argument("version", type=_positive, metavar="VERSION")
    server_args(publish)
    publish.set_defaults(func=_run(_publish, "publish"))

    assign = sub.add_parser("assign", help="roll a published version out to sites, the first "
                                           "N first (--stage N)")
    assign.add_argument("name", metavar="NAME")
    assign.add_argument("--version", required=True, type=_positive, metavar="V")
    assign.add_argument("--sites", required=True, metavar="A,B,...",
                        help="site ids, in rollout order")
    assign.add_argument("--stage", type=_positive, metavar="N",
                        help="assign the first N sites now, the rest with `advance`")
    assign.add_argument("--rollout", metavar="ID", help="the rollout's id (default: generated)")
    server_args(assign)
    assign.set_defaults(func=_run(_assign, "assign"))

    advance = sub.add_parser("advance", help="assign the next sites of a rollout")
    advance.add_argument("rollout", metavar="ROLLOUT")
    advance.add_argument("--stage", type=_positive, metavar="N",
                         help="how many more sites (default: all the rest)")
    server_args(advance)
    advance.set_defaults(func=_run(_advance, "advance"))

    stop = sub.add_parser("stop", help="halt a rollout: withdraw its assignments not yet "
                                       "taken, assign no more sites")
    stop.add_argument("rollout", metavar="ROLLOUT")
    stop.add_argument("--reason", required=True, help="why (recorded)")
    server_args(stop)
    stop.set_defaults(func=_run(_stop, "stop"))

    show = sub.add_parser("show", help="a rollout's plan: sites assigned, pending, its state")
    show.add_argument("rollout", metavar="ROLLOUT")
    server_args(show)
    show.set_defaults(func=_run(_show, "show"))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 3600:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be more than 0 and under 3600, got {text}")
    return value


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment
        return "unknown"


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _run(body: Callable[[argparse.Namespace, JetStreamContext], Awaitable[dict[str, Any]]],
         name: str) -> Callable[[argparse.Namespace], int]:
    """Connect, run ``body``, print its result; known errors become one line and a code."""

    def run(args: argparse.Namespace) -> int:
        import asyncio  # only when a command runs: building the parser stays light

        if not args.by:
            args.by = _login()
        try:
            result = asyncio.run(_connected(args, body))
        except _Failed as exc:
            print(f"safety-gateway fleet model {name}: {exc}", file=sys.stderr)
            return exc.code
        if args.json:
            print(json.dumps(result, sort_keys=True))
        else:
            print(result.pop("message"))
        return EXIT_OK

    return run


async def _connected(args: argparse.Namespace,
                     body: Callable[[argparse.Namespace, JetStreamContext],
                                    Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    import nats
    from nats.errors import Error as NatsError
    from nats.js.errors import Error as JsError

    from gateway.config.schema import FieldError, FleetSpec
    from gateway.fleet.connection import connect_options
    from gateway.fleet.models import RolloutError, RolloutInputError
    from gateway.registry import ModelRefused, RegistryError, RegistryInputError

    try:
        spec = FleetSpec(url=args.server, site_id="fleet-admin", ca=args.ca,
                         certificate=args.certificate, private_key=args.private_key,
                         credentials=args.credentials, connect_timeout_s=args.timeout)
    except (FieldError, ValueError) as exc:
        raise _Failed(EXIT_INPUT, str(exc)) from None
    options = connect_options(spec)
    errors: list[Exception] = []

    async def failed(exc: Exception) -> None:
        errors.append(exc)  # said once below, not logged with a traceback per attempt

    # A command, not a site: one attempt, then an error (a site reconnects without end;
    # nats-py retries a first connection forever unless the attempts are bounded).
    options.update(allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.1,
                   error_cb=failed)
    try:
        client = await nats.connect(**options)
    except (NatsError, OSError, TimeoutError) as exc:
        cause = f" ({errors[-1]})" if errors else ""
        raise _Failed(EXIT_ENVIRONMENT, f"cannot reach {args.server}: "
                                        f"{type(exc).__name__}: {exc}{cause}") from None
    try:
        return await body(args, client.jetstream(timeout=args.timeout))
    except (RegistryInputError, RolloutInputError) as exc:
        raise _Failed(EXIT_INPUT, str(exc)) from None
    except (RolloutError, ModelRefused, RegistryError) as exc:
        raise _Failed(EXIT_FAILED, str(exc)) from None
    except (NatsError, JsError, TimeoutError) as exc:
        raise _Failed(EXIT_ENVIRONMENT, f"the server refused or failed: "
                                        f"{type(exc).__name__}: {exc}") from None
    finally:
        await client.close()


async def _publish(args: argparse.Namespace, js: JetStreamContext) -> dict[str, Any]:
    from gateway.fleet.models import publish
    from gateway.registry import Registry

    manifest = await publish(js, Registry(args.registry), args.name, args.version, args.by)
    return {**asdict(manifest),
            "message": f"published {manifest.name} v{manifest.version} (sha256 "
                       f"{manifest.sha256}, approved by {manifest.approved_by})"}


def _plan_result(plan: Any, verb: str) -> dict[str, Any]:
    return {**asdict(plan), "pending": plan.pending,
            "message": f"rollout {plan.rollout} ({plan.name} v{plan.version}) {verb}: "
                       f"assigned {', '.join(plan.assigned) or 'none'}; pending "
                       f"{', '.join(plan.pending) or 'none'}; {plan.state}"}


async def _assign(args: argparse.Namespace, js: JetStreamContext) -> dict[str, Any]:
    from gateway.fleet.models import assign

    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    plan = await assign(js, sites, args.name, args.version, args.by, stage=args.stage,
                        rollout=args.rollout)
    return _plan_result(plan, "started")


async def _advance(args: argparse.Namespace, js: JetStreamContext) -> dict[str, Any]:
    from gateway.fleet.models import advance

    return _plan_result(await advance(js, args.rollout, args.by, stage=args.stage), "advanced")


async def _stop(args: argparse.Namespace, js: JetStreamContext) -> dict[str, Any]:
    from gateway.fleet.models import stop

    plan, withdrawn = await stop(js, args.rollout, args.by, args.reason)
    result = _plan_result(plan, "stopped")
    result["withdrawn"] = withdrawn
    result["message"] += f"; withdrawn from {', '.join(withdrawn) or 'no site'}"
    return result


async def _show(args: argparse.Namespace, js: JetStreamContext) -> dict[str, Any]:
    from gateway.fleet.models import show

    return _plan_result(await show(js, args.rollout), "is")

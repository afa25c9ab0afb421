"""``safety-gateway fleet ...``: the centre's commands.

- ``fleet init --server URL --sites a,b [--max-age-days D] [--max-bytes-per-site B]``:
  create (or update) each site's stream with retention from the policy
  (:mod:`gateway.fleet.central`).
- ``fleet verify SITE --server URL [--db SITE_AUDIT.db] [--public-key PUB] [--json]``:
  re-verify the site's chain from the central copy (:mod:`gateway.fleet.verify`).
- ``fleet nats-config --sites a,b --out DIR [--host NAME]``: a nats-server configuration with
  TLS, a certificate authority and one client certificate per site, each allowed only its own
  subjects, and a central user who may read everything but write no site's records
  (:mod:`gateway.fleet.permissions`).

Other fleet commands (``status``, ``dashboard``, ``incident``: :mod:`gateway.fleet.view_cli`;
``model ...``: :mod:`gateway.fleet.model_cli`) live in their own modules and register
here through :data:`EXTENSIONS`.

Exit codes: 0 done / verified, 1 verification failed, 2 bad input, 3 server unreachable.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import argparse

    from nats.aio.client import Client

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INPUT: Final = 2
EXIT_UNREACHABLE: Final = 3

EXTENSIONS: Final = ("gateway.fleet.view_cli", "gateway.fleet.model_cli")
"""Modules that add ``fleet`` subcommands: each, if present, has ``add_parsers(commands)``
taking this group's subparsers (``view_cli``: status, dashboard, incident; ``model_cli``:
model publish, assign, advance, stop, show)."""


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    fleet = sub.add_parser("fleet", help="a fleet of gateways on NATS JetStream (the centre)",
                           description=__doc__.split("\n\n")[0])
    commands = fleet.add_subparsers(dest="fleet_command", required=True,
                                    parser_class=type(fleet))

    init = commands.add_parser("init", help="create the sites' streams with retention")
    server_args(init)
    init.add_argument("--sites", required=True, help="site ids, comma separated")
    init.add_argument("--max-age-days", type=float, default=0.0,
                      help="keep records this many days (0: no limit; default 0)")
    init.add_argument("--max-bytes-per-site", type=int, default=-1,
                      help="keep at most this many bytes per site (-1: no limit)")
    init.add_argument("--duplicate-window-s", type=float, default=120.0,
                      help="how long a message id is remembered to drop resends (120)")
    init.add_argument("--replicas", type=int, default=1, help="1, or 3/5 in a cluster")
    init.set_defaults(func=cmd_init)

    ver = commands.add_parser("verify", help="re-verify a site's chain from the central copy")
    ver.add_argument("site", help="the site id")
    server_args(ver)
    ver.add_argument("--db", type=Path, help="the site's audit database, to compare with")
    ver.add_argument("--public-key", type=Path,
                     help="the site's audit public key (<db>.head-key.pub) to pin; default "
                          "with --db: the one beside it, if present")
    ver.add_argument("--json", action="store_true", help="print the verdict as JSON")
    ver.set_defaults(func=cmd_verify)

    cmd = commands.add_parser("nats-config", help="write a nats-server configuration with TLS "
                                                  "and per-site permissions")
    cmd.add_argument("--sites", required=True, help="site ids, comma separated")
    cmd.add_argument("--out", required=True, type=Path, help="folder to write into")
    cmd.add_argument("--host", default="localhost", help="the server's host name (its "
                                                          "certificate names it)")
    cmd.add_argument("--port", type=int, default=4222, help="client port (4222)")
    cmd.set_defaults(func=cmd_nats_config)
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_parsers(commands)


def cmd_nats_config(args: argparse.Namespace) -> int:
    from gateway.fleet.permissions import cmd_nats_config as run

    return run(args)


def server_args(parser: argparse.ArgumentParser) -> None:
    """The centre's connection options, the same for every ``fleet`` command (the view and
    model commands add theirs beside them)."""
    parser.add_argument("--server", required=True, metavar="URL",
                        help="the central NATS server (nats://host:port or tls://...)")
    parser.add_argument("--credentials", metavar="FILE", type=Path,
                        help="NATS credentials file (user JWT and nkey seed)")
    parser.add_argument("--ca", metavar="FILE", type=Path,
                        help="CA certificate(s) the server's certificate is checked against")
    parser.add_argument("--certificate", metavar="FILE", type=Path,
                        help="client certificate (PEM; with --private-key)")
    parser.add_argument("--private-key", metavar="FILE", type=Path,
                        help="the client certificate's private key (PEM)")


async def connect_central(args: argparse.Namespace) -> Client:
    """Connect as the arguments say. Raises ``ValueError`` (bad arguments), ``OSError``/
    ``ssl.SSLError`` (files), nats-py errors (unreachable)."""
    import nats

    from gateway.fleet.central import central_options

    return await nats.connect(**central_options(
        args.server, ca=args.ca, certificate=args.certificate, private_key=args.private_key,
        credentials=args.credentials), error_cb=_quiet)


async def _quiet(exc: Exception) -> None:
    return None


def _sites(text: str) -> list[str]:
    from gateway.fleet.subjects import check_site_id

    sites = [s.strip() for s in text.split(",") if s.strip()]
    if not sites:
        raise ValueError("--sites names no site")
    return [check_site_id(s) for s in sites]


def _unreachable(exc: BaseException) -> bool:
    from nats.errors import Error as NatsError

    return isinstance(exc, (NatsError, OSError, TimeoutError))


def cmd_init(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.fleet.central import RetentionPolicy, ensure_streams

    try:
        sites = _sites(args.sites)
        policy = RetentionPolicy(max_age_s=args.max_age_days * 86400.0,
                                 max_bytes=args.max_bytes_per_site,
                                 duplicate_window_s=args.duplicate_window_s,
                                 replicas=args.replicas)
    except ValueError as exc:
        print(f"safety-gateway fleet init: {exc}", file=sys.stderr)
        return EXIT_INPUT

    async def main() -> dict[str, str]:
        client = await connect_central(args)
        try:
            return await ensure_streams(client, sites, policy)
        finally:
            await client.close()

    try:
        done = asyncio.run(main())
    except ValueError as exc:
        print(f"safety-gateway fleet init: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except Exception as exc:
        if not _unreachable(exc):
            raise
        print(f"safety-gateway fleet init: {args.server}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    for site, what in done.items():
        print(f"{site}: stream SG_{site} {what}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from gateway.audit.signed_head import SignedHeadError, public_key_path, read_public_key
    from gateway.audit.signed_head import key_path as head_key_path
    from gateway.audit.store import NotAuditDatabase
    from gateway.fleet.subjects import SiteIdError, check_site_id
    from gateway.fleet.verify import StreamMissing, verify_site

    prog = "safety-gateway fleet verify"
    try:
        site = check_site_id(args.site)
        pinned = None
        pub = args.public_key
        if pub is None and args.db is not None:
            beside = public_key_path(head_key_path(args.db))
            pub = beside if beside.is_file() else None
        if pub is not None:
            pinned = read_public_key(pub)
        if args.db is not None:
            from gateway.audit.store import open_read

            conn, _ = open_read(args.db)
            conn.close()
    except (SiteIdError, SignedHeadError, NotAuditDatabase, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_INPUT

    async def main() -> Any:
        client = await connect_central(args)
        try:
            return await verify_site(client, site, db=args.db, pinned=pinned)
        finally:
            await client.close()

    try:
        result = asyncio.run(main())
    except StreamMissing as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (ValueError, NotAuditDatabase) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except Exception as exc:
        if not _unreachable(exc):
            raise
        print(f"{prog}: {args.server}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        verdict = "VERIFIED" if result.ok else "FAILED"
        print(f"{site}: {verdict}: {result.records} records up to seq {result.last_seq}, "
              f"{result.heads} signed heads"
              + (f", {result.compared} compared with {args.db}" if result.compared is not None
                 else ""))
        for line in result.problems:
            print(f"  problem: {line}")
        for line in result.notes:
            print(f"  note: {line}")
    return EXIT_OK if result.ok else EXIT_FAILED

"""Container health check: is the gateway cycling?

Reads the heartbeat on the gateway's own OPC UA status (``Status.Heartbeat``, which the safety
core increments every cycle and publishes through the mirror) twice, ``--interval`` seconds
apart. Exit 0 when it moved; 1 when it did not (a stuck cycle, or a communications process
showing a stale mirror) or the gateway cannot be read (one line on stderr says which); 2 for
bad arguments. Anonymous by default; ``--user`` with ``--password-env`` where the site
requires a login.

    python /opt/safety-gateway/deploy/healthcheck.py --via opc.tcp://127.0.0.1:4841/gateway/
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys

from gateway.adapters.opcua.session import GatewayRefused, GatewayUnreachable, read_status


async def stuck(via: str, interval_s: float, timeout_s: float, user: str | None = None,
                password: str | None = None) -> str | None:
    """None when the heartbeat moved within ``interval_s``; otherwise why not."""
    first = await read_status(via, user, password, timeout_s)
    await asyncio.sleep(interval_s)
    second = await read_status(via, user, password, timeout_s)
    if second.heartbeat == first.heartbeat:
        return f"heartbeat stuck at {first.heartbeat} for {interval_s:g} s: not cycling"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--via", required=True, metavar="ENDPOINT", help="opc.tcp:// endpoint")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="time between the two reads (default 1; longer than a cycle)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="per read (default 5)")
    parser.add_argument("--user", help="OPC UA user name")
    parser.add_argument("--password-env", metavar="VAR", help="environment variable with "
                                                              "the user's password")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("interval", "timeout"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            parser.error(f"--{name} must be a number of seconds > 0, not {value}")
    password = None
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if password is None or args.user is None:
            parser.error("--password-env needs --user and the variable set")
    # asyncua warns about the session timeout it negotiated: not the health check's business.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        problem = asyncio.run(stuck(args.via, args.interval, args.timeout, args.user, password))
    except (GatewayUnreachable, GatewayRefused) as exc:
        problem = f"cannot read the gateway's status at {args.via}: {exc}"
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

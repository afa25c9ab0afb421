"""``safety-gateway mcp-stdio SITE --agent NAME``: stdio for a local agent, relayed to the
running gateway's MCP endpoint.

A desktop assistant or an IDE starts it as its MCP server. It reads the site, takes the
agent's token where the site says (its ``token_file`` or ``token_env``; never the command
line), connects to the gateway's streamable HTTP endpoint (``northbound.mcp``) as that agent,
and relays ``tools/list`` and ``tools/call`` both ways. It decides nothing: the gateway's
server authenticates, rate limits, judges and records every call, exactly as for an agent
over HTTP. Exit codes: 0 when the agent closes stdin, 2 a bad site or agent, 3 the gateway
cannot be reached or refuses the token.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.mcp.stdio")

EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3


class Relay:
    """The context-tier middleware that answers ``tools/list`` and ``tools/call`` with the
    gateway's own answers (``remote``: an SDK ``Client`` connected as the agent)."""

    def __init__(self, remote: Any) -> None:
        self.remote = remote

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if ctx.method == "tools/list":
            return await self.remote.list_tools()
        if ctx.method == "tools/call":
            params = ctx.params or {}
            name = params.get("name")
            args = params.get("arguments") or {}
            return await self.remote.call_tool(str(name), args if isinstance(args, dict)
                                               else {"_not_an_object": repr(args)[:200]})
        return await call_next(ctx)


async def relay(url: str, token: str, agent: str) -> int:
    """Serve stdio until the agent closes it; 3 if the gateway cannot be reached."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server.mcpserver import MCPServer
    from mcp.shared._httpx_utils import create_mcp_http_client

    try:
        async with (create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
                    Client(streamable_http_client(url, http_client=http)) as remote):
            await remote.list_tools()  # reachable, and the token is accepted
            server: MCPServer[Any] = MCPServer("safety-gateway", middleware=[Relay(remote)],
                                               log_level="WARNING")
            log.info("relaying stdio for agent %r to %s", agent, url)
            await server.run_stdio_async()
    except (ExceptionGroup, OSError) as exc:  # the SDK wraps what it meets in a group
        print(f"safety-gateway mcp-stdio: cannot use the gateway's MCP endpoint {url} as "
              f"agent {agent!r}: {_first(exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return 0


def _first(exc: BaseException) -> str:
    """The innermost first cause of ``exc`` (through exception groups), as one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def cmd_mcp_stdio(args: argparse.Namespace) -> int:
    import anyio

    from gateway.config.loader import ConfigError, load_config
    from gateway.mcp.agents import read_token

    try:
        site = load_config(args.site)
    except (ConfigError, OSError) as exc:
        print(f"safety-gateway mcp-stdio: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    spec = site.northbound.mcp
    if spec is None:
        print(f"safety-gateway mcp-stdio: {args.site} has no northbound.mcp", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        agent = spec.agent(args.agent)
    except KeyError:
        names = ", ".join(a.name for a in spec.agents)
        print(f"safety-gateway mcp-stdio: no agent {args.agent!r} (agents: {names})",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    token = read_token(agent, os.environ)
    if token is None:
        print(f"safety-gateway mcp-stdio: agent {agent.name!r} has no token (see its "
              "token_file or token_env)", file=sys.stderr)
        return EXIT_BAD_INPUT
    # A wildcard bind is reached on loopback.
    host = "127.0.0.1" if spec.host in ("0.0.0.0", "::", "") else spec.host
    scheme = "https" if spec.certificate is not None else "http"
    url = args.url or f"{scheme}://{host}:{spec.port}{spec.path}"
    # stdout is the protocol's: logs go to stderr only.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    code: int = anyio.run(relay, url, token, agent.name)
    return code


def add_parser(sub: Any) -> None:
    p = sub.add_parser("mcp-stdio", help="serve MCP over stdio for a local agent, relayed to "
                                         "a running gateway's MCP endpoint")
    p.add_argument("site", help="the site's YAML file (northbound.mcp and its agents)")
    p.add_argument("--agent", required=True, help="the agent's name in northbound.mcp.agents")
    p.add_argument("--url", default=None, help="the gateway's MCP endpoint (default: from the "
                                               "site's northbound.mcp)")
    p.set_defaults(func=cmd_mcp_stdio)

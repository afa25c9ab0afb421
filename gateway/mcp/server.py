"""The MCP server: the official ``mcp`` SDK's streamable HTTP transport around the tools.

It runs in the communications process (``gateway.comms.servers``), beside the Modbus and OPC
UA servers, with the same handler (the request channel to the core) and the same views. Each
agent authenticates with its bearer token (``Authorization: Bearer ...``, checked by the SDK's
bearer middleware against :class:`~gateway.mcp.agents.AgentTable`); a request without a valid
token is answered 401 and recorded as a refused connection. TLS when the site gives a
certificate and key.

Every ``tools/call`` is answered by one path, :meth:`ToolBox.call`, through a context-tier
middleware: an unknown tool, malformed arguments, a call outside the role or over the rate
limit is refused and recorded there like any other call (the SDK's own argument validation
never sees the call first, so nothing an agent sends escapes the audit). The tools are
registered with the SDK for their names, descriptions and input schemas only. Answers are
JSON text (and the same object as structured content): data, never prose.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from pydantic import AnyHttpUrl

from gateway.mcp.agents import AgentTable
from gateway.mcp.descriptions import describe_tools
from gateway.mcp.tools import Caller, ToolBox

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.adapters.base import NorthboundHandler
    from gateway.config.schema import McpAgent, McpServerSpec, Site
    from gateway.runtime.view import PlantView

log = logging.getLogger("gateway.mcp")


class _Verifier:
    """The SDK's token verifier over the site's agents (a refused token is evidence)."""

    def __init__(self, agents: AgentTable, on_refused: Callable[[str], None]) -> None:
        self.agents = agents
        self.on_refused = on_refused

    async def verify_token(self, token: str) -> AccessToken | None:
        agent = self.agents.check(token)
        if agent is None:
            self.on_refused("unknown or wrong bearer token")
            return None
        # The token itself is not kept in the answer: the agent's name is its identity.
        return AccessToken(token="-", client_id=agent.name, scopes=[agent.role])


def answer(data: dict[str, Any]) -> types.CallToolResult:
    """A tool's answer: its JSON text (escaped by the encoder), and the same as structured
    content; ``is_error`` for a refusal."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, default=str)
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                structured_content=data,
                                is_error=data.get("status") == "refused")


class ToolCalls:
    """The context-tier middleware that answers every ``tools/call`` with the toolbox."""

    def __init__(self, box: ToolBox, identify: Callable[[Any], Caller | None]) -> None:
        self.box = box
        self.identify = identify

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        caller = self.identify(ctx)
        if caller is None:  # the bearer middleware lets no such request through
            return answer({"status": "refused",
                           "refusal": {"kind": "not_authenticated", "reason": "no agent"}})
        params = ctx.params or {}
        name = params.get("name")
        args = params.get("arguments") or {}
        if not isinstance(args, dict):
            args = {"_not_an_object": repr(args)[:200]}
        data = await self.box.call(caller, name if isinstance(name, str) else repr(name), args)
        return answer(_json_safe(data))


def _json_safe(data: Any) -> Any:
    """``data`` with every float that JSON cannot carry (NaN, inf) as null."""
    if isinstance(data, dict):
        return {str(k): _json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_json_safe(v) for v in data]
    if isinstance(data, float) and not (data == data and abs(data) != float("inf")):
        return None
    return data


def build(site: Site, box: ToolBox, identify: Callable[[Any], Caller | None],
          verifier: _Verifier | None, base_url: str | None) -> MCPServer[Any]:
    """The SDK server with the site's tools (described from the site) and the middleware."""
    auth = None
    if verifier is not None:
        assert base_url is not None
        url = AnyHttpUrl(base_url)
        auth = AuthSettings(issuer_url=url, resource_server_url=url,
                            validate_token_resource=False)
    server: MCPServer[Any] = MCPServer(
        "safety-gateway", version="1", token_verifier=verifier, auth=auth,
        instructions=None, middleware=[ToolCalls(box, identify)], log_level="WARNING")
    for name, (description, fn) in describe_tools(site).items():
        server.add_tool(fn, name=name, description=description, structured_output=False)
    return server


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"MCP server {host}:{port} cannot be bound: "
                                 f"{exc.strerror}") from None
    sock.setblocking(False)
    return sock


class McpServer:
    """The site's MCP server over streamable HTTP (see the module docstring)."""

    def __init__(self, site: Site, spec: McpServerSpec, handler: NorthboundHandler,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.site = site
        self.spec = spec
        self.handler = handler
        self.box = ToolBox(site, spec, handler, clock=clock)
        self.agents: AgentTable | None = None
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.spec.certificate is not None else "http"
        return f"{scheme}://{self.spec.host}:{self.spec.port}{self.spec.path}"

    def _identify(self, ctx: Any) -> Caller | None:
        assert self.agents is not None
        request = getattr(ctx, "request", None)
        token = get_access_token()
        if token is None:
            user = getattr(request, "scope", {}).get("user") if request is not None else None
            token = getattr(user, "access_token", None)
        if token is None:
            return None
        agent = self.agents.agents.get(token.client_id)
        if agent is None:
            return None
        client = getattr(request, "client", None)
        address = f"{client.host}:{client.port}" if client is not None else "?"
        return Caller(agent, address)

    def _refused(self, reason: str) -> None:
        self.handler.refused_connection("mcp", f"{self.spec.host}:{self.spec.port}", None,
                                        "login", reason)

    async def start(self) -> None:
        """Listen; returns once the port is bound. Raises OSError for a port taken,
        ValueError for agents sharing a token."""
        import uvicorn

        self.agents = AgentTable(self.spec)
        verifier = _Verifier(self.agents, self._refused)
        base = self.url.removesuffix(self.spec.path)
        server = build(self.site, self.box, self._identify, verifier, base + self.spec.path)
        app = server.streamable_http_app(streamable_http_path=self.spec.path,
                                         stateless_http=True, json_response=True,
                                         host=self.spec.host)
        config = uvicorn.Config(
            app, host=self.spec.host, port=self.spec.port, log_level="warning",
            access_log=False, lifespan="on",
            ssl_certfile=str(self.spec.certificate) if self.spec.certificate else None,
            ssl_keyfile=str(self.spec.private_key) if self.spec.private_key else None)
        config.load()
        if config.ssl is not None:
            # As the dashboard: TLS 1.2 or later, whatever the system's OpenSSL defaults.
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        # Bound here, so that a port taken is an OSError (uvicorn would exit the process).
        sock = _bind(self.spec.host, self.spec.port)
        self._server = uvicorn.Server(config)
        # uvicorn's own signal handlers would take the process's SIGTERM from us.
        self._server.install_signal_handlers = lambda: None
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="mcp server")
        while not self._server.started:
            if self._task.done():
                sock.close()
                raise OSError(f"MCP server {self.spec.host}:{self.spec.port} did not start")
            await asyncio.sleep(0.01)
        log.info("MCP server listening on %s (%d agents)", self.url, len(self.spec.agents))

    async def stop(self) -> None:
        """Stop listening and record the open call windows. Idempotent."""
        task, self._task = self._task, None
        if task is not None and self._server is not None:
            self._server.should_exit = True
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.box.close()

    def publish(self, view: PlantView) -> None:
        self.box.publish(view)

    def agent(self, name: str) -> McpAgent:
        return self.spec.agent(name)

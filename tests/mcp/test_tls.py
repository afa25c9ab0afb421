"""The MCP endpoint over HTTPS (``northbound.mcp.certificate`` and ``private_key``): an agent
that trusts the certificate reads the plant; TLS 1.2 at least; plain HTTP gets no answer."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import TYPE_CHECKING

from gateway.adapters.base import ClientInfo, NorthboundHandler, WriteOutcome
from gateway.config.schema import McpAgent, McpServerSpec
from gateway.mcp.server import McpServer
from simulators.ports import free_port
from tests.ops.test_http_tls import self_signed
from tests.ops.test_margins import SITE

if TYPE_CHECKING:
    from pathlib import Path


class Core(NorthboundHandler):
    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        raise AssertionError("not used")

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        raise AssertionError("not used")


def test_https_endpoint(tmp_path: Path) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    cert, key = self_signed(tmp_path)
    (tmp_path / "t").write_text("tls-token-0123456789")
    spec = McpServerSpec(agents=(McpAgent("a", "viewer", token_file=tmp_path / "t"),),
                         port=free_port(), certificate=cert, private_key=key)

    async def main() -> None:
        server = McpServer(SITE, spec, Core())
        await server.start()
        try:
            assert server.url.startswith("https://")
            trusted = ssl.create_default_context(cafile=str(cert))
            headers = {"Authorization": "Bearer tls-token-0123456789"}
            async with (httpx2.AsyncClient(verify=trusted, headers=headers) as http,
                        Client(streamable_http_client(server.url, http_client=http)) as c):
                result = await c.call_tool("read_plant", {})
                assert json.loads(result.content[0].text) == {
                    "status": "done", "available": False, "why": "no_view_yet"}
            context = server._server.config.ssl
            assert context.minimum_version is ssl.TLSVersion.TLSv1_2
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.port)
            writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            assert not (await asyncio.wait_for(reader.read(100), 10)).startswith(b"HTTP/1.1 2")
            writer.close()
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(main(), 60))

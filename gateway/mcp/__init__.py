"""LLM agents as controllers over the Model Context Protocol (issue 22).

The MCP server is one more northbound server in the communications process, never in the
safety core: an agent in role ``ai`` proposes exactly as an external AI writing over Modbus or
OPC UA does, and the envelope, the detectors and the mode machine dispose.

- :mod:`gateway.mcp.outcome`: the real outcome of a proposal, as the cycle that judged it
  decided (pure; the core builds it, the channel carries it).
- :mod:`gateway.mcp.agents`: the site's agents, their roles and bearer tokens.
- :mod:`gateway.mcp.limits`: per-agent call rate limits (pure, clock injected).
- :mod:`gateway.mcp.plant`: what ``read_plant``, ``describe_envelope`` and ``check_command``
  answer, from the core's latest view (pure).
- :mod:`gateway.mcp.calls`: every call as evidence, aggregated per window.
- :mod:`gateway.mcp.tools`: the tools, by role, rate limited and audited (no SDK).
- :mod:`gateway.mcp.descriptions`: the tools' descriptions and schemas, from the site.
- :mod:`gateway.mcp.server`: the official ``mcp`` SDK's streamable HTTP server around them.
- :mod:`gateway.mcp.stdio`: ``safety-gateway mcp-stdio``: stdio for a local agent, relayed to
  a running gateway's HTTP endpoint.

Only :mod:`gateway.mcp.server` and :mod:`gateway.mcp.stdio` import the SDK.
"""

"""The site's MCP agents and their bearer tokens.

Each agent's token is read once, when the server starts, from its ``token_file`` or its
``token_env`` (never from the command line), and only its SHA-256 digest is kept. A token is
checked by comparing its digest with every agent's in constant time
(:func:`hmac.compare_digest`, and every agent is compared, so the time does not tell which
came close). An agent whose token is missing or empty cannot connect; that is logged once.
Two agents with the same token would be one identity under two names: refused at start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import TYPE_CHECKING

from gateway.adapters.base import Role

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.config.schema import McpAgent, McpServerSpec

log = logging.getLogger("gateway.mcp")


def read_token(agent: McpAgent, environ: Mapping[str, str]) -> str | None:
    """The agent's token (surrounding whitespace removed), or None when unset, empty or
    unreadable (logged)."""
    if agent.token_env is not None:
        token = environ.get(agent.token_env, "").strip()
        if not token:
            log.warning("MCP agent %r cannot connect: environment variable %s is %s",
                        agent.name, agent.token_env,
                        "empty" if agent.token_env in environ else "not set")
            return None
        return token
    assert agent.token_file is not None
    try:
        token = agent.token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("MCP agent %r cannot connect: its token file %s cannot be read: %s",
                    agent.name, agent.token_file, exc)
        return None
    if not token:
        log.warning("MCP agent %r cannot connect: its token file %s is empty", agent.name,
                    agent.token_file)
        return None
    return token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class AgentTable:
    """Who a bearer token belongs to. Raises ValueError when two agents share a token."""

    def __init__(self, spec: McpServerSpec,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.agents = {a.name: a for a in spec.agents}
        self._digests: list[tuple[str, bytes]] = []
        for agent in spec.agents:
            token = read_token(agent, env)
            if token is not None:
                self._digests.append((agent.name, _digest(token)))
        seen: dict[bytes, str] = {}
        for name, digest in self._digests:
            if digest in seen:
                raise ValueError(f"MCP agents {seen[digest]!r} and {name!r} have the same "
                                 "token: each agent needs its own")
            seen[digest] = name

    def check(self, token: str) -> McpAgent | None:
        """The agent whose token this is, else None."""
        digest = _digest(token)
        found: str | None = None
        for name, expected in self._digests:  # every one compared: no early exit
            if hmac.compare_digest(digest, expected):
                found = name
        return self.agents[found] if found is not None else None

    @staticmethod
    def role(agent: McpAgent) -> Role:
        return Role(agent.role)

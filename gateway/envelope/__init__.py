"""The safety envelope: compile a site's limits once, check every command against them.

``ENGINE`` is ``"cython"`` or ``"python"``, chosen at import (see
:func:`gateway.envelope.engine.select_engine`); ``compile(site)`` returns an
:class:`Envelope` whose ``check(command, previous, sensors, dt)`` returns a :class:`Verdict`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.envelope.compiled import Action, CompiledEnvelope, compile_site
from gateway.envelope.engine import (
    ENGINES,
    EngineUnavailable,
    Envelope,
    Verdict,
    select_engine,
)

if TYPE_CHECKING:
    from gateway.config.schema import Site

__all__ = ["ENGINE", "ENGINES", "Action", "CompiledEnvelope", "EngineUnavailable", "Envelope",
           "Verdict", "compile", "select_engine"]

ENGINE: str = select_engine()
if ENGINE == "python":
    logging.getLogger("gateway.envelope").warning(
        "envelope engine: python (reference). The compiled engine is %s.",
        "disabled by SAFETY_GATEWAY_ENGINE" if select_engine({"SAFETY_GATEWAY_ENGINE": ""})
        == "cython" else "not installed",
    )


def compile(site: Site, engine: str | None = None) -> Envelope:
    """Compile ``site``'s envelope for ``engine`` (default: :data:`ENGINE`)."""
    return Envelope(compile_site(site), engine or ENGINE)

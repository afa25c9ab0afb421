"""What caused an incident, as a drill scores it: the gateway's own mapping
(:mod:`gateway.incident.causes`), so that a drill scores exactly the cause each incident
records. A scenario declares one of ``ai_behaviour``, ``sensing``, ``device`` or
``ai_unavailable`` per injection; a trip by any other detector names ``other``.
"""

from __future__ import annotations

from gateway.incident.causes import Cause, cause_of

__all__ = ["Cause", "cause_of"]

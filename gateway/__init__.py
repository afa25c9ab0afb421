"""AI safety gateway for critical infrastructure.

Public entry points:

- :func:`load_config` reads and validates a site YAML file.
- :mod:`gateway.envelope` compiles a site's safety envelope and checks commands against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import ConfigError, load_config

__all__ = ["ConfigError", "load_config"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import gateway.control.pid` does not pull in the YAML stack.
    if name in __all__:
        from gateway import config

        return getattr(config, name)
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")

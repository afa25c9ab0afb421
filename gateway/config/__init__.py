"""Site configuration: YAML in, frozen validated dataclasses out."""

from gateway.config.loader import ConfigError, load_config
from gateway.config.schema import Site

__all__ = ["ConfigError", "Site", "load_config"]

"""Performance benchmarks, run by ``safety-gateway bench <name>``.

Each entry of :data:`BENCHES` provides ``run(quick)`` returning a JSON-ready dict of figures,
and ``format_text(result)`` rendering it as a readable table.
"""

from __future__ import annotations

from typing import Any, Protocol

from benchmarks import (
    audit,
    envelope,
    fleet,
    interference,
    learn,
    mcp,
    reload,
    replay,
    startup,
    supervisor,
    wire,
)


class BenchModule(Protocol):
    """What ``safety-gateway bench`` needs from a benchmark (a module satisfies it)."""

    def run(self, quick: bool) -> dict[str, Any]: ...

    def format_text(self, result: dict[str, Any]) -> str: ...


BENCHES: dict[str, BenchModule] = {
    "audit": audit,
    "envelope": envelope,
    "fleet": fleet,
    "interference": interference,
    "learn": learn,
    "mcp": mcp,
    "reload": reload,
    "replay": replay,
    "startup": startup,
    "supervisor": supervisor,
    "wire": wire,
}

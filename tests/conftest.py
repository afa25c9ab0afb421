"""Shared fixtures. Every envelope-dependent test runs against both engines.

A missing compiled engine FAILS the cython-parametrised tests (it is never skipped): CI must
prove the engine we ship.
"""

from __future__ import annotations

import pytest

from gateway.envelope.engine import ENGINES


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "cython":
        try:
            import _fastcheck.envelope  # noqa: F401
        except ImportError as exc:  # pragma: no cover - a broken install must fail loudly
            pytest.fail(f"compiled engine not importable: {exc}")
    return name

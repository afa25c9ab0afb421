"""kill -9 during heavy audit writes, a few times: every acknowledged record survives and the
chain verifies (``scripts/audit_kill_reliability.py --kills 100`` does the same at length)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit_kill_reliability.py"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("audit_kill_reliability", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_acknowledged_records_survive_kill_9(harness, tmp_path):
    done, failures = harness.run(4, tmp_path, seed=20261126)
    assert done == 4
    assert failures == []


def test_kill_during_creation_leaves_an_openable_database(harness, tmp_path):
    db = tmp_path / "early.db"
    rng = random.Random(7)
    # Some kills land before or during the creation of the database; the next child must
    # still open it and carry on.
    for _ in range(2):
        rng.random = lambda: 0.0  # type: ignore[method-assign]  # always the early kill
        outcome = harness.one_kill(db, rng)
        assert outcome.ok, outcome.message
    outcome = harness.one_kill(db, random.Random(8))
    assert outcome.ok, outcome.message

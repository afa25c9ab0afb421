from __future__ import annotations

import math

import pytest

from gateway.adapters.base import TagStore


def test_never_read_tag_is_bad_and_infinitely_old():
    store = TagStore(("a",))
    snap = store.snapshot(["a"], 10.0)
    assert math.isnan(snap.sensors[0])
    assert not snap.good[0]
    assert snap.age_s[0] == math.inf


def test_mark_bad_keeps_the_value_and_its_age_keeps_growing():
    store = TagStore(("a", "b"))
    store.update("a", 1.5, True, 10.0)
    store.mark_bad(["a", "b"])
    store.mark_bad(["a", "b"])  # marking again must not make the reading look fresh
    snap = store.snapshot(["a", "b"], 13.0)
    assert snap.sensors[0] == 1.5
    assert not snap.good[0]
    assert snap.age_s[0] == 3.0
    assert snap.age_s[1] == math.inf


def test_unknown_tag():
    with pytest.raises(KeyError, match="unknown tag"):
        TagStore(("a",)).update("b", 1.0, True, 0.0)

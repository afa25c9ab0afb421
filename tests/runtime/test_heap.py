"""The collector's pauses are timed per generation, and start-up's heap can be frozen."""

from __future__ import annotations

import gc
import itertools

from gateway.runtime.heap import GcPauses, freeze_startup_heap


def test_each_collection_is_timed_in_its_generation_until_uninstalled() -> None:
    ticks = itertools.count()
    # 1/64 s steps: every collection "takes" exactly 15.625 ms (no rounding in the sums)
    pauses = GcPauses(clock=lambda: next(ticks) / 64)
    pauses.install()
    pauses.install()  # idempotent: one callback, not two
    try:
        # Automatic collections may come in between: count what each call adds.
        before = list(pauses.count)
        gc.collect(0)
        gc.collect(1)
        gc.collect(2)
        gc.collect(2)
        added = [a - b for a, b in zip(pauses.count, before, strict=True)]
        assert added[0] >= 1 and added[1] >= 1 and added[2] >= 2
    finally:
        pauses.uninstall()
    assert pauses.max_ms == [15.625] * 3
    assert pauses.total_ms == [15.625 * n for n in pauses.count]
    counted = list(pauses.count)
    gc.collect()
    assert pauses.count == counted  # uninstalled: no longer called
    stats = pauses.stats()
    assert stats["gc_collections"] == counted
    assert stats["gc_pause_ms_max"] == [15.625] * 3


def test_a_callback_installed_mid_collection_skips_that_one() -> None:
    pauses = GcPauses(clock=lambda: 1.0)
    pauses._callback("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    assert pauses.count == [0, 0, 0]


def test_freezing_moves_the_live_heap_out_of_the_collectors_way() -> None:
    assert gc.get_freeze_count() == 0
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 10_000
        assert len(gc.get_objects(generation=2)) < frozen  # left for later collections
    finally:
        gc.unfreeze()  # the test process's own heap goes back to normal
    assert gc.get_freeze_count() == 0

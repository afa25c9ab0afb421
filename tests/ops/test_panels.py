"""The dashboard's health and detector panels (gateway.ops.panels): graded from the core's
counters and gauges as they travel with the view."""

from __future__ import annotations

import dataclasses
import math

from gateway.link.counters import CoreCounters, CounterLayout
from gateway.ops.panels import AUDIT_BACKLOG_WARN, detectors, health
from tests.ops.test_margins import view

LAYOUT = CounterLayout(("level",), ("valve",), ("plc", "rtu"))


def counted(**slots: int) -> bytes:
    counters = CoreCounters(LAYOUT)
    for name, value in slots.items():
        counters.values[getattr(LAYOUT, name)] = value
    counters.set_link(0, "connected", 1)
    counters.set_link(1, "connected", 1)
    return counters.snapshot()


def test_healthy_audit_and_links() -> None:
    h = health(dataclasses.replace(view(), counters=counted()), LAYOUT)
    assert h["counted"] is True
    assert h["audit"] == {"level": "ok", "pending": 0, "lost": 0, "fault": False, "alarms": 0}
    assert [(d["name"], d["state"], d["reconnects"], d["level"]) for d in h["devices"]] == [
        ("plc", "connected", 0, "ok"), ("rtu", "connected", 0, "ok")]


def test_a_bad_audit_or_link_is_graded_bad() -> None:
    for slots, level in (({"audit_fault": 1}, "bad"), ({"audit_lost": 3}, "bad"),
                         ({"audit_alarms": 1}, "warn"),
                         ({"audit_pending": AUDIT_BACKLOG_WARN}, "warn"),
                         ({"audit_pending": AUDIT_BACKLOG_WARN - 1}, "ok")):
        h = health(dataclasses.replace(view(), counters=counted(**slots)), LAYOUT)
        assert h["audit"]["level"] == level, slots
    counters = CoreCounters(LAYOUT)
    counters.set_link(0, "backoff", 4)
    counters.set_link(1, "connected", 1)
    h = health(dataclasses.replace(view(), counters=counters.snapshot()), LAYOUT)
    plc = h["devices"][0]
    assert (plc["state"], plc["connects"], plc["reconnects"], plc["level"]) == (
        "backoff", 4, 3, "bad")
    # A client that does not say its state is not shown as healthy, nor as down.
    counters = CoreCounters(LAYOUT)
    counters.set_link(0, "", 0)
    h = health(dataclasses.replace(view(), counters=counters.snapshot()), LAYOUT)
    assert (h["devices"][0]["state"], h["devices"][0]["level"]) == ("unknown", "unknown")


def test_without_counters_nothing_looks_fine() -> None:
    h = health(view(), LAYOUT)  # a view made before the core counted anything
    assert h["counted"] is False
    assert h["audit"]["level"] == "unknown"
    assert {d["level"] for d in h["devices"]} == {"unknown"}


def test_detector_levels() -> None:
    v = dataclasses.replace(
        view(), detector_names=("a", "b", "c", "d", "e", "f"),
        detector_values=(1.0, 8.5, 10.5, math.nan, -0.2, 0.3),
        detector_limits=(10.0, 10.0, 10.0, 10.0, 0.0, 0.0))
    got = {d["name"]: (d["value"], d["fraction"], d["level"]) for d in detectors(v)}
    assert got == {"a": (1.0, 0.1, "ok"), "b": (8.5, 0.85, "near"), "c": (10.5, 1.05, "bad"),
                   "d": (None, None, "unknown"), "e": (-0.2, None, "ok"),
                   "f": (0.3, None, "bad")}

"""The shared-memory mirror: round trip, torn-read safety against a writer in another process,
layout checks, and that nothing is left behind (the reader never unlinks; stale segments of
dead cores are removed)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.link.mirror import (
    MirrorLayout,
    MirrorMismatch,
    MirrorReader,
    MirrorWriter,
    Source,
    remove_stale,
)

SHM = Path("/dev/shm")
LAYOUT = MirrorLayout(("level", "inflow_rate"), ("inflow_valve", "outflow_pump", "drain"))


def publish(writer: MirrorWriter, k: int, **over: object) -> None:
    args: dict[str, object] = dict(
        cycle=k, heartbeat=k, wall_s=1000.0 + k, mode="auto", latched=False,
        sensor_values=[k, k + 0.5], sensor_good=[True, False], sensor_read_s=[k, k],
        applied=[k, k, k], proposal=[k, math.nan, k], source=[1, 2, 3])
    args.update(over)
    writer.publish(**args)  # type: ignore[arg-type]


@pytest.fixture
def writer():
    w = MirrorWriter(None, LAYOUT)
    yield w
    w.close()


def test_round_trip(writer: MirrorWriter) -> None:
    reader = MirrorReader(writer.name, LAYOUT)
    try:
        assert reader.read() is None  # nothing published yet
        publish(writer, 7, mode="safe_stop", latched=True, trip_reason="level high",
                incident_id="INC-3", bypasses=[("drift", 2e9), ("stale", 1.5e9)], generation=4,
                heartbeat=2**64 + 9)
        snap = reader.read()
        assert snap is not None
        assert (snap.cycle, snap.heartbeat, snap.wall_s, snap.generation) == (7, 9, 1007.0, 4)
        assert (snap.mode, snap.latched) == ("safe_stop", True)
        assert (snap.trip_reason, snap.incident_id) == ("level high", "INC-3")
        # earliest expiry first
        assert snap.bypasses == (("stale", 1.5e9), ("drift", 2e9))
        assert snap.sensor_values == (7.0, 7.5)
        assert snap.sensor_good == (True, False)
        assert snap.sensor_read_s == (7.0, 7.0)
        assert snap.applied == (7.0, 7.0, 7.0)
        assert snap.proposal[0] == 7.0 and math.isnan(snap.proposal[1])
        assert snap.source == (Source.AI, Source.FALLBACK, Source.OPERATOR)
        # strings shrink back and bypasses end; no proposal: NaN everywhere
        publish(writer, 8, trip_reason="", incident_id="", bypasses=[], proposal=None)
        snap = reader.read()
        assert snap is not None
        assert (snap.trip_reason, snap.incident_id, snap.bypasses) == ("", "", ())
        assert all(math.isnan(p) for p in snap.proposal)
    finally:
        reader.close()


def test_long_strings_are_cut_at_a_character_boundary(writer: MirrorWriter) -> None:
    reader = MirrorReader(writer.name, LAYOUT)
    publish(writer, 1, trip_reason="é" * 1000, incident_id="x" * 100,
            bypasses=[(f"d{i:02d}" + "ü" * 40, 1e9 + i) for i in range(40)])
    snap = reader.read()
    reader.close()
    assert snap is not None
    assert len(snap.trip_reason.encode()) <= LAYOUT.reason_bytes
    assert snap.trip_reason.endswith("…") and set(snap.trip_reason[:-1]) == {"é"}
    assert len(snap.incident_id.encode()) <= LAYOUT.incident_id_bytes
    assert snap.incident_id.endswith("…")
    assert len(snap.bypasses) == LAYOUT.max_bypasses
    assert [e for _, e in snap.bypasses] == [1e9 + i for i in range(LAYOUT.max_bypasses)]
    assert snap.bypasses[0][0].startswith("d00ü") and snap.bypasses[0][0].endswith("…")


def test_wrong_lengths_and_modes_are_refused(writer: MirrorWriter) -> None:
    with pytest.raises(ValueError, match="broadcast"):
        publish(writer, 1, applied=[1.0, 2.0])
    with pytest.raises(ValueError, match="16 bytes"):
        publish(writer, 1, mode="x" * 17)


def test_a_reader_of_another_layout_is_refused_clearly(writer: MirrorWriter) -> None:
    other = MirrorLayout(("level", "inflow_rate"), ("inflow_valve", "outflow_pump", "drainX"))
    with pytest.raises(MirrorMismatch, match="other tag names"):
        MirrorReader(writer.name, other)
    fewer = MirrorLayout(("level",), ("inflow_valve", "outflow_pump", "drain"))
    with pytest.raises(MirrorMismatch, match="1 and 3"):
        MirrorReader(writer.name, fewer)
    with pytest.raises(FileNotFoundError):
        MirrorReader("sgw-mirror-1-nosuchsegment", LAYOUT)


def test_close_unlinks_and_is_idempotent() -> None:
    w = MirrorWriter(None, LAYOUT)
    assert (SHM / w.name).exists()
    w.close()
    w.close()
    assert not (SHM / w.name).exists()
    with pytest.raises(RuntimeError, match="closed"):
        publish(w, 1)


# A writer in another process: every field of publish k is derived from k, so a copy that
# mixes two publishes shows (a value, a string, the cycle disagree).
WRITER = textwrap.dedent("""
    import sys
    from gateway.link.mirror import MirrorLayout, MirrorWriter
    sensors = tuple(f"s{i}" for i in range(16))
    actuators = tuple(f"a{i}" for i in range(16))
    w = MirrorWriter(None, MirrorLayout(sensors, actuators))
    print(w.name, flush=True)
    k = 0
    try:
        while k < 5_000_000 and not sys.stdin.closed:
            k += 1
            v = [float(k)] * 16
            w.publish(cycle=k, heartbeat=k, wall_s=float(k), mode="auto" if k % 2 else "manual",
                      latched=bool(k % 2), sensor_values=v, sensor_good=[k % 2] * 16,
                      sensor_read_s=v, applied=v, proposal=v, source=[k % 5] * 16,
                      trip_reason=str(k) * (k % 7 + 1), incident_id=f"INC-{k}",
                      bypasses=[(f"d{k}", float(k))] * (k % 3))
            if k % 1000 == 0:
                import select
                if select.select([sys.stdin], [], [], 0)[0]:
                    break
    finally:
        w.close()
""")


def test_a_reader_racing_a_writer_in_another_process_never_sees_a_mix() -> None:
    layout = MirrorLayout(tuple(f"s{i}" for i in range(16)), tuple(f"a{i}" for i in range(16)))
    proc = subprocess.Popen([sys.executable, "-c", WRITER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        name = proc.stdout.readline().strip()
        reader = MirrorReader(name, layout, retries=1000)
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while len(seen) < 2000 and time.monotonic() < deadline:
            snap = reader.read()
            if snap is None:
                continue
            k = snap.cycle
            seen.add(k)
            assert snap.heartbeat == k and snap.wall_s == k
            assert snap.mode == ("auto" if k % 2 else "manual") and snap.latched == bool(k % 2)
            for column in (snap.sensor_values, snap.sensor_read_s, snap.applied, snap.proposal):
                assert column == (float(k),) * 16
            assert snap.sensor_good == (bool(k % 2),) * 16
            assert snap.source == (Source(k % 5),) * 16
            assert snap.trip_reason == str(k) * (k % 7 + 1)
            assert snap.incident_id == f"INC-{k}"
            assert snap.bypasses == ((f"d{k}", float(k)),) * (k % 3)
        assert len(seen) >= 2000, f"only {len(seen)} publishes seen"
        reader.close()
        proc.stdin.write("stop\n")
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert not (SHM / name).exists()


def test_a_reader_process_never_unlinks_the_cores_segment(writer: MirrorWriter) -> None:
    publish(writer, 3)
    script = ("import sys; from gateway.link.mirror import MirrorLayout, MirrorReader;"
              "r = MirrorReader(sys.argv[1], MirrorLayout(('level', 'inflow_rate'),"
              " ('inflow_valve', 'outflow_pump', 'drain')));"
              "print(r.read().cycle)")
    out = subprocess.run([sys.executable, "-c", script, writer.name], capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "3"
    assert "leaked" not in out.stderr and "Traceback" not in out.stderr
    assert (SHM / writer.name).exists()  # still there after the reader exited
    reader = MirrorReader(writer.name, LAYOUT)
    snap = reader.read()
    reader.close()
    assert snap is not None and snap.cycle == 3


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_core_leaves_nothing_the_next_start_trips_on() -> None:
    # A core killed hard (its resource tracker with it) leaves its segment behind.
    script = ("import os, signal, sys; from gateway.link.mirror import MirrorLayout, "
              "MirrorWriter; w = MirrorWriter(None, MirrorLayout(('s',), ('a',)));"
              "print(w.name, flush=True); os.killpg(0, signal.SIGKILL)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    name = proc.stdout.readline().strip()
    proc.stdout.close()
    proc.wait(timeout=60)
    assert name.startswith(f"sgw-mirror-{proc.pid}-")
    # the tracker died with the process group: nothing unlinked it
    assert (SHM / name).exists()
    other = f"sgw-mirror-{os.getpid()}-abcd"  # a live core's: kept
    live = MirrorWriter(other, LAYOUT)
    try:
        fresh = MirrorWriter(None, LAYOUT)  # the next start cleans up the dead core's
        fresh.close()
        assert not (SHM / name).exists()
        assert (SHM / other).exists()
        assert name not in remove_stale()
    finally:
        live.close()


def test_publish_is_cheap(writer: MirrorWriter) -> None:
    """Not a benchmark: a bound far above the few µs measured, that still catches a publish
    that copies or allocates per tag in Python."""
    layout = MirrorLayout(tuple(f"s{i}" for i in range(16)), tuple(f"a{i}" for i in range(16)))
    w = MirrorWriter(None, layout)
    try:
        v = np.arange(16.0)
        good = np.ones(16, bool)
        src = np.ones(16, np.uint8)
        # Detector gauges as the core passes them: the same names and limits every cycle.
        gauge_names = tuple(f"input.stale.s{i}" for i in range(32))
        gauge_limits = (1.0,) * 32
        gauge_values = tuple(float(i) for i in range(32))
        best = math.inf
        for _ in range(5):
            t = time.perf_counter()
            for k in range(1000):
                w.publish(cycle=k, heartbeat=k, wall_s=0.0, mode="auto", latched=False,
                          sensor_values=v, sensor_good=good, sensor_read_s=v, applied=v,
                          proposal=v, source=src, trip_reason="r", incident_id="i",
                          bypasses=[("d", 1.0)], detector_names=gauge_names,
                          detector_values=gauge_values, detector_limits=gauge_limits)
            best = min(best, (time.perf_counter() - t) / 1000)
        assert best < 100e-6
    finally:
        w.close()


def test_layout_checks() -> None:
    with pytest.raises(ValueError, match="distinct"):
        MirrorLayout(("a", "a"), ())
    with pytest.raises(ValueError, match="max_bypasses"):
        MirrorLayout(("a",), ("b",), max_bypasses=300)
    assert MirrorLayout(("a",), ("b",)).layout_id != MirrorLayout(("b",), ("a",)).layout_id


def test_the_counters_cross_with_each_publish() -> None:
    """The core's counter block (gateway.link.counters) is part of the mirror: each publish
    carries it, an empty one leaves the last in place, a wrong size is refused."""
    from gateway.link.counters import CoreCounters, decode

    layout = MirrorLayout(("level",), ("valve",), ("plc", "rtu"))
    counters = CoreCounters(layout.counters)
    w = MirrorWriter(None, layout)
    reader = MirrorReader(w.name, layout)
    try:
        publish_one = dict(heartbeat=1, wall_s=0.0, mode="auto", latched=False,
                           sensor_values=[1.0], sensor_good=[True], sensor_read_s=[0.0],
                           applied=[2.0], proposal=None, source=[1])
        w.publish(cycle=1, counters=counters.snapshot(), **publish_one)  # type: ignore[arg-type]
        snap = reader.read()
        assert snap is not None and decode(layout.counters, snap.counters) == (0,) * len(
            layout.counters.names)
        counters.values[layout.counters.cycles] = 2**64 - 1
        counters.trip("input.stale.level")
        counters.set_link(1, "connected", 3)
        counters.observe(layout.counters.lateness, 0.003)
        w.publish(cycle=2, counters=counters.snapshot(), **publish_one)  # type: ignore[arg-type]
        snap = reader.read()
        assert snap is not None
        slots = decode(layout.counters, snap.counters)
        lay = layout.counters
        assert slots[lay.cycles] == 2**64 - 1
        assert slots[lay.detector_index["input.stale.level"]] == 1
        assert slots[lay.connects + 1] == 3 and slots[lay.connects] == 0
        counts, sum_ns = lay.histogram(slots, lay.lateness)
        assert counts[lay.lateness.bounds_s.index(0.005)] == 1 and sum(counts) == 1
        assert sum_ns == 3_000_000
        w.publish(cycle=3, **publish_one)  # type: ignore[arg-type]
        snap = reader.read()
        assert snap is not None and decode(lay, snap.counters) == slots
        with pytest.raises(ValueError, match="counters: 8 bytes"):
            w.publish(cycle=4, counters=b"\0" * 8, **publish_one)  # type: ignore[arg-type]
    finally:
        reader.close()
        w.close()


def test_a_reader_of_other_devices_is_refused() -> None:
    """The counters' slots name the site's devices: another device list is another layout."""
    w = MirrorWriter(None, MirrorLayout(("level",), ("valve",), ("plc",)))
    try:
        with pytest.raises(MirrorMismatch, match="other tag names"):
            MirrorReader(w.name, MirrorLayout(("level",), ("valve",), ("plc", "rtu")))
    finally:
        w.close()


def test_the_detector_gauges_cross_with_each_publish(writer: MirrorWriter) -> None:
    """Each detector's statistic and threshold travel with each publish, by name; the names
    are written once (the same tuple every cycle) and change when the tuple does."""
    reader = MirrorReader(writer.name, LAYOUT)
    try:
        names = ("violation_rate", "divergence.inflow_valve", "input.stale.level")
        publish(writer, 1, detector_names=names, detector_values=(0.0, 1.5, math.nan),
                detector_limits=(5.0, 4.0, 2.0))
        snap = reader.read()
        assert snap is not None
        assert snap.detectors[:2] == (("violation_rate", 0.0, 5.0),
                                      ("divergence.inflow_valve", 1.5, 4.0))
        name, value, limit = snap.detectors[2]
        assert (name, limit) == ("input.stale.level", 2.0) and math.isnan(value)
        publish(writer, 2, detector_names=names, detector_values=(6.0, 4.5, 0.1),
                detector_limits=(5.0, 4.0, 2.0))
        snap = reader.read()
        assert snap is not None
        assert [v for _, v, _ in snap.detectors] == [6.0, 4.5, 0.1]
        # Other limits with the same names: written too (the names' checksum is kept).
        publish(writer, 3, detector_names=names, detector_values=(6.0, 4.5, 0.1),
                detector_limits=(7.0, 4.0, 2.0))
        snap = reader.read()
        assert snap is not None and [lim for _, _, lim in snap.detectors] == [7.0, 4.0, 2.0]
        publish(writer, 3, detector_names=("canary",), detector_values=(0.25,),
                detector_limits=(0.01,))
        snap = reader.read()
        assert snap is not None and snap.detectors == (("canary", 0.25, 0.01),)
        publish(writer, 4)  # no gauges at all
        snap = reader.read()
        assert snap is not None and snap.detectors == ()
        with pytest.raises(ValueError, match="detector gauges: 1 names, 0 values"):
            publish(writer, 5, detector_names=("canary",))
    finally:
        reader.close()


def test_detector_gauges_are_bounded_and_long_names_cut() -> None:
    """At most ``max_detectors`` gauges are mirrored (the first ones); a name longer than
    ``detector_name_bytes`` is cut at a character boundary with "…" and does not spill into
    its neighbour; the segment's size does not depend on what is published."""
    layout = MirrorLayout(("level",), ("valve",), max_detectors=4, detector_name_bytes=16)
    assert layout.size_bytes == MirrorLayout(("level",), ("valve",), max_detectors=4,
                                             detector_name_bytes=16).size_bytes
    w = MirrorWriter(None, layout)
    reader = MirrorReader(w.name, layout)
    try:
        names = ("ü" * 40, "next", *(f"g{i}" for i in range(10)))
        w.publish(cycle=1, heartbeat=1, wall_s=0.0, mode="auto", latched=False,
                  sensor_values=[1.0], sensor_good=[True], sensor_read_s=[0.0], applied=[2.0],
                  proposal=None, source=[1], detector_names=names,
                  detector_values=[float(i) for i in range(len(names))],
                  detector_limits=[10.0] * len(names))
        snap = reader.read()
        assert snap is not None
        assert len(snap.detectors) == 4
        first = snap.detectors[0][0]
        assert len(first.encode()) <= 16 and first.endswith("…") and set(first[:-1]) == {"ü"}
        assert [d[0] for d in snap.detectors[1:]] == ["next", "g0", "g1"]
        assert [d[1] for d in snap.detectors] == [0.0, 1.0, 2.0, 3.0]
        assert (SHM / w.name).stat().st_size == layout.size_bytes
    finally:
        reader.close()
        w.close()
    with pytest.raises(ValueError, match="max_detectors"):
        MirrorLayout(("a",), ("b",), max_detectors=5000)
    # The gauges' room is part of the layout: a reader built for another room is refused.
    w = MirrorWriter(None, MirrorLayout(("level",), ("valve",), max_detectors=4))
    try:
        with pytest.raises(MirrorMismatch):
            MirrorReader(w.name, MirrorLayout(("level",), ("valve",), max_detectors=8))
    finally:
        w.close()

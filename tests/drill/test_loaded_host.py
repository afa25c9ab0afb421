"""The clean drills on a loaded host: both cores kept busy by other processes, no false trip.

Drills run on a virtual clock, but their device requests, inference and the gateway's waits
for a device's answer are real and take wall time: on a busy host a write that takes longer
than a control cycle must finish in its own time (it is never cut short), and a slow but
timely answer must not become a trip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

BUSY = "while True: pass"


@pytest.fixture
def busy_cores():
    """One busy-loop process per core (at least two), for the duration of the test."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY])
             for _ in range(max(2, os.cpu_count() or 1))]
    try:
        deadline = time.monotonic() + 10
        while any(p.poll() is not None for p in procs):  # pragma: no cover - start failure
            assert time.monotonic() < deadline, "a busy loop did not start"
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=30)


@pytest.mark.parametrize("scenario", ["clean_water_tank", "clean_boiler"])
def test_clean_drill_on_a_loaded_host_has_no_false_trip(busy_cores, scenario):
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "drill", scenario, "--json"],
                            capture_output=True, text=True, timeout=900, check=False)
    assert all(p.poll() is None for p in busy_cores)  # the host stayed loaded throughout
    assert "Traceback" not in result.stderr, result.stderr
    (card,) = json.loads(result.stdout)["scenarios"]
    assert card["false_trips"] == 0, card["first_trip"]
    assert card["unsafe_writes"] == 0, card["unsafe_examples"]
    assert not card["detected"], card["reasons"]
    assert card["passed"], card["reasons"]
    assert result.returncode == 0

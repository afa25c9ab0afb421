"""``safety-gateway bench learn``: ``learn`` on 24 h of 1 s history for 100 tags.

The bench writes a synthetic site (one Modbus device, 80 sensors, 20 actuators) and a
historian CSV of 86,400 rows: each actuator holds a random position for a random time (two to
twenty minutes) and ramps to the next within its rate; each sensor is a first-order process
(time constant 30 to 300 s) driven by one actuator, with measurement noise. It then runs
``safety-gateway learn`` on it in a child process, plots and report included, and reports the
child's wall time and maximum resident set size (``getrusage(RUSAGE_CHILDREN)``, the child
being the only one waited for). Targets (issue 20): at most 30 s and 1 GB. ``--quick``: one
hour of history.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {"wall_s_max": 30.0, "max_rss_mb_max": 1024.0}
FULL_S = 86_400
QUICK_S = 3_600
N_SENSORS = 80
N_ACTUATORS = 20


def site_text(n_sensors: int = N_SENSORS, n_actuators: int = N_ACTUATORS) -> str:
    """A site file with ``n_sensors`` float32 sensors (range -1000..1000) and ``n_actuators``
    uint16 actuators (0..100 %, scale 0.01, safe value 0)."""
    lines = ["site: {name: bench-learn, cycle_ms: 100}",
             "devices:",
             "  plc: {protocol: modbus_tcp, host: 127.0.0.1, port: 5020, unit: 1}",
             "tags:"]
    for i in range(n_sensors):
        lines.append(f"  s{i:03d}: {{device: plc, kind: sensor, table: input_register, "
                     f"address: {2 * i}, type: float32, unit: degC, range: [-1000, 1000]}}")
    for j in range(n_actuators):
        lines.append(f"  a{j:03d}: {{device: plc, kind: actuator, table: holding_register, "
                     f"address: {j}, type: uint16, scale: 0.01, unit: '%', safe_value: 0}}")
    lines += ["envelope:", "  limits:"]
    for j in range(n_actuators):
        lines.append(f"    a{j:03d}: {{min: 0, max: 100, max_rate_per_s: 5, policy: clamp}}")
    lines += ["controller: {kind: none}", "audit: {path: bench_learn_audit.db}"]
    return "\n".join(lines) + "\n"


def history(duration_s: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time, sensors (n, 80), actuators (n, 20)) of the synthetic plant, one row a second."""
    rng = np.random.default_rng(seed)
    n = duration_s + 1
    u = np.empty((n, N_ACTUATORS))
    for j in range(N_ACTUATORS):
        k, value = 0, rng.uniform(10, 90)
        while k < n:
            hold = int(rng.integers(120, 1200))
            target = rng.uniform(10, 90)
            ramp = int(abs(target - value) / 2.0) + 1  # 2 %/s, inside the 5 %/s limit
            u[k:k + hold, j] = value
            u[k + hold:k + hold + ramp, j] = np.linspace(value, target, ramp + 1)[1:][
                :max(0, min(ramp, n - k - hold))]
            k += hold + ramp
            value = target
    driver = rng.integers(0, N_ACTUATORS, N_SENSORS)
    tau = rng.uniform(30, 300, N_SENSORS)
    gain = rng.uniform(0.5, 3.0, N_SENSORS)
    x = np.empty((n, N_SENSORS))
    x[0] = gain * u[0, driver]
    drive = u[:, driver] * gain
    decay = 1.0 / tau
    for k in range(n - 1):
        x[k + 1] = x[k] + (drive[k] - x[k]) * decay
    x += rng.normal(0.0, 0.05, x.shape)
    return np.arange(n, dtype=np.float64), x.astype(np.float32).astype(np.float64), u


def write_csv(path: Path, t: np.ndarray, x: np.ndarray, u: np.ndarray) -> None:
    header = ",".join(["time", *(f"s{i:03d}" for i in range(x.shape[1])),
                       *(f"a{j:03d}" for j in range(u.shape[1]))])
    table = np.column_stack([t, x, np.round(u, 2)])
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.6g")


def run(quick: bool) -> dict[str, Any]:
    duration = QUICK_S if quick else FULL_S
    with tempfile.TemporaryDirectory(prefix="bench-learn-") as tmp:
        folder = Path(tmp)
        site = folder / "site.yaml"
        site.write_text(site_text())
        csv_path = folder / "history.csv"
        gen = time.perf_counter()
        t, x, u = history(duration)
        write_csv(csv_path, t, x, u)
        gen_s = time.perf_counter() - gen
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "learn", str(csv_path), "--site", str(site),
             "--out", str(folder / "proposed.yaml")],
            capture_output=True, text=True, check=False, env={**os.environ},
        )
        wall = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        rss_kb = usage.ru_maxrss
        cpu = (usage.ru_utime - before.ru_utime) + (usage.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise RuntimeError(f"learn exited {proc.returncode}: {proc.stderr.strip()}")
        csv_mb = csv_path.stat().st_size / 1e6
        models = proc.stdout.split("prediction for ", 1)[-1].split(";", 1)[0]
    return {
        "rows": int(t.shape[0]), "tags": N_SENSORS + N_ACTUATORS, "csv_mb": round(csv_mb, 1),
        "generate_s": round(gen_s, 2), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        # The wall time on a shared machine is the CPU time stretched by the other processes'
        # demand: the load average at the start says how busy it was (2 cores here).
        "load_average_1min": round(load, 2),
        # ru_maxrss is in KiB on Linux: the largest of the children waited for (only learn).
        "max_rss_mb": round(rss_kb / 1024.0, 1),
        "sensors_modelled": 0 if models.startswith("no sensor") else len(models.split(", ")),
        "targets": TARGETS,
        "met": {"wall_s": wall <= TARGETS["wall_s_max"],
                "max_rss_mb": rss_kb / 1024.0 <= TARGETS["max_rss_mb_max"]},
        "quick": quick, "python": platform.python_version(), "cpus": os.cpu_count(),
    }


def format_text(result: dict[str, Any]) -> str:
    met = result["met"]
    return "\n".join([
        f"learn on {result['rows']} rows x {result['tags']} tags ({result['csv_mb']} MB CSV; "
        f"generated in {result['generate_s']} s)",
        f"  wall time   {result['wall_s']:>8.2f} s    target <= {TARGETS['wall_s_max']:g} s  "
        f"{'met' if met['wall_s'] else 'MISSED'}",
        f"  CPU time    {result['cpu_s']:>8.2f} s    (load average {result['load_average_1min']} "
        f"on {result['cpus']} CPUs at the start)",
        f"  max RSS     {result['max_rss_mb']:>8.1f} MB   target <= "
        f"{TARGETS['max_rss_mb_max']:g} MB  {'met' if met['max_rss_mb'] else 'MISSED'}",
        f"  sensors with a fitted model: {result['sensors_modelled']} of {N_SENSORS}",
    ])

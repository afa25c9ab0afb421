"""``safety-gateway bench startup``: how fast the command line and the gateway start, and how
much memory the safety core holds once it runs (issue 17, item 3).

Four figures, each the median and the maximum over several runs, each run a fresh process:

- ``help``: ``safety-gateway --help``, its wall time and its peak RSS;
- ``check``: ``safety-gateway check configs/water_tank.yaml`` (a shipped Modbus site), the same;
- ``first_cycle``: ``safety-gateway run`` of the shipped water tank (Modbus southbound; its ports
  and audit path moved to free ones) against a simulated PLC, from the moment the process is
  spawned to the moment the PLC receives the gateway's first heartbeat write. The heartbeat is
  written by every control cycle, the first one included, and by nothing else, so its first
  arrival is the end of the first cycle's device write, seen from outside the gateway: the
  core is not touched. The PLC (``simulators.plc_modbus.TestPLC``) runs in this process and
  stamps each write as it comes off the wire;
- ``core_rss``: the ``run`` process's resident set (``VmRSS`` in ``/proc/PID/status``) one
  second after its first cycle. That process is the safety core: its children (the audit
  writer, the communications process once the northbound servers move there) are reported
  beside it, not added to it.

``first_cycle`` is measured for two sites: the water tank as shipped (northbound Modbus and OPC
UA), and the same site with Modbus only (northbound OPC UA removed). The target holds for the
shipped site.

Peak RSS of a short command is ``ru_maxrss`` from ``wait4``, taken by a small launcher process
(``_LAUNCHER``) that spawns the command. Not from this process: Linux records, at ``exec``, the
peak of the memory the child had *before* it, and a child forked (or vforked) from a large
process would inherit this process's peak. The launcher's own RSS is a floor under the figure
(``rss_floor_mb``): a command that stayed under it reads as the floor.

Start-up on a loaded host is slower: the host's load average before and after is reported, with
the number of CPUs, so that a figure can be read against it.

The commands run as an installed gateway does: with Python's bytecode cache. A
``PYTHONDONTWRITEBYTECODE`` in this environment is removed from theirs (a development shell may
set it; every start would then compile the gateway's modules from source, about 0.3 s here), so
the first, uncounted run of each command writes the cache and the counted runs read it.
``bytecode_cached`` says whether the cache was there for the counted runs (a read-only install
without one cannot write it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from gateway.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SITE = CONFIGS / "water_tank.yaml"
TARGETS = {"help_s_max": 0.3, "check_s_max": 0.5, "first_cycle_s_max": 1.5,
           "core_rss_mb_max": 80.0}
VARIANTS = ("shipped", "modbus_only")
_SETTLE_S = 1.0  # after the first cycle, before the core's RSS is read
_FIRST_CYCLE_TIMEOUT_S = 60.0

# Spawns argv[1:] with its stdin and stdout on /dev/null (stderr is inherited), waits for it,
# and prints its wall time, peak RSS (kB) and exit code as JSON. Kept tiny: the child's
# ru_maxrss is at least this process's RSS (see the module docstring).
_LAUNCHER = """
import os, sys, time
null = os.open(os.devnull, os.O_RDWR)
acts = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1)]
t0 = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=acts)
_, status, usage = os.wait4(pid, 0)
t1 = time.perf_counter()
print('{"wall_s": %r, "peak_rss_kb": %d, "exit_code": %d}'
      % (t1 - t0, usage.ru_maxrss, os.waitstatus_to_exitcode(status)))
"""


class BenchError(RuntimeError):
    """A measured command failed, or the gateway did not reach its first cycle."""


def _command() -> list[str]:
    """How a user starts the gateway: the ``safety-gateway`` script installed beside this
    interpreter, else ``python -m gateway.cli``."""
    script = Path(sys.executable).with_name("safety-gateway")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "gateway.cli"]


def child_env() -> dict[str, str]:
    """The environment of the measured commands: this one, with the bytecode cache on (see
    the module docstring)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _bytecode_cached() -> bool:
    import importlib.util

    import gateway.cli

    cached = importlib.util.cache_from_source(gateway.cli.__file__)
    return Path(cached).is_file()


def launch(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` once through the launcher: ``wall_s``, ``peak_rss_kb``, ``exit_code``.

    ``argv[0]`` must be a path (it is not looked up in PATH). Raises :class:`BenchError` with
    the command's stderr if it exits with a code other than 0."""
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER, *argv],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=child_env())
    if proc.returncode != 0:
        raise BenchError(f"the launcher failed ({proc.returncode}): {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout)
    if result["exit_code"] != 0:
        raise BenchError(f"{' '.join(argv)} exited {result['exit_code']}: "
                         f"{proc.stderr.strip()[-2000:]}")
    return result


def _summary(samples: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(samples), "max": max(samples),
            "samples": [round(s, 4) for s in samples]}


def _timed_command(argv: list[str], runs: int) -> dict[str, Any]:
    launch(argv)  # once to warm the page cache: every run then reads the same files
    results = [launch(argv) for _ in range(runs)]
    return {"command": " ".join(Path(argv[0]).name if i == 0 else a
                                for i, a in enumerate(argv)),
            "wall_s": _summary([r["wall_s"] for r in results]),
            "peak_rss_mb": _summary([r["peak_rss_kb"] / 1024 for r in results])}


# ------------------------------------------------------------------ the run to its first cycle


def site_variant(source: Path, folder: Path, plc_port: int, *, opcua: bool) -> Path:
    """``source`` rewritten for a run here: its Modbus PLC at ``127.0.0.1:plc_port``, its
    northbound servers on free ports (OPC UA removed unless ``opcua``), its audit log in
    ``folder``. Returns the path of the new site file."""
    from simulators.ports import free_port

    doc = yaml.safe_load(source.read_text())
    for device in doc["devices"].values():
        if device.get("protocol") != "modbus_tcp":
            raise ValueError(f"{source}: bench startup needs a Modbus site")
        device["host"], device["port"] = "127.0.0.1", plc_port
    north = doc.get("northbound") or {}
    if "modbus" in north:
        north["modbus"]["port"] = free_port()
    if "opcua" in north:
        if opcua:
            north["opcua"]["endpoint"] = f"opc.tcp://127.0.0.1:{free_port()}/gateway/"
        else:
            del north["opcua"]
    doc["audit"]["path"] = str(folder / "audit.db")
    name = f"{source.stem}{'' if opcua else '_modbus_only'}.yaml"
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _proc_status(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of ``/proc/PID/status``, in kB (empty if the process is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.startswith("Vm") and value.strip().endswith("kB"):
                out[key] = int(value.split()[0])
    return out


def _children(pid: int) -> list[dict[str, Any]]:
    """The process's children: their command line and VmRSS (MB)."""
    found = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            for child in text.split():
                try:
                    argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                found.append({"pid": int(child),
                              "cmdline": " ".join(a.decode(errors="replace") for a in argv
                                                  if a)[:200],
                              "rss_mb": _proc_status(int(child)).get("VmRSS", 0) / 1024})
    return found


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_MARKS = {"open_started_s": "starting site=", "audit_ready_s": "audit log path="}


def _phases(log: Path, spawned_wall: float) -> dict[str, float | None]:
    """When the gateway logged the start of its open and its audit writer's readiness,
    seconds after the spawn (None if not logged): a rough split of the time to the first
    cycle, from the log's millisecond timestamps (local time)."""
    found: dict[str, float | None] = dict.fromkeys(_MARKS)
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            stamp = _STAMP.match(line)
            if stamp is None:
                continue
            for key, text in _MARKS.items():
                if found[key] is None and text in line:
                    at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    found[key] = round(at - spawned_wall, 4)
    return found


def _fresh_run(folder: Path, log_name: str) -> Path:
    """Remove the previous run's audit log (each run starts as a first start would), return
    the path of this run's log."""
    for stale in folder.glob("audit.db*"):
        stale.unlink()
    return folder / log_name


async def _one_run(site: Path, plc: Any, heartbeat: tuple[int, int], folder: Path, k: int
                   ) -> dict[str, Any]:
    """One ``run`` of ``site``, from its spawn to one second after its first cycle, then
    stopped (SIGTERM). ``heartbeat``: the function code and address of its heartbeat write."""
    log = _fresh_run(folder, f"{site.stem}_{k}.log")
    plc.writes.clear()
    with log.open("wb") as err:
        spawned_wall = time.time()
        spawned = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *_command(), "run", str(site), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=err, env=child_env())
    try:
        first: float | None = None
        deadline = spawned + _FIRST_CYCLE_TIMEOUT_S
        while first is None:
            first = next((w.at_s for w in plc.writes
                          if (w.function_code, w.address) == heartbeat), None)
            if first is not None:
                break
            if proc.returncode is not None or time.monotonic() > deadline:
                raise BenchError(f"the gateway did not reach its first cycle (exit code "
                                 f"{proc.returncode}); its log: {log}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.002)
        at_first = _proc_status(proc.pid)
        await asyncio.sleep(_SETTLE_S)
        after = _proc_status(proc.pid)
        children = _children(proc.pid)
        if proc.returncode is not None:
            raise BenchError(f"the gateway exited {proc.returncode} after its first cycle; "
                             f"its log: {log}")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return {"first_cycle_s": first - spawned,
            "rss_mb_at_first_cycle": at_first.get("VmRSS", 0) / 1024,
            "rss_mb": after.get("VmRSS", 0) / 1024,
            "hwm_mb": after.get("VmHWM", 0) / 1024,
            "children": children, "phases": _phases(log, spawned_wall)}


async def first_cycles(runs: int, folder: Path, variants: tuple[str, ...] = VARIANTS,
                       warm: bool = True) -> dict[str, Any]:
    """``runs`` runs of each site variant (``"shipped"``, ``"modbus_only"``) to their first
    cycle, against one simulated PLC; with ``warm``, one run of each first, not counted."""
    from gateway.config.schema import Table
    from simulators.plc_modbus import TestPLC

    ref = yaml.safe_load(SITE.read_text())["devices"]["plc"]["heartbeat"]
    # FC6 (write single register) to a holding register, FC5 (write single coil) to a coil
    heartbeat = (6 if ref["table"] == "holding_register" else 5, int(ref["address"]))
    out: dict[str, Any] = {}
    # A gateway stopped between a request and its answer makes the PLC's server log the
    # frames it could not answer: noise here, not a finding.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # The PLC's clock is this process's monotonic clock: the one the spawn is timed with.
    async with TestPLC(holding=128, input_registers=16, clock=time.monotonic) as plc:
        # A tank at 2.5 m with a little inflow and draw: a plausible plant, no trip at start.
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
        await plc.set_registers(Table.INPUT_REGISTER, 2, [10, 40])
        for name in variants:
            site = site_variant(SITE, folder, plc.port, opcua=name == "shipped")
            if warm:
                await _one_run(site, plc, heartbeat, folder, -1)  # warm the page cache
            results = [await _one_run(site, plc, heartbeat, folder, k) for k in range(runs)]
            out[name] = {
                "first_cycle_s": _summary([r["first_cycle_s"] for r in results]),
                "core_rss_mb": _summary([r["rss_mb"] for r in results]),
                "core_rss_mb_at_first_cycle": _summary(
                    [r["rss_mb_at_first_cycle"] for r in results]),
                "core_hwm_mb": _summary([r["hwm_mb"] for r in results]),
                "children": results[-1]["children"],
                "phases": results[-1]["phases"],
            }
    return out


# ------------------------------------------------------------------ the bench


def run(quick: bool) -> dict[str, Any]:
    load_config(SITE)  # the shipped site, valid (ConfigError if missing: not a checkout)
    runs = 3 if quick else 7
    run_runs = 2 if quick else 5
    load_before = os.getloadavg()
    cmd = _command()
    floor = launch([shutil.which("true") or "/bin/true"])["peak_rss_kb"] / 1024
    help_ = _timed_command([*cmd, "--help"], runs)
    check = _timed_command([*cmd, "check", str(SITE)], runs)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        cycles = asyncio.run(first_cycles(run_runs, Path(tmp)))
    shipped = cycles["shipped"]
    figures = {"help_s": help_["wall_s"]["max"], "check_s": check["wall_s"]["max"],
               "first_cycle_s": shipped["first_cycle_s"]["max"],
               "core_rss_mb": shipped["core_rss_mb"]["max"]}
    passed = {"help_s": figures["help_s"] <= TARGETS["help_s_max"],
              "check_s": figures["check_s"] <= TARGETS["check_s_max"],
              "first_cycle_s": figures["first_cycle_s"] <= TARGETS["first_cycle_s_max"],
              "core_rss_mb": figures["core_rss_mb"] <= TARGETS["core_rss_mb_max"]}
    return {
        "bench": "startup", "quick": quick, "runs": runs, "run_runs": run_runs,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(cmd), "rss_floor_mb": floor,
        "bytecode_cached": _bytecode_cached(),
        "help": help_, "check": check, "run": cycles,
        "targets": TARGETS, "judged_on_max": figures, "pass": passed,
        "all_pass": all(passed.values()),
    }


def format_text(result: dict[str, Any]) -> str:
    def mark(key: str) -> str:
        return "pass" if result["pass"][key] else "FAIL"

    def line(label: str, figure: dict[str, Any], unit: str, target: str, key: str | None
             ) -> str:
        judged = f"  target {target}: {mark(key)}" if key is not None else ""
        return (f"  {label:<34} median {figure['median']:8.3f} {unit:<3} "
                f"max {figure['max']:8.3f} {unit}{judged}")

    t = result["targets"]
    out = [f"bench startup ({result['runs']} runs of each command, {result['run_runs']} "
           f"gateway runs per site; {result['cpus']} CPUs, load average "
           f"{result['load_avg_before'][0]:.2f} before, {result['load_avg_after'][0]:.2f} "
           f"after; Python {result['python']}; bytecode cache "
           f"{'used' if result['bytecode_cached'] else 'NOT available'}; judged on the max)",
           line("--help wall time", result["help"]["wall_s"], "s",
                f"<= {t['help_s_max']} s", "help_s"),
           line("--help peak RSS", result["help"]["peak_rss_mb"], "MB", "", None),
           line("check water_tank.yaml wall time", result["check"]["wall_s"], "s",
                f"<= {t['check_s_max']} s", "check_s"),
           line("check peak RSS", result["check"]["peak_rss_mb"], "MB", "", None)]
    for name, fig in result["run"].items():
        shipped = name == "shipped"
        what = ("site as shipped (Modbus + OPC UA northbound)" if shipped
                else "Modbus only (no OPC UA server)")
        out.append(f"  run, {what}:")
        out.append(line("  spawn to first heartbeat at PLC", fig["first_cycle_s"], "s",
                        f"<= {t['first_cycle_s_max']} s", "first_cycle_s" if shipped else None))
        out.append(line(f"  core RSS {_SETTLE_S:g} s after", fig["core_rss_mb"], "MB",
                        f"<= {t['core_rss_mb_max']:g} MB", "core_rss_mb" if shipped else None))
        phases = ", ".join(f"{k} {v:.3f} s" for k, v in fig["phases"].items() if v is not None)
        if phases:
            out.append(f"    log marks (last run): {phases}")
        for child in fig["children"]:
            out.append(f"    child {child['cmdline'][:70]}: {child['rss_mb']:.1f} MB")
    out.append(f"  (peak RSS figures have a floor of {result['rss_floor_mb']:.1f} MB, the "
               "launcher's own)")
    out.append("all targets met" if result["all_pass"] else "some targets missed")
    return "\n".join(out)

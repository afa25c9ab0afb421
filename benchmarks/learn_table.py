"""The learned-vs-hand-written table of issue 20: ``python -m benchmarks.learn_table [--out DIR]
[--hours H] [--drills] [--long] [--reuse] [--jobs N]``.

For each simulator plant (``configs/water_tank.yaml``, ``configs/boiler.yaml``):

1. a clean simulated day (seed 0) and a second one (seed 1), each ``--hours`` long, written
   at 1 s (:func:`gateway.commissioning.simday.simulate_day`; ``--controller ai``, the
   default: the zoo's nominal model in AUTO, as in the clean drills; ``fallback``: the
   fallback controllers, an operator moving the fixed-value actuators now and then);
2. ``learn`` from the first day (default options) -> ``<plant>.learned.yaml``;
3. ``prove`` of the hand-written and of the learned site against both days, with the full
   supervisor (the days' commands as the AI's proposals in AUTO): trips per constraint and
   detector (on day 2 false, the day being clean), refusals and clamps;
4. with ``--drills``: the project's drills of that plant (``configs/drills/*_<plant>.yaml``)
   run against each site (the scenario copied with ``site:`` pointing at it), pass or fail and
   what tripped; with ``--long``: the long drills too (each fault held for 1,560 s:
   ``ai_silent``, ``sensor_freeze``, ``plc_disconnect``).

``--reuse`` takes a day's CSV already in ``--out`` instead of simulating it again (its
simulation time is read from ``<day>.timing.json`` beside it, when there). Every phase is
timed (wall and CPU seconds). Writes ``table.md`` and ``table.json`` in ``--out`` (default: a
new temporary folder) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PLANTS = {"water_tank": ROOT / "configs" / "water_tank.yaml",
          "boiler": ROOT / "configs" / "boiler.yaml"}
LONG_DRILLS = ("ai_silent", "sensor_freeze", "plc_disconnect")
LONG_DURATION_S = 1560.0


class _Clock:
    """Wall and CPU seconds of one phase (the CPU of this process and its children)."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = self._cpu()

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def done(self) -> dict[str, float]:
        return {"wall_s": round(time.perf_counter() - self.wall, 1),
                "cpu_s": round(self._cpu() - self.cpu, 1)}


def _prove(site_path: Path, history: Any) -> dict[str, Any]:
    from gateway.commissioning.prove import prove
    from gateway.config import load_config

    site = load_config(site_path)
    clock = _Clock()
    result = prove(site, history)
    trips = {t.name: t.count for t in result.tallies.values() if t.action == "trip"}
    refusals = {t.name: t.count for t in result.tallies.values() if t.action == "reject"}
    clamps = {t.name: t.count for t in result.tallies.values() if t.action == "clamp"}
    return {"commands": result.n_commands, "trips": result.trips,
            "refusals": result.count("reject"), "clamps": result.count("clamp"),
            "trip_by": trips, "refusal_by": refusals, "clamp_by": clamps,
            "supervisor": result.supervisor, "commands_as": result.commands_as,
            "time_in_mode_s": {k: round(v, 1) for k, v in result.time_in_mode_s.items()},
            "rearms": result.rearms, "detectors_judged": len(result.detectors_judged),
            "prove": clock.done()}


def _absolute(obj: Any, folder: Path) -> Any:
    """``obj`` with every string that names an existing file relative to ``folder`` made
    absolute (a scenario's own model file), so that the copy runs from another folder."""
    if isinstance(obj, dict):
        return {k: _absolute(v, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_absolute(v, folder) for v in obj]
    if isinstance(obj, str) and obj and not Path(obj).is_absolute() and (
            folder / obj).is_file():
        return str((folder / obj).resolve())
    return obj


def _drills(plant: str, site_path: Path, folder: Path, jobs: int,
            long: bool = False) -> list[dict[str, Any]]:
    scenarios = sorted((ROOT / "configs" / "drills").glob(f"*_{plant}.yaml"))
    extra: list[str] = []
    if long:
        scenarios = [p for p in scenarios if p.stem.removesuffix(f"_{plant}") in LONG_DRILLS]
        extra = ["--duration-s", f"{LONG_DURATION_S:g}"]
    copies = []
    for path in scenarios:
        raw = _absolute(yaml.safe_load(path.read_text(encoding="utf-8")), path.parent)
        raw["site"] = str(site_path.resolve())
        copy = folder / f"{path.stem}{'.long' if long else ''}.{site_path.stem}.yaml"
        copy.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        copies.append(copy)
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "drill", *map(str, copies),
                           "--json", "--jobs", str(jobs), *extra],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"drill exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    cards = json.loads(proc.stdout)["scenarios"]
    out = []
    for path, card in zip(scenarios, cards, strict=True):
        out.append({"scenario": path.stem, "passed": bool(card["passed"]),
                    "summary": {k: card.get(k) for k in (
                        "detected", "time_to_detect_s", "false_trips", "unsafe_writes",
                        "left_safe_range", "first_trip", "reasons")}})
    return out


def _day(site: Any, plant: str, path: Path, hours: float, seed: int, controller: str,
         step_s: float, reuse: bool) -> dict[str, Any]:
    """Simulate one day into ``path`` (or reuse it) and return how long that took."""
    from gateway.commissioning.simday import simulate_day

    timing = path.with_suffix(".timing.json")
    if reuse and path.is_file():
        known = json.loads(timing.read_text()) if timing.is_file() else {}
        return {**known, "reused": True}
    clock = _Clock()
    rows = simulate_day(site, plant, path, duration_s=hours * 3600.0, seed=seed,
                        controller=controller, step_s=step_s)
    took = {"rows": rows, **clock.done()}
    timing.write_text(json.dumps(took), encoding="utf-8")
    return took


def build(out: Path, hours: float, drills: bool, jobs: int, controller: str,
          step_s: float, long: bool = False, reuse: bool = False) -> dict[str, Any]:
    from gateway.commissioning.sources import read_csv
    from gateway.config import load_config

    rows: dict[str, Any] = {}
    started = _Clock()
    for plant, site_path in PLANTS.items():
        site = load_config(site_path)
        day1, day2 = out / f"{plant}.day1.csv", out / f"{plant}.day2.csv"
        timing: dict[str, Any] = {
            "simulate_day1": _day(site, plant, day1, hours, 0, controller, step_s, reuse),
            "simulate_day2": _day(site, plant, day2, hours, 1, controller, step_s, reuse)}
        learned = out / f"{plant}.learned.yaml"
        clock = _Clock()
        proc = subprocess.run([sys.executable, "-m", "gateway.cli", "learn", str(day1),
                               "--site", str(site_path), "--out", str(learned)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"learn exited {proc.returncode}: {proc.stderr.strip()}")
        timing["learn"] = clock.done()
        report = json.loads((out / f"{plant}.learned.json").read_text())
        clock = _Clock()
        h1, h2 = read_csv(day1), read_csv(day2)
        timing["read_days"] = clock.done()
        row: dict[str, Any] = {
            "modelled": [f["sensor"] for f in (report["prediction"] or {"fits": []})["fits"]
                         if f["accepted"]],
            "hand_written": {"day1": _prove(site_path, h1), "day2": _prove(site_path, h2)},
            "learned": {"day1": _prove(learned, h1), "day2": _prove(learned, h2)},
        }
        del h1, h2
        for kind, path in (("hand_written", site_path), ("learned", learned)):
            if drills:
                clock = _Clock()
                row[kind]["drills"] = _drills(plant, path, out, jobs)
                timing[f"drills_{kind}"] = clock.done()
            if long:
                clock = _Clock()
                row[kind]["long_drills"] = _drills(plant, path, out, jobs, long=True)
                timing[f"long_drills_{kind}"] = clock.done()
        row["timing"] = timing
        rows[plant] = row
    return {"hours": hours, "controller": controller, "step_s": step_s, "plants": rows,
            "total": started.done()}


def _passed(drills: list[dict[str, Any]] | None) -> str:
    if drills is None:
        return "not run"
    return f"{sum(d['passed'] for d in drills)} / {len(drills)}"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Learned vs hand-written envelopes ({result['hours']:g} h clean simulated days, "
             f"{result['controller']} in control, a row every {result['step_s']:g} s)",
             "", "Learned from day 1 (seed 0) with the default options; both proved against "
             "day 1 and against a second clean day (seed 1) with the full supervisor (the "
             "days' commands as the AI's proposals in AUTO). Every trip on a clean day is a "
             "false trip.", "",
             "| plant | envelope | day 2 false trips | day 2 refusals | day 2 clamps | "
             "day 1 trips | drills passed | long drills passed | what tripped on day 2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for plant, row in result["plants"].items():
        for kind in ("hand_written", "learned"):
            r = row[kind]
            d2 = r["day2"]
            tripped = ", ".join(f"{k} ({v})" for k, v in d2["trip_by"].items()) or "—"
            lines.append(f"| {plant} | {kind.replace('_', '-')} | {d2['trips']} | "
                         f"{d2['refusals']} | {d2['clamps']} | {r['day1']['trips']} | "
                         f"{_passed(r.get('drills'))} | {_passed(r.get('long_drills'))} | "
                         f"{tripped} |")
    lines.append("")
    for plant, row in result["plants"].items():
        t = row["timing"]
        proofs = ", ".join(f"{kind} day {d}: {row[kind][f'day{d}']['prove']['wall_s']} s"
                           for kind in ("hand_written", "learned") for d in (1, 2))
        lines.append(f"- {plant}: learned a prediction for "
                     f"{', '.join(row['modelled']) or 'no sensor'}. Timing (wall / CPU s): "
                     + "; ".join(f"{k} {v.get('wall_s', '?')} / {v.get('cpu_s', '?')}"
                                 + (" (reused)" if v.get("reused") else "")
                                 for k, v in t.items())
                     + f"; proofs (wall) {proofs}.")
        for key in ("drills", "long_drills"):
            if key not in row["learned"]:
                continue
            for hw, le in zip(row["hand_written"][key], row["learned"][key], strict=True):
                lines.append(f"  - {hw['scenario']}{' (long)' if key == 'long_drills' else ''}"
                             f": hand-written {'PASS' if hw['passed'] else 'FAIL'}, learned "
                             f"{'PASS' if le['passed'] else 'FAIL'} {le['summary']}")
    lines.append(f"\nTotal: {result['total']['wall_s']} s wall, {result['total']['cpu_s']} s "
                 "CPU.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learn_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for the days, sites and table (default: temp)")
    parser.add_argument("--hours", type=float, default=24.0, help="length of each day")
    parser.add_argument("--drills", action="store_true", help="also run the plants' drills")
    parser.add_argument("--long", action="store_true",
                        help=f"also run the long drills ({LONG_DURATION_S:g} s of each fault)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the days already in --out instead of simulating them")
    parser.add_argument("--jobs", type=int, default=1, help="drills in parallel")
    parser.add_argument("--controller", choices=("ai", "fallback"), default="ai",
                        help="who runs the simulated days (default: the nominal model)")
    parser.add_argument("--step", type=float, default=0.1, metavar="SECONDS",
                        help="a history row every SECONDS (default 0.1: every cycle)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="learn-table-"))
    out.mkdir(parents=True, exist_ok=True)
    result = build(out, args.hours, args.drills, args.jobs, args.controller, args.step,
                   long=args.long, reuse=args.reuse)
    (out / "table.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    text = markdown(result)
    (out / "table.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"(files in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

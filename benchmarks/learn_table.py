"""The learned-vs-hand-written table of issue 20: ``python -m benchmarks.learn_table [--out DIR]
[--hours H] [--drills] [--jobs N]``.

For each simulator plant (``configs/water_tank.yaml``, ``configs/boiler.yaml``):

1. a clean simulated day (seed 0) and a second one (seed 1), each ``--hours`` long, written
   at 1 s (:func:`gateway.commissioning.simday.simulate_day`; ``--controller ai``, the
   default: the zoo's nominal model in AUTO, as in the clean drills; ``fallback``: the
   fallback controllers, an operator moving the fixed-value actuators now and then);
2. ``learn`` from the first day (default options) -> ``<plant>.learned.yaml``;
3. ``prove`` of the hand-written and of the learned site against the second day: trips
   (false, the day being clean), refusals and clamps;
4. with ``--drills``: the project's drills of that plant (``configs/drills/*_<plant>.yaml``)
   run against each site (the scenario copied with ``site:`` pointing at it), pass or fail and
   what tripped.

Writes ``table.md`` and ``table.json`` in ``--out`` (default: a new temporary folder) and
prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
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


def _prove(site_path: Path, day: Path) -> dict[str, Any]:
    from gateway.commissioning.prove import prove
    from gateway.commissioning.sources import read_csv
    from gateway.config import load_config

    site = load_config(site_path)
    result = prove(site, read_csv(day))
    trips = {t.name: t.count for t in result.tallies.values() if t.action == "trip"}
    refusals = {t.name: t.count for t in result.tallies.values() if t.action == "reject"}
    clamps = {t.name: t.count for t in result.tallies.values() if t.action == "clamp"}
    return {"commands": result.n_commands, "trips": result.trips,
            "refusals": result.count("reject"), "clamps": result.count("clamp"),
            "trip_by": trips, "refusal_by": refusals, "clamp_by": clamps}


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


def _drills(plant: str, site_path: Path, folder: Path, jobs: int) -> list[dict[str, Any]]:
    scenarios = sorted((ROOT / "configs" / "drills").glob(f"*_{plant}.yaml"))
    copies = []
    for path in scenarios:
        raw = _absolute(yaml.safe_load(path.read_text(encoding="utf-8")), path.parent)
        raw["site"] = str(site_path.resolve())
        copy = folder / f"{path.stem}.{site_path.stem}.yaml"
        copy.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        copies.append(copy)
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "drill", *map(str, copies),
                           "--json", "--jobs", str(jobs)],
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


def build(out: Path, hours: float, drills: bool, jobs: int, controller: str,
          step_s: float) -> dict[str, Any]:
    from gateway.commissioning.simday import simulate_day
    from gateway.config import load_config

    rows: dict[str, Any] = {}
    for plant, site_path in PLANTS.items():
        site = load_config(site_path)
        day1, day2 = out / f"{plant}.day1.csv", out / f"{plant}.day2.csv"
        started = time.perf_counter()
        simulate_day(site, plant, day1, duration_s=hours * 3600.0, seed=0,
                     controller=controller, step_s=step_s)
        simulate_day(site, plant, day2, duration_s=hours * 3600.0, seed=1,
                     controller=controller, step_s=step_s)
        simulated = time.perf_counter() - started
        learned = out / f"{plant}.learned.yaml"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "gateway.cli", "learn", str(day1),
                               "--site", str(site_path), "--out", str(learned)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"learn exited {proc.returncode}: {proc.stderr.strip()}")
        learn_s = time.perf_counter() - started
        report = json.loads((out / f"{plant}.learned.json").read_text())
        row: dict[str, Any] = {
            "simulate_two_days_s": round(simulated, 1), "learn_s": round(learn_s, 1),
            "modelled": [f["sensor"] for f in (report["prediction"] or {"fits": []})["fits"]
                         if f["accepted"]],
            "hand_written": {"day1": _prove(site_path, day1), "day2": _prove(site_path, day2)},
            "learned": {"day1": _prove(learned, day1), "day2": _prove(learned, day2)},
        }
        if drills:
            row["hand_written"]["drills"] = _drills(plant, site_path, out, jobs)
            row["learned"]["drills"] = _drills(plant, learned, out, jobs)
        rows[plant] = row
    return {"hours": hours, "controller": controller, "step_s": step_s, "plants": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Learned vs hand-written envelopes ({result['hours']:g} h clean simulated days, "
             f"{result['controller']} in control, a row every {result['step_s']:g} s)",
             "", "Learned from day 1 (seed 0) with the default options; both proved against "
             "day 1 and against a second clean day (seed 1). Every trip on a clean day is a "
             "false trip.", "",
             "| plant | envelope | day 2 false trips | day 2 refusals | day 2 clamps | "
             "day 1 trips | drills passed | what tripped on day 2 |",
             "|---|---|---|---|---|---|---|---|"]
    for plant, row in result["plants"].items():
        for kind in ("hand_written", "learned"):
            r = row[kind]
            d2 = r["day2"]
            drills = r.get("drills")
            passed = ("not run" if drills is None else
                      f"{sum(d['passed'] for d in drills)} / {len(drills)}")
            tripped = ", ".join(f"{k} ({v})" for k, v in d2["trip_by"].items()) or "—"
            lines.append(f"| {plant} | {kind.replace('_', '-')} | {d2['trips']} | "
                         f"{d2['refusals']} | {d2['clamps']} | {r['day1']['trips']} | "
                         f"{passed} | {tripped} |")
    lines.append("")
    for plant, row in result["plants"].items():
        lines.append(f"- {plant}: learned a prediction for "
                     f"{', '.join(row['modelled']) or 'no sensor'}; two days simulated in "
                     f"{row['simulate_two_days_s']} s, learn took {row['learn_s']} s.")
        if "drills" in row["learned"]:
            for hw, le in zip(row["hand_written"]["drills"], row["learned"]["drills"],
                              strict=True):
                lines.append(f"  - {hw['scenario']}: hand-written "
                             f"{'PASS' if hw['passed'] else 'FAIL'}, learned "
                             f"{'PASS' if le['passed'] else 'FAIL'} {le['summary']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learn_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for the days, sites and table (default: temp)")
    parser.add_argument("--hours", type=float, default=24.0, help="length of each day")
    parser.add_argument("--drills", action="store_true", help="also run the plants' drills")
    parser.add_argument("--jobs", type=int, default=1, help="drills in parallel")
    parser.add_argument("--controller", choices=("ai", "fallback"), default="ai",
                        help="who runs the simulated days (default: the nominal model)")
    parser.add_argument("--step", type=float, default=0.1, metavar="SECONDS",
                        help="a history row every SECONDS (default 0.1: every cycle)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="learn-table-"))
    out.mkdir(parents=True, exist_ok=True)
    result = build(out, args.hours, args.drills, args.jobs, args.controller, args.step)
    (out / "table.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    text = markdown(result)
    (out / "table.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"(files in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``safety-gateway drill [SCENARIO ...] [--all] [--no-gateway] [--report DIR] [--json]
[--markdown] [--seed N] [--duration-s S] [--jobs N] [--live [--live-timeout-s S]]
[--dashboard [HOST:]PORT] [--realtime] [--user NAME[:ROLE] ...]``.

Exit codes: 0 every drill passed; 1 a drill failed (an unsafe write reached the plant, an
attack was not detected within its budget, a false trip, the process left its safe range, or
the run itself broke); 2 bad input (unknown scenario, invalid scenario file, a duration too short
for a scenario). A baseline run (``--no-gateway``) has no pass or fail of its own: it shows what
happens without the gateway, and exits 0 once it ran.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from simulators.drill.live import LiveScore
    from simulators.drill.score import Scorecard
    from simulators.drill.serve import DrillServing

__all__ = ["DEFAULT_SCENARIO", "add_parser", "drills_dir", "find_scenario"]

DEFAULT_SCENARIO = "backdoor_water_tank"


def drills_dir() -> Path:
    """``configs/drills`` of the source checkout (the package's sibling), else of the current
    directory."""
    here = Path(__file__).resolve().parents[2] / "configs" / "drills"
    return here if here.is_dir() else Path("configs") / "drills"


def find_scenario(name: str) -> Path | None:
    path = Path(name)
    if path.is_file():
        return path
    candidate = drills_dir() / f"{name}.yaml"
    return candidate if candidate.is_file() else None


def add_parser(sub: Any) -> None:
    p = sub.add_parser("drill", help="run incident drills against simulated plants")
    p.add_argument("scenario", nargs="*", default=[],
                   help=f"scenario names in configs/drills/ or paths (default "
                        f"{DEFAULT_SCENARIO}: a backdoored model on the water tank); several "
                        "run in parallel (--jobs) and print one table")
    p.add_argument("--all", action="store_true", help="run every scenario, print one table")
    p.add_argument("--no-gateway", action="store_true",
                   help="baseline: wire the AI straight to the plant (shows the harm)")
    p.add_argument("--baselines", action="store_true",
                   help="with --all: also run each attack's baseline (a single scenario "
                        "always does)")
    p.add_argument("--report", metavar="DIR",
                   help="write scorecards (Markdown, JSON), plots, the files each run used, "
                        "and summary.md / summary.json for the whole set")
    p.add_argument("--markdown", action="store_true",
                   help="print the summary as Markdown (a team's drill record) instead of "
                        "the table")
    p.add_argument("--json", action="store_true", help="print the scorecards as JSON")
    p.add_argument("--live", action="store_true",
                   help="after the drill, wait for the people on shift to work its incident "
                        "(incidents ack/check/resolve --db) and score them; one scenario, "
                        "with --report")
    p.add_argument("--live-timeout-s", type=float, default=1800.0, metavar="S",
                   help="with --live: stop waiting after S wall seconds (default 1800)")
    p.add_argument("--dashboard", metavar="[HOST:]PORT",
                   help="one scenario: the drill's gateway serves its dashboard there (port 0: "
                        "a free one) and an OPC UA endpoint on a free loopback port (ctl, "
                        "incidents --via), printed at start; implies --realtime. --live "
                        "serves both on free loopback ports when this is not given")
    p.add_argument("--realtime", action="store_true",
                   help="one scenario: pace the drill to wall time (plant seconds = wall "
                        "seconds) instead of running as fast as it can")
    p.add_argument("--user", action="append", default=[], metavar="NAME[:ROLE]",
                   help="with --dashboard or --live: a drill account (role operator, admin or "
                        "viewer; default operator); repeat for several (default: operator, "
                        "and supervisor as admin). Their password: $SG_DRILL_PASSWORD, "
                        "generated and printed when unset")
    p.add_argument("--seed", type=int, default=None, help="override the scenarios' seeds")
    p.add_argument("--duration-s", type=float, default=None, metavar="S",
                   help="run each scenario for S simulated seconds instead of its own "
                        "duration (a long drill: faults that are never lifted stay in force, "
                        "and the process must stay in its safe range to the end)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="scenarios run in parallel with --all or several scenarios "
                        "(default: up to 2)")
    p.set_defaults(func=cmd_drill)


def cmd_drill(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError
    from simulators.drill.scenario import load_scenario, with_duration

    if args.all and args.scenario:
        print("safety-gateway drill: give a scenario or --all, not both", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("safety-gateway drill: --jobs must be >= 1", file=sys.stderr)
        return 2
    if args.live and (args.all or len(args.scenario) > 1 or not args.report
                      or args.no_gateway):
        print("safety-gateway drill: --live runs one scenario, with the gateway, and needs "
              "--report DIR (the people work the incident in its audit database)",
              file=sys.stderr)
        return 2
    if not args.live_timeout_s > 0:
        print("safety-gateway drill: --live-timeout-s must be > 0", file=sys.stderr)
        return 2
    watch = _watch(args)
    if isinstance(watch, str):
        print(f"safety-gateway drill: {watch}", file=sys.stderr)
        return 2
    if args.all:
        paths = sorted(drills_dir().glob("*.yaml"))
        if not paths:
            print(f"safety-gateway drill: no scenarios in {drills_dir()}", file=sys.stderr)
            return 2
        if args.no_gateway:
            # Baselines of the scenarios that have one (an attack to show); a clean run has
            # nothing to show without the gateway.
            paths = [p for p in paths if _has_baseline(p)]
    else:
        paths = []
        for name in args.scenario or [DEFAULT_SCENARIO]:
            found = find_scenario(name)
            if found is None:
                known = ", ".join(sorted(p.stem for p in drills_dir().glob("*.yaml")))
                print(f"safety-gateway drill: no scenario {name!r} (known: {known})",
                      file=sys.stderr)
                return 2
            paths.append(found)
    errors = []
    for path in paths:
        try:
            scenario = load_scenario(path)
            if args.duration_s is not None:
                with_duration(scenario, args.duration_s)
        except ConfigError as exc:
            errors.append(str(exc))
        except ValueError as exc:
            errors.append(f"safety-gateway drill: --duration-s: {exc}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 2
    report = Path(args.report) if args.report else None
    # Baselines are run beside the gateway runs of attack drills, so that every scorecard
    # can say what the gateway prevented; --no-gateway runs the baseline alone.
    several = args.all or len(paths) > 1
    baseline = args.baselines or not several
    if watch is not None and watch.serving is not None:
        print("\n".join(watch.serving.lines()), file=sys.stderr, flush=True)
    jobs = [(str(p), not args.no_gateway, report, args.seed, baseline, args.duration_s, watch)
            for p in paths]
    progress = _Progress(len(jobs)) if several else None
    if args.jobs > 1 and len(jobs) > 1:
        # Imported here: it loads multiprocessing, which every other command (they all build
        # this parser) would otherwise pay for at start.
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(_job, j): k for k, j in enumerate(jobs)}
            done: dict[int, Any] = {}
            for future in as_completed(futures):
                done[futures[future]] = result = future.result()
                if progress is not None:
                    progress.finished(result[1][0])
            results = [done[k] for k in range(len(jobs))]
    else:
        results = []
        for j in jobs:
            results.append(_job(j))
            if progress is not None:
                progress.finished(results[-1][1][0])
    if progress is not None:
        progress.close()
    cards = [c for r in results for c in r[0]]
    if args.json:
        out = []
        for gw_card, base in (r[1] for r in results):
            entry = gw_card.as_json()
            if base is not None and base is not gw_card:
                entry["baseline"] = base.as_json()
            out.append(entry)
        print(json.dumps({"scenarios": out}, indent=2))
    elif args.markdown:
        pass  # printed below, after a live drill's people have been scored
    elif several:
        from simulators.drill.report import format_table

        print(format_table(cards))
    else:
        for r in results:
            print(r[2])
    passed = all(r[1][0].passed for r in results)
    live: dict[str, Any] = {}
    if args.live:
        assert report is not None
        score = results[0][3]
        if score is not None:
            print(score.text(), flush=True)
            (report / score.scenario / "live.json").write_text(
                json.dumps(score.as_json(), indent=2) + "\n")
            live[score.scenario] = score
        passed = passed and score is not None and score.acknowledged_after_s is not None
    if args.markdown and not args.json:
        from simulators.drill.summary import summary_markdown

        print(summary_markdown(cards, live=live), end="")
    if report is not None:
        from simulators.drill.summary import summary_json, summary_markdown

        report.mkdir(parents=True, exist_ok=True)
        (report / "summary.md").write_text(summary_markdown(cards, live=live))
        (report / "summary.json").write_text(json.dumps(summary_json(cards, live=live),
                                                        indent=2) + "\n")
    if report is not None and not args.json:
        print(f"report written to {report}/", file=sys.stderr)
    if args.no_gateway:
        return 0  # a baseline has no pass or fail: it ran (a broken run raises)
    return 0 if passed else 1


@dataclass(frozen=True)
class _Watch:
    """How people watch and work a single drill: where its gateway serves (None: nowhere),
    whether it runs at wall pace, and the live wait's timeout (None: not live)."""

    serving: DrillServing | None
    realtime: bool
    live_timeout_s: float | None


def _watch(args: argparse.Namespace) -> _Watch | str | None:
    """The options of a watched drill, None for a plain one, or the reason they are wrong."""
    from simulators.drill.serve import DrillServing, parse_address, parse_user

    if not (args.dashboard or args.realtime or args.live or args.user):
        return None
    if args.all or len(args.scenario) > 1:
        return "--dashboard, --realtime and --live run one scenario"
    if args.no_gateway and (args.dashboard or args.live):
        return "--dashboard and --live show the gateway: not with --no-gateway"
    if args.user and not (args.dashboard or args.live):
        return "--user goes with --dashboard or --live"
    try:
        address = parse_address(args.dashboard) if args.dashboard else None
        users = tuple(parse_user(u) for u in args.user)
    except ValueError as exc:
        return f"--dashboard/--user: {exc}"
    if len({n for n, _ in users}) != len(users):
        return "--user: a name given twice"
    serving = (DrillServing.create(address, users) if args.dashboard or args.live
               else None)
    return _Watch(serving, bool(args.realtime or args.dashboard),
                  args.live_timeout_s if args.live else None)


class _Progress:
    """Each scenario as it finishes, on stderr (a long `drill --all` is not silent): a bar
    redrawn in place on a terminal, one plain line per scenario otherwise (logs, CI)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.tty = sys.stderr.isatty()

    def finished(self, card: Scorecard) -> None:
        self.count += 1
        verdict = "PASS" if card.passed else "FAIL"
        line = f"[{self.count}/{self.total}] {card.scenario}: {verdict} ({card.wall_s:.1f} s)"
        if self.tty:
            width = 20
            filled = width * self.count // self.total
            bar = "#" * filled + "." * (width - filled)
            print(f"\r\x1b[K{bar} {line}", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and self.count:
            print(file=sys.stderr, flush=True)


def _has_baseline(path: Path) -> bool:
    from gateway.config import ConfigError
    from simulators.drill.scenario import load_scenario

    try:
        return load_scenario(path).baseline_s is not None
    except ConfigError:
        return True  # reported as bad input below


def _job(job: tuple[str, bool, Path | None, int | None, bool, float | None, _Watch | None]
         ) -> tuple[list[Scorecard], tuple[Scorecard, Scorecard | None], str,
                    LiveScore | None]:
    """Run one scenario (and its baseline); in a worker process with --all."""
    import asyncio  # here, not at the top: every command builds this parser
    import shutil

    from simulators.drill.report import keep_inputs, scorecard_text, write_report
    from simulators.drill.runner import run_drill
    from simulators.drill.scenario import load_scenario, with_duration
    from simulators.drill.score import score

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    path, with_gateway, report, seed, with_baseline, duration_s, watch = job
    scenario = load_scenario(path)
    if duration_s is not None:
        scenario = with_duration(scenario, duration_s)
    with tempfile.TemporaryDirectory(prefix="drill-") as tmp:
        work = Path(tmp)
        runs = []
        audit_db = None
        if report is not None and with_gateway:
            # The report keeps the run's audit database and its incidents' evidence bundles.
            folder = report / scenario.name
            folder.mkdir(parents=True, exist_ok=True)
            audit_db = folder / "audit.db"
            for stale in folder.glob("audit.db*"):
                stale.unlink()  # a report describes one run: never join an older run's chain
        if with_gateway:
            # With a report, the run's zoo models are built in its ran/ folder and stay
            # there: the model path its incidents record (models.json of the evidence
            # bundle, replay, localise) keeps pointing at the file the gateway ran.
            ran = report / scenario.name / "ran" if report is not None else None
            if ran is not None and ran.exists():
                shutil.rmtree(ran)  # a report describes one run
            runs.append(asyncio.run(run_drill(scenario, ran or work, gateway=True, seed=seed,
                                              audit_db=audit_db, **_watched(watch, audit_db))))
            if ran is not None:
                # The exact scenario, site and model files the run used, with their sha256.
                keep_inputs(ran, runs[-1])
        if not with_gateway or (with_baseline and scenario.baseline_s is not None):
            runs.append(asyncio.run(run_drill(scenario, work, gateway=False, seed=seed)))
    cards = [score(r) for r in runs]
    main = cards[0]
    base = cards[1] if len(cards) > 1 else (None if with_gateway else cards[0])
    text = scorecard_text(main, runs[0])
    if with_gateway and base is not None:
        text += (f"\n  without the gateway: {base.unsafe_writes} unsafe writes, max excursion "
                 f"{base.max_excursion:.2f} ({base.worst_variable}), safe range "
                 f"{'LEFT' if base.left_safe_range else 'kept'}")
    if report is not None:
        write_report(report, main, runs[0], base if with_gateway else None)
        if audit_db is not None:
            from gateway.incident.export import export_incident

            for ident in runs[0].incidents:
                export_incident(audit_db, ident, report / scenario.name / "incidents",
                                overwrite=True)
        if with_gateway and base is not None:
            write_report(report, base, runs[1])
    return cards, (main, base), text, runs[0].live if with_gateway else None


def _watched(watch: _Watch | None, db: Path | None) -> dict[str, Any]:
    """``run_drill``'s keywords for a watched drill (the pacer, the servers, the live wait)."""
    if watch is None:
        return {}
    from simulators.drill.live import LiveWatch, handover_text, live_lines
    from simulators.drill.serve import WallPacer

    out: dict[str, Any] = {"serving": watch.serving,
                           "pacer": WallPacer() if watch.realtime else None}
    serving = watch.serving
    if watch.live_timeout_s is not None and serving is not None and db is not None:
        names = tuple(n for n, _ in serving.users)

        def text(incident: str) -> str:
            lines = handover_text(incident, db).split("\n")
            # The wait's own line last, after the commands that reach the running gateway.
            return "\n".join(lines[:-1] + live_lines(incident, serving.dashboard_url,
                                                       serving.opcua_endpoint, names)
                              + lines[-1:])

        def say(message: str) -> None:
            print(message, file=sys.stderr, flush=True)

        out["live"] = LiveWatch(watch.live_timeout_s, say, text)
    return out

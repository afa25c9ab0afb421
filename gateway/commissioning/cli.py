"""``safety-gateway learn`` and ``safety-gateway prove``.

Exit codes (those of :mod:`gateway.cli`): 0 done (``prove``: nothing would have tripped);
1 ``prove``: something would have tripped, or ``learn``: the proposed site fails ``check`` (a
bug: please report it); 2 bad input (usage, a site file that fails ``check``, a history that
cannot be read: ``file:line: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.commissioning.prove import ProofResult
    from gateway.commissioning.sources import History
    from gateway.config.schema import Site

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {text}")
    return value


def add_parser(sub: Any) -> None:
    learn = sub.add_parser("learn", help="propose an envelope from the plant's history")
    learn.add_argument("sources", nargs="+", metavar="SOURCE",
                       help="history: historian CSV, flight recording (.jsonl), audit "
                            "database or Modbus/TCP capture (see docs/commissioning.md)")
    learn.add_argument("--site", required=True, help="the site file (tags, devices)")
    learn.add_argument("--out", required=True, help="where to write the proposed site file; "
                                                    "the report goes beside it (.md, .json, .png)")
    learn.add_argument("--margin", type=float, default=0.1,
                       help="fraction of each tag's range added around what was seen "
                            "(default 0.1)")
    learn.add_argument("--percentile", type=float, default=99.9,
                       help="percentile of the moves for actuator rate and step limits "
                            "(default 99.9)")
    learn.add_argument("--rate-factor", type=float, default=2.0,
                       help="actuator rate and step limits and sensor rate limits are what "
                            "was seen times this (default 2)")
    learn.add_argument("--learn-ranges", action="store_true",
                       help="also write the sensors' learned ranges (default: report them; "
                            "a reading outside its range takes the plant to SAFE_STOP)")
    learn.add_argument("--max-discrete", type=int, default=8,
                       help="at most this many distinct values make a discrete actuator")
    learn.add_argument("--min-samples", type=int, default=100,
                       help="fewer readings than this keep a tag's hand-written settings")
    learn.add_argument("--fit-window", type=float, default=60.0, metavar="SECONDS",
                       help="window of the process model's fit (default 60 s)")
    learn.add_argument("--min-r2", type=float, default=0.6,
                       help="a sensor whose model's R² is under this gets no prediction")
    learn.add_argument("--holdout", type=_fraction, default=0.0, metavar="FRACTION",
                       help="learn from the first 1-FRACTION of the history only")
    learn.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    learn.set_defaults(func=cmd_learn)

    prove = sub.add_parser("prove", help="replay history through a site's envelope and "
                                         "detectors offline; exit 1 if anything would trip")
    prove.add_argument("config", help="site YAML file")
    prove.add_argument("sources", nargs="+", metavar="SOURCE", help="history (as for learn)")
    prove.add_argument("--holdout", type=_fraction, default=0.0, metavar="FRACTION",
                       help="also report the last FRACTION of the history on its own (the "
                            "part `learn --holdout` did not see)")
    prove.add_argument("--commands", choices=("ai", "written", "recorded"), default=None,
                       help="judge the history's commands as the AI's proposals in AUTO "
                            "(default for a site with an AI controller), as written by an "
                            "operator or the fallback in MANUAL (default without one), or "
                            "judge a flight recording's own proposals in its recorded modes "
                            "(default for a recording)")
    prove.add_argument("--json", action="store_true", help="machine-readable result")
    prove.set_defaults(func=cmd_prove)


def _load(config: str, sources: list[str]) -> tuple[Site, History] | None:
    from gateway.commissioning.sources import HistoryError, load_history
    from gateway.config import ConfigError, load_config

    try:
        site = load_config(config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None
    try:
        history = load_history(sources, site)
    except HistoryError as exc:
        print(f"safety-gateway: {exc}", file=sys.stderr)
        return None
    return site, history


def cmd_learn(args: argparse.Namespace) -> int:
    import yaml

    from gateway.commissioning.learn import LearnOptions, learn
    from gateway.commissioning.report import plot_actuators, report_json, report_markdown
    from gateway.commissioning.writer import write_site
    from gateway.config import ConfigError, load_config

    try:
        opt = LearnOptions(margin=args.margin, percentile=args.percentile,
                           rate_factor=args.rate_factor, learn_ranges=args.learn_ranges,
                           max_discrete=args.max_discrete, min_samples=args.min_samples,
                           fit_window_s=args.fit_window, min_r2=args.min_r2,
                           holdout=args.holdout)
    except ValueError as exc:
        print(f"safety-gateway learn: {exc}", file=sys.stderr)
        return EXIT_INPUT
    loaded = _load(args.site, args.sources)
    if loaded is None:
        return EXIT_INPUT
    site, history = loaded
    out = Path(args.out)
    if out.resolve() == Path(args.site).resolve():
        print("safety-gateway learn: --out must not overwrite the site file", file=sys.stderr)
        return EXIT_INPUT
    proposal = learn(site, history, opt)
    raw = yaml.safe_load(Path(args.site).read_text(encoding="utf-8"))
    stem = out.name.removesuffix(".yaml").removesuffix(".yml")
    try:
        write_site(proposal, raw, out)
        plots = ({} if args.no_plots else
                 plot_actuators(proposal, history.split(opt.holdout)[0], out.parent, stem))
        (out.parent / f"{stem}.md").write_text(report_markdown(proposal, out, plots),
                                               encoding="utf-8")
        (out.parent / f"{stem}.json").write_text(
            json.dumps(report_json(proposal, out), indent=2, allow_nan=False),
            encoding="utf-8")
    except OSError as exc:
        print(f"safety-gateway learn: cannot write {exc.filename}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_INPUT
    try:
        load_config(out)
    except ConfigError as exc:
        print(f"safety-gateway learn: the proposed site fails check (please report this):\n"
              f"{exc}", file=sys.stderr)
        return EXIT_FAILED
    for warning in proposal.warnings:
        print(f"safety-gateway learn: warning: {warning}", file=sys.stderr)
    models = proposal.prediction.models if proposal.prediction is not None else ()
    predicted = [m.sensor for m in models] + [f"{n} (the site's own model, kept)"
                                              for n in proposal.kept_models]
    print(f"{out}: proposed from {proposal.n_samples} samples: {len(proposal.actuators)} "
          f"actuators, {len(proposal.sensors)} sensors, prediction for "
          f"{', '.join(predicted) or 'no sensor'}; report "
          f"{out.parent / (stem + '.md')}")
    return EXIT_OK


def _when(at_s: float) -> str:
    """A time as the history gave it: seconds, or a UTC date and time for epoch seconds."""
    if at_s >= 1e9:  # after 2001-09-09: seconds since the epoch, not since a run's start
        import datetime as dt

        return dt.datetime.fromtimestamp(at_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{at_s:.1f} s"


def _text(result: ProofResult) -> list[str]:
    lines = [f"{result.label}: {result.n_rows} rows, {result.n_commands} commands judged: "
             f"{result.trips} trips, {result.count('reject')} refusals, "
             f"{result.count('clamp')} clamps"]
    for t in sorted(result.tallies.values(), key=lambda t: (t.action != "trip", t.name)):
        lines.append(f"  {t.action:<6} {t.kind:<10} {t.name}: {t.count} "
                     f"(first at {_when(t.first_s)}, last at {_when(t.last_s)})")
        for at, mag, detail in t.worst[:3]:
            what = "" if mag != mag else f"moved {mag:.4g}: "
            lines.append(f"           at {_when(at)}: {what}{detail}")
    if result.not_judged:
        lines.append(f"  not in the history (not judged): {', '.join(result.not_judged)}")
    if result.supervisor:
        modes = ", ".join(f"{m} {s:.1f} s" for m, s in result.time_in_mode_s.items())
        lines.append(f"  supervisor: commands judged as {result.commands_as}; time in mode: "
                     f"{modes or 'none'}; re-armed after a trip {result.rearms} times")
        quiet = [d for d in result.detectors_judged if d not in result.tallies]
        if quiet:
            lines.append(f"  judged, never tripped: {', '.join(quiet)}")
        for detector, why in result.detectors_not_judged:
            lines.append(f"  not judged: {detector}: {why}")
    lines += [f"  note: {n}" for n in result.notes]
    return lines


def cmd_prove(args: argparse.Namespace) -> int:
    from gateway.commissioning.prove import CommandsAs, prove

    loaded = _load(args.config, args.sources)
    if loaded is None:
        return EXIT_INPUT
    site, history = loaded
    commands = None if args.commands is None else CommandsAs(args.commands)
    try:
        results = [prove(site, history, "all", commands=commands)]
    except ValueError as exc:
        print(f"safety-gateway prove: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if args.holdout:
        _, held = history.split(args.holdout)
        results.append(prove(site, held, f"held back (last {args.holdout:g})",
                             commands=commands))
    if args.json:
        print(json.dumps({"site": str(site.source), "sources": list(history.sources),
                          "passed": results[0].trips == 0,
                          "results": [r.json() for r in results]}, indent=2, allow_nan=False))
    else:
        for r in results:
            print("\n".join(_text(r)))
        print("PASS: nothing would have tripped" if results[0].trips == 0
              else f"FAIL: {results[0].trips} trips")
    return EXIT_OK if results[0].trips == 0 else EXIT_FAILED

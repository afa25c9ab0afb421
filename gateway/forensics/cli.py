"""``safety-gateway replay`` and ``safety-gateway localise``: forensics on the command line.

:func:`add_parser` adds both commands to the top-level subparsers; each sets ``func`` to a
callable taking the parsed ``argparse.Namespace`` and returning the exit code:

- 0: done, and nothing diverged (``replay``: the replay matches the recording; ``localise``:
  the models agree everywhere the search looked);
- 1: a divergence was found (``replay``: a proposal or decision differs; ``localise``: a region
  where the models differ);
- 2: bad input (an invalid site file, an unreadable recording or model, a recording that does
  not fit the site, bad settings).

Errors print one line on stderr, never a traceback. The codes match ``gateway.cli``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config.schema import Site
    from gateway.forensics.localise import Localisation
    from gateway.forensics.replay import ReplayResult

__all__ = ["add_parser", "format_localisation", "format_replay"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INPUT: Final = 2


# The defaults of gateway.forensics.replay and .localise (a test checks they agree), repeated
# here so that building the parser does not import onnxruntime (half a second) for every command.
REPLAY_TOLERANCE: Final = 1e-6
LOCALISE_TOLERANCE: Final = 1e-3
DEFAULT_BUDGET: Final = 200_000


class _InputError(Exception):
    """Bad command-line input (exit code 2)."""


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``replay`` and ``localise`` to ``sub``."""
    replay = sub.add_parser(
        "replay", help="run a flight recording through the supervisor offline, with any model, "
        "and report where it diverges (exit 1 if it does)")
    replay.add_argument("--bundle", type=Path, metavar="DIR",
                        help="an evidence bundle: its site file and flight recording (and "
                        "with --rerun its model), so that --site and --recording are not "
                        "needed")
    replay.add_argument("--site", type=Path, metavar="SITE.yaml")
    replay.add_argument("--recording", type=Path, metavar="FILE.jsonl",
                        help="flight recorder export (JSON lines)")
    model = replay.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, metavar="M.onnx",
                       help="recompute the proposals with this model (default: replay the "
                       "recorded proposals, which must reproduce the live decisions)")
    model.add_argument("--rerun", action="store_true",
                       help="with --bundle: recompute the proposals with the bundle's own "
                       "model file")
    replay.add_argument("--tolerance", type=_non_negative, default=REPLAY_TOLERANCE,
                        help="proposal difference (engineering units) that counts as a "
                        f"divergence (default {REPLAY_TOLERANCE:g})")
    replay.add_argument("--json", action="store_true", help="print JSON")
    replay.set_defaults(func=_command(_replay, "replay"))

    localise = sub.add_parser(
        "localise", help="find the input region where a suspect model departs from a "
        "known-good one (exit 1 if there is one)")
    localise.add_argument("--site", type=Path, metavar="SITE.yaml",
                          help="input box (sensor ranges, actuator limits) and normalisation")
    localise.add_argument("--bundle", type=Path, metavar="DIR",
                          help="an evidence bundle: its site file, its model as the suspect "
                          "and its flight recording as seeds; then give only REFERENCE.onnx")
    localise.add_argument("models", type=Path, nargs="+", metavar="SUSPECT.onnx "
                          "REFERENCE.onnx",
                          help="the suspect and the known-good model (with --bundle the "
                          "suspect may be left out: the bundle's model)")
    localise.add_argument("--seeds", type=Path, metavar="FILE.jsonl",
                          help="a flight recording whose model inputs seed the search; its "
                          "header's controller wiring is used when the site file has none")
    localise.add_argument("--tolerance", type=_positive, default=LOCALISE_TOLERANCE,
                          help="output difference (engineering units) that counts as a "
                          f"divergence (default {LOCALISE_TOLERANCE:g})")
    localise.add_argument("--budget", type=_budget, default=DEFAULT_BUDGET,
                          help=f"input rows run through each model (default {DEFAULT_BUDGET})")
    localise.add_argument("--json", action="store_true", help="print JSON")
    localise.set_defaults(func=_command(_localise, "localise"))


def _command(body: Callable[[argparse.Namespace], int], name: str
             ) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: known errors become one line on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from gateway.config import ConfigError
        from gateway.forensics.localise import LocaliseError
        from gateway.forensics.recorder import RecordingError
        from gateway.forensics.replay import ReplayError

        try:
            return body(args)
        except ConfigError as exc:
            issues = exc.issues
            more = f" (and {len(issues) - 1} more problems)" if len(issues) > 1 else ""
            message = f"{issues[0]}{more}" if issues else "invalid site file"
        except (_InputError, RecordingError, ReplayError, LocaliseError) as exc:
            message = str(exc)
        except OSError as exc:
            message = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        print(f"safety-gateway {name}: {message}", file=sys.stderr)
        return EXIT_INPUT

    return run


def _non_negative(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _budget(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1000:
        raise argparse.ArgumentTypeError(f"must be >= 1000, got {value}")
    return value


def _site(path: Path) -> Site:
    from gateway.config import load_config

    if not path.is_file():
        raise _InputError(f"{path}: site file not found")
    return load_config(path)


def _model_path(path: Path) -> Path:
    if not path.is_file():
        raise _InputError(f"{path}: model file not found")
    return path


# --------------------------------------------------------------------------------------------


def _from_bundle(path: Path, site: Path | None, recording: Path | None
                 ) -> tuple[Path, Path, Path | None]:
    """The site file, recording and model of the bundle at ``path`` (``site`` and
    ``recording``, when given, take precedence)."""
    from gateway.incident.bundle import BundleError, open_bundle

    try:
        bundle = open_bundle(path)
    except BundleError as exc:
        raise _InputError(str(exc)) from None
    if site is None and bundle.site is None:
        raise _InputError(f"{path}: the bundle has no site file ({'; '.join(bundle.missing)});"
                          f" give --site")
    if recording is None and bundle.recording is None:
        raise _InputError(f"{path}: the bundle has no flight recording")
    chosen_site = site if site is not None else bundle.site
    chosen_recording = recording if recording is not None else bundle.recording
    assert chosen_site is not None
    assert chosen_recording is not None
    return chosen_site, chosen_recording, bundle.model


def _replay(args: argparse.Namespace) -> int:
    from gateway.forensics.recorder import read_jsonl
    from gateway.forensics.replay import replay_recording

    bundle_model: Path | None = None
    if args.bundle is not None:
        args.site, args.recording, bundle_model = _from_bundle(args.bundle, args.site,
                                                               args.recording)
    elif args.site is None or args.recording is None:
        raise _InputError("give --site and --recording, or --bundle DIR")
    if args.rerun:
        if args.bundle is None:
            raise _InputError("--rerun recomputes with a bundle's model: give --bundle DIR "
                              "(or --model M.onnx)")
        if bundle_model is None:
            raise _InputError(f"{args.bundle}: the bundle holds no model file to rerun")
        args.model = bundle_model
    site = _site(args.site)
    if not args.recording.is_file():
        raise _InputError(f"{args.recording}: recording not found")
    model = None if args.model is None else _model_path(args.model)
    recording = read_jsonl(args.recording)
    result = replay_recording(site, recording, model, tolerance=args.tolerance,
                              keep_decisions=False)
    if args.json:
        print(json.dumps({"site": site.site.name, "recording": str(args.recording),
                          "model": None if model is None else str(model),
                          **result.to_json()}, indent=2))
    else:
        print(format_replay(result, site))
    return EXIT_FAILED if result.diverged else EXIT_OK


def format_replay(result: ReplayResult, site: Site) -> str:
    """A readable report of a replay."""
    source = (f"proposals recomputed with model sha256 {result.model_sha256}"
              if result.recomputed else "recorded proposals")
    lines = [
        f"replay of {result.cycles} cycles ({result.span_s[0]:.3f} s .. {result.span_s[1]:.3f} s)"
        f" on site {site.site.name!r}, {source}",
        "start: " + ("exact (the live supervisor's start)" if result.exact_start else "warm"),
    ]
    lines += [f"note: {n}" for n in result.notes]
    if not result.diverged:
        lines.append("no divergence: every proposal and decision matches the recording"
                     + (" bit for bit" if result.identical else ""))
    else:
        lines.append(f"first divergence at {result.first_divergence_s:.3f} s "
                     f"(proposal: {_t(result.first_proposal_divergence_s)}, "
                     f"decision: {_t(result.first_decision_divergence_s)})")
        lines.append(f"proposal diverged in {result.proposal_divergent_cycles} cycles "
                     f"(tolerance {result.tolerance:g}); decision differs in "
                     f"{result.decision_divergent_cycles} cycles (mode or command in "
                     f"{result.mode_or_command_divergent_cycles})")
        if result.field_divergences:
            lines.append("decision fields that differ (cycles): " + ", ".join(
                f"{k} {v}" for k, v in result.field_divergences.items()))
    if result.recomputed:
        lines.append("largest proposal difference: " + ", ".join(
            f"{k} {v:.6g}" for k, v in result.max_proposal_diff.items()))
    if result.divergent_input_ranges:
        lines.append("model inputs over the cycles whose proposal diverged:")
        lines += [f"  {k:<16} [{lo:.6g}, {hi:.6g}]"
                  for k, (lo, hi) in result.divergent_input_ranges.items()]
    cycle_s = site.site.cycle_ms / 1000.0
    lines.append(f"replay speed: {result.cycles_per_s:.0f} cycles/s, "
                 f"{result.cycles_per_s * cycle_s:.0f}x real time")
    return "\n".join(lines)


def _t(x: float | None) -> str:
    return "none" if x is None else f"{x:.3f} s"


def _localise(args: argparse.Namespace) -> int:
    import numpy as np

    from gateway.config.schema import ControllerKind
    from gateway.forensics.localise import Normalisation, localise, site_input_box
    from gateway.forensics.recorder import read_jsonl, site_as_recorded

    if args.bundle is not None:
        if len(args.models) > 2:
            raise _InputError("with --bundle give REFERENCE.onnx (the suspect is the "
                              "bundle's model), or SUSPECT.onnx REFERENCE.onnx")
        args.site, seeds_file, suspect_file = _from_bundle(args.bundle, args.site, args.seeds)
        args.seeds = seeds_file
        if len(args.models) == 1:
            if suspect_file is None:
                raise _InputError(f"{args.bundle}: the bundle holds no model file; give "
                                  f"SUSPECT.onnx REFERENCE.onnx")
            args.models = [suspect_file, args.models[0]]
    elif len(args.models) != 2:
        raise _InputError("give SUSPECT.onnx and REFERENCE.onnx (or --bundle DIR "
                          "REFERENCE.onnx)")
    elif args.site is None:
        raise _InputError("give --site SITE.yaml (or --bundle DIR)")
    site = _site(args.site)
    suspect = _model_path(args.models[0])
    reference = _model_path(args.models[1])
    recording = None
    if args.seeds is not None:
        if not args.seeds.is_file():
            raise _InputError(f"{args.seeds}: seeds recording not found")
        recording = read_jsonl(args.seeds)
        # The wiring the model ran with (a drill's, or an older site file's), when kept.
        site, _ = site_as_recorded(site, recording.info)
    if not site.controller.inputs:
        hint = ("its controller is external: the gateway does not know what the model reads"
                if site.controller.kind is ControllerKind.EXTERNAL
                else f"its controller ({site.controller.kind}) reads no inputs")
        raise _InputError(f"site {site.site.name!r}: {hint}; give --seeds RECORDING.jsonl "
                          f"(a flight recording of the model, whose header names its inputs) "
                          f"or --bundle DIR")
    box = site_input_box(site)
    seeds = None
    if recording is not None:
        rows = [f.model_inputs for f in recording.frames
                if f.model_inputs is not None and f.model_inputs.shape == (len(box),)]
        seeds = np.array(rows) if rows else None
    result = localise(suspect, reference, box, normalisation=Normalisation.of_site(site),
                      tolerance=args.tolerance, budget=args.budget, seeds=seeds,
                      input_names=site.controller.inputs)
    if args.json:
        print(json.dumps({"site": site.site.name, "suspect": str(suspect),
                          "reference": str(reference),
                          "seeds": 0 if seeds is None else len(seeds), **result.to_json()},
                         indent=2))
    else:
        print(format_localisation(result, suspect, reference))
    return EXIT_FAILED if result.found else EXIT_OK


def format_localisation(result: Localisation, suspect: Path, reference: Path) -> str:
    """A readable report of a localisation."""
    lines = [f"suspect {suspect} (sha256 {result.suspect_sha256[:16]}…) against reference "
             f"{reference} (sha256 {result.reference_sha256[:16]}…), tolerance "
             f"{result.tolerance:g}"]
    if not result.found:
        lines.append(f"no divergence in {result.samples} samples of the input box")
        return "\n".join(lines)
    lines.append(f"diverges: largest output difference {result.max_difference:.6g}; "
                 f"{result.sweep_fraction_divergent:.4%} of a uniform sweep of "
                 f"{result.sweep_samples} points; {result.samples} samples in all")
    for k, region in enumerate(result.regions, start=1):
        tight = [f"{name} in [{lo:.6g}, {hi:.6g}]"
                 for name, (lo, hi), c in zip(result.input_names, region.ranges,
                                              region.constrained, strict=True) if c]
        free = [name for name, c in zip(result.input_names, region.constrained, strict=True)
                if not c]
        lines.append(f"region {k}: " + (" and ".join(tight) if tight else "the whole box")
                     + (f"; unconstrained: {', '.join(free)}" if free and tight else ""))
        lines.append(f"  evidence: {region.points} divergent points found in it; "
                     f"{region.fraction_divergent:.1%} of {region.samples} uniform samples "
                     f"diverge; largest difference {region.max_difference:.6g}")
    return "\n".join(lines)

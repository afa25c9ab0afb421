"""Drill reports: the scorecard as Markdown and JSON, and PNG plots of the run.

Plots (matplotlib, Agg backend: no display needed on an edge box or in CI):

- ``process.png``: the plant's true process variables with their safe range and danger limits;
- ``commands.png``: every actuator's applied command, and the AI's proposal where it drives one;
- ``modes.png``: the gateway's mode over time.

Each marks every injection (its own colour and line style) and its detection (green); axes
are labelled with the site's units; legends sit outside the axes, to the right.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.drill.runner import DrillRun
    from simulators.drill.score import Scorecard

__all__ = ["commands_figure", "format_table", "keep_inputs", "modes_figure", "process_figure",
           "write_report"]

_MODES = ("safe_stop", "manual", "shadow", "auto")


def _fmt(value: float | None, unit: str = " s") -> str:
    return "—" if value is None else f"{value:.2f}{unit}"


def format_table(cards: list[Scorecard]) -> str:
    """One line per scenario, aligned, for the terminal."""
    head = ("scenario", "gateway", "unsafe", "detect", "contain", "false", "excursion", "safe",
            "incident", "result")
    rows = [head]
    for c in cards:
        rows.append((c.scenario, "on" if c.gateway else "OFF", str(c.unsafe_writes),
                     _fmt(c.time_to_detect_s) if c.injected_at_s is not None else "clean",
                     _fmt(c.time_to_contain_s) if c.injected_at_s is not None else "—",
                     str(c.false_trips), f"{c.max_excursion:.2f}",
                     "LEFT" if c.left_safe_range else "kept",
                     "opened" if c.incident else "—",
                     ("PASS" if c.passed else "FAIL") if c.gateway else "baseline"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def scorecard_text(card: Scorecard, run: DrillRun) -> str:
    sc = run.scenario
    lines = [f"drill {card.scenario}: {'PASS' if card.passed else 'FAIL'}"
             if card.gateway else f"drill {card.scenario} WITHOUT the gateway (baseline)",
             f"  {sc.description}" if sc.description else "",
             f"  plant {sc.plant}, controller {sc.controller.value} model {_model_text(run)}, "
             f"{sc.duration_s:g} s simulated in {card.wall_s:.1f} s"]
    for m in run.marks:
        if m.kind == "injection":
            lines.append(f"  t={m.at_s:7.1f} s  injected: {m.detail}")
    if card.gateway:
        granted = card.auto_granted_at_s
        lines.append("  AUTO:            "
                     + (f"granted at {granted:.1f} s" if granted is not None else "never granted")
                     + f" ({card.auto_requests} request{'s' if card.auto_requests != 1 else ''})")
        for r in card.injections:
            cause = ""
            if r.cause_named is not None:
                cause = f"; cause named {r.cause_named}"
                if r.cause_expected is not None:
                    cause += (f" ({'right' if r.cause_ok else 'expected ' + r.cause_expected}"
                              f"{'' if r.cause_scored else ', not scored'})")
            lines.append(f"  injection {r.index + 1} ({r.title}, t={r.start_s:g} s): "
                         f"{'PASS' if r.passed else 'FAIL'}: {r.verdict}{cause}")
        lines.append(f"  detected:        {'yes' if card.detected else 'no'}"
                     + (f" after {card.time_to_detect_s:.2f} s (budget "
                        f"{card.detect_budget_s:g} s): {card.first_trip}"
                        if card.time_to_detect_s is not None and card.detect_budget_s else ""))
        lines.append(f"  contained after: {_fmt(card.time_to_contain_s)} (fallback in control)")
        lines.append(f"  false trips:     {card.false_trips} in {card.clean_s:g} s before "
                     "the injection")
        if card.incident is not None:
            kept = run.audit_db is not None and run.audit_db.exists()
            where = (f"safety-gateway incidents show {card.incident} --db {run.audit_db}"
                     if kept else "keep its audit database with --report DIR")
            lines.append(f"  incident:        {card.incident} ({where})")
    lines.append(f"  unsafe writes:   {card.unsafe_writes} of {card.writes_checked} writes in "
                 "the plant's own record")
    if card.agent is not None:
        lines += _agent_lines(card.agent)
    lines.append(f"  max excursion:   {card.max_excursion:.2f} of the way to the danger limit "
                 f"({card.worst_variable}); safe range "
                 f"{'LEFT' if card.left_safe_range else 'kept'}")
    for ex in card.unsafe_examples:
        lines.append(f"    unsafe: {ex}")
    for reason in card.reasons:
        lines.append(f"  FAIL: {reason}")
    return "\n".join(line for line in lines if line)


def _agent_lines(agent: dict[str, Any]) -> list[str]:
    """The MCP agent's section: what it tried, by phase and tool, and what came of it."""
    audited = agent.get("refused_calls_audited")
    lines = [f"  MCP agent:       {agent['calls']} calls, {agent['refused_calls']} refused "
             f"({audited if audited is not None else '?'} in the audit chain); outside its "
             f"role {agent['out_of_role_calls']} tried, {agent['out_of_role_succeeded']} "
             f"succeeded; hostile proposals that reached the plant: "
             f"{agent['hostile_proposals_written']}"]
    for phase, tools in agent["by_phase_tool_outcome"].items():
        for tool, outcomes in tools.items():
            shown = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            lines.append(f"    {phase:<8} {tool:<14} {shown}")
    return lines


def keep_inputs(folder: Path, run: DrillRun) -> Path:
    """Keep in ``folder`` (created) the exact files the run used: the scenario and the site,
    copied byte for byte, and every model file it loaded (the AI's, and any model swapped
    in): one already inside ``folder`` (a drill with a report builds its zoo models there, so
    that the path its incidents record stays valid) is kept where it is, any other is copied
    to ``models/``. Writes ``manifest.json`` with each file's sha256, role and original path,
    so that the run can be replayed from the report alone; returns its path. Raises
    ``RuntimeError`` if a model file no longer has the hash the gateway loaded it with."""
    import hashlib

    (folder / "models").mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, str]] = []
    root = folder.resolve()

    def keep(role: str, source: Path, name: str | None) -> str:
        data = source.read_bytes()
        if name is None:  # already in the folder
            name = source.resolve().relative_to(root).as_posix()
        else:
            (folder / name).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        entries.append({"role": role, "file": name, "sha256": digest,
                        "original": str(source)})
        return digest

    sc = run.scenario
    keep("scenario", sc.source, "scenario.yaml")
    keep("site", sc.site, "site.yaml")
    seen: set[Path] = set()
    for role, path, sha in run.models:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        inside = path.resolve().is_relative_to(root)
        digest = keep(role, path, None if inside else f"models/{role}-{path.name}")
        if digest != sha:
            raise RuntimeError(f"model file {path} changed during the drill: sha256 "
                               f"{digest}, loaded as {sha}")
    manifest = {
        "scenario": sc.name, "model": sc.model, "seed": sc.seed, "duration_s": sc.duration_s,
        "files": entries,
        "replay": "safety-gateway drill SCENARIO with the site and model files above: the "
                  "scenario names its site (and its own model file) by path; point those "
                  "paths at site.yaml and models/ (a zoo model is rebuilt bit for bit from "
                  "its name, its sha256 is the one above)",
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _model_text(run: DrillRun) -> str:
    sc = run.scenario
    if sc.own_model is None:
        return repr(sc.model)
    own = sc.own_model
    where = "the site's own" if sc.model == "site" else "own file"
    return f"{own.path.name} ({where}, sha256 {own.sha256[:12]}…)"


def write_report(directory: Path, card: Scorecard, run: DrillRun,
                 baseline: Scorecard | None = None) -> list[Path]:
    """Write ``<directory>/<scenario>[-baseline]/`` with scorecard.md, scorecard.json and the
    plots; return the files written."""
    name = card.scenario + ("" if card.gateway else "-baseline")
    out = directory / name
    out.mkdir(parents=True, exist_ok=True)
    files = _plots(out, run, card)
    data: dict[str, Any] = card.as_json()
    if baseline is not None:
        data["baseline"] = baseline.as_json()
    (out / "scorecard.json").write_text(json.dumps(data, indent=2) + "\n")
    md = [f"# Drill `{card.scenario}`" + ("" if card.gateway else " (baseline, no gateway)"),
          "", "```", scorecard_text(card, run), "```", ""]
    if baseline is not None:
        md += ["Without the gateway (same scenario, AI wired straight to the plant): "
               f"{baseline.unsafe_writes} unsafe writes, max excursion "
               f"{baseline.max_excursion:.2f}, safe range "
               f"{'LEFT' if baseline.left_safe_range else 'kept'}.", ""]
    for f in files:
        md += [f"![{f.stem}]({f.name})", ""]
    (out / "scorecard.md").write_text("\n".join(md))
    return [out / "scorecard.md", out / "scorecard.json", *files]


def _plots(out: Path, run: DrillRun, card: Scorecard) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[Path] = []
    figures = [("process.png", process_figure(run, card)),
               ("commands.png", commands_figure(run, card))]
    if run.gateway:
        figures.append(("modes.png", modes_figure(run, card)))
    for name, fig in figures:
        # bbox_inches="tight" keeps the legends placed outside the axes inside the image.
        fig.savefig(out / name, dpi=90, bbox_inches="tight")
        plt.close(fig)
        files.append(out / name)
    return files


# Injections are told apart by colour and line style (up to four, then they repeat); the
# detection of each is a solid green line. Legends go outside the axes, to the right, so that
# they never cover a curve.
_INJECTION_STYLES = (("tab:red", "--"), ("tab:purple", "-."), ("tab:brown", ":"),
                     ("tab:pink", (0, (5, 2, 1, 2))))
LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 7,
          "borderaxespad": 0.0}


def _unit(run: DrillRun, tag: str) -> str:
    """The site's unit of ``tag`` (empty when it declares none)."""
    try:
        return str(run.site.tag(tag).unit or "")
    except KeyError:
        return ""


def _label(run: DrillRun, tag: str) -> str:
    unit = _unit(run, tag)
    return f"{tag} ({unit})" if unit else tag


def _marks(ax: Any, run: DrillRun, card: Scorecard) -> None:
    """Every injection (its start) and its detection, each with its own legend entry."""
    results = {r.index: r for r in card.injections}
    for k, inj in enumerate(run.scenario.injections):
        colour, style = _INJECTION_STYLES[k % len(_INJECTION_STYLES)]
        ax.axvline(inj.start_s, color=colour, linestyle=style, linewidth=1.2,
                   label=f"{k + 1}: {inj.title} ({inj.start_s:g} s)")
        r = results.get(k)
        if r is not None and r.time_to_detect_s is not None and r.expect == "trip":
            ax.axvline(r.start_s + r.time_to_detect_s, color="tab:green", linestyle="-",
                       linewidth=1.0, alpha=0.8,
                       label=f"{k + 1}: detected (+{r.time_to_detect_s:.2f} s)")
    if not run.scenario.injections and card.injected_at_s is not None:
        ax.axvline(card.injected_at_s, color="tab:red", linestyle="--", label="injection")


def process_figure(run: DrillRun, card: Scorecard) -> Any:
    """The plant's true process variables (site units) with their safe range and danger
    limits, injections and detections marked."""
    import matplotlib.pyplot as plt

    t_hist = [s.at_s for s in run.history]
    fig, axes = plt.subplots(len(run.limits), 1, figsize=(9, 2.6 * len(run.limits)),
                             squeeze=False, sharex=True)
    for ax, lim in zip(axes[:, 0], run.limits, strict=True):
        ax.plot(t_hist, [s.process.get(lim.tag, math.nan) for s in run.history],
                color="tab:blue", linewidth=1.4, label=f"{lim.tag} (true)")
        ax.axhspan(lim.safe_min, lim.safe_max, color="tab:green", alpha=0.08,
                   label="safe range")
        ax.axhline(lim.danger_min, color="black", linewidth=1.5, label="danger limits")
        ax.axhline(lim.danger_max, color="black", linewidth=1.5)
        ax.set_ylabel(_label(run, lim.tag))
        _marks(ax, run, card)
        ax.legend(**LEGEND)
    axes[-1, 0].set_xlabel("simulated time (s)")
    fig.suptitle(f"{card.scenario}: process")
    return fig


def commands_figure(run: DrillRun, card: Scorecard) -> Any:
    """One axes per actuator of the site (site units): the command applied, and the AI's
    proposal for the actuators the AI drives (dashed, with markers, drawn under the applied
    line so that neither hides the other)."""
    import matplotlib.pyplot as plt

    t = [k.at_s for k in run.ticks]
    driven = set(run.site.controller.outputs if run.drill_site is None
                 else run.drill_site.controller.outputs)
    names = list(run.actuators)
    every = max(1, len(t) // 40)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.2 * len(names)), squeeze=False,
                             sharex=True)
    for ax, name in zip(axes[:, 0], names, strict=True):
        i = run.actuators.index(name)
        if name in driven:
            ax.plot(t, [k.proposal[i] for k in run.ticks], color="tab:orange", linewidth=1.0,
                    linestyle="--", marker="x", markersize=4, markevery=every,
                    label="AI proposal", zorder=2)
        ax.plot(t, [k.applied[i] for k in run.ticks], color="tab:blue", linewidth=1.4,
                linestyle="-", marker="o", markersize=3, markevery=(every // 2, every),
                label="applied" + ("" if name in driven else " (not AI-driven)"), zorder=3)
        ax.set_ylabel(_label(run, name))
        _marks(ax, run, card)
        ax.legend(**LEGEND)
    axes[-1, 0].set_xlabel("simulated time (s)")
    fig.suptitle(f"{card.scenario}: commands, every actuator")
    return fig


def modes_figure(run: DrillRun, card: Scorecard) -> Any:
    """The gateway's mode over time, injections and detections marked."""
    import matplotlib.pyplot as plt

    t = [k.at_s for k in run.ticks]
    fig, ax = plt.subplots(figsize=(9, 2.4))
    ax.step(t, [_MODES.index(k.mode) if k.mode in _MODES else -1 for k in run.ticks],
            where="post", color="tab:purple", label="mode")
    ax.set_yticks(range(len(_MODES)), [m.upper() for m in _MODES])
    ax.set_ylabel("gateway mode")
    _marks(ax, run, card)
    ax.set_xlabel("simulated time (s)")
    ax.legend(**LEGEND)
    fig.suptitle(f"{card.scenario}: gateway mode")
    return fig

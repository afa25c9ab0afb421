"""Drill reports: the scorecard as Markdown and JSON, and PNG plots of the run.

Plots (matplotlib, Agg backend: no display needed on an edge box or in CI):

- ``process.png``: the plant's true process variables with their safe range and danger limits;
- ``commands.png``: per AI-driven actuator, the AI's proposal against the command applied;
- ``modes.png``: the gateway's mode over time.

Each marks the injection (red dashed line) and the detection (first trip, green line).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.drill.runner import DrillRun
    from simulators.drill.score import Scorecard

__all__ = ["format_table", "write_report"]

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
             f"  plant {sc.plant}, controller {sc.controller.value} model {sc.model!r}, "
             f"{sc.duration_s:g} s simulated in {card.wall_s:.1f} s"]
    for m in run.marks:
        if m.kind == "injection":
            lines.append(f"  t={m.at_s:7.1f} s  injected: {m.detail}")
    if card.gateway:
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
    lines.append(f"  max excursion:   {card.max_excursion:.2f} of the way to the danger limit "
                 f"({card.worst_variable}); safe range "
                 f"{'LEFT' if card.left_safe_range else 'kept'}")
    for ex in card.unsafe_examples:
        lines.append(f"    unsafe: {ex}")
    for reason in card.reasons:
        lines.append(f"  FAIL: {reason}")
    return "\n".join(line for line in lines if line)


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

    inj = card.injected_at_s
    det = (inj + card.time_to_detect_s
           if inj is not None and card.time_to_detect_s is not None else None)

    def marks(ax: Any) -> None:
        if inj is not None:
            ax.axvline(inj, color="tab:red", linestyle="--", linewidth=1, label="injection")
        if det is not None:
            ax.axvline(det, color="tab:green", linewidth=1.2, label="detection")

    from gateway.incident.export import save_figure

    files: list[Path] = []
    t_hist = [s.at_s for s in run.history]
    fig, axes = plt.subplots(len(run.limits), 1, figsize=(8, 2.6 * len(run.limits)),
                             squeeze=False, sharex=True)
    for ax, lim in zip(axes[:, 0], run.limits, strict=True):
        ax.plot(t_hist, [s.process.get(lim.tag, math.nan) for s in run.history],
                color="tab:blue", label=f"{lim.tag} (true)")
        ax.axhspan(lim.safe_min, lim.safe_max, color="tab:green", alpha=0.08,
                   label="safe range")
        for d in (lim.danger_min, lim.danger_max):
            ax.axhline(d, color="black", linewidth=1.5)
        ax.set_ylabel(lim.tag)
        marks(ax)
        ax.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("simulated time (s)")
    fig.suptitle(f"{card.scenario}: process (black: danger limits)")
    files.append(save_figure(fig, out / "process.png"))

    t = [k.at_s for k in run.ticks]
    driven = [n for n in run.site.controller.outputs] or list(run.actuators)
    fig, axes = plt.subplots(len(driven), 1, figsize=(8, 2.4 * len(driven)), squeeze=False,
                             sharex=True)
    for ax, name in zip(axes[:, 0], driven, strict=True):
        i = run.actuators.index(name)
        ax.plot(t, [k.proposal[i] for k in run.ticks], color="tab:orange", linewidth=1,
                label="AI proposal")
        ax.plot(t, [k.applied[i] for k in run.ticks], color="tab:blue", linewidth=1.2,
                label="applied")
        ax.set_ylabel(name)
        marks(ax)
        ax.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("simulated time (s)")
    fig.suptitle(f"{card.scenario}: AI proposal vs applied command")
    files.append(save_figure(fig, out / "commands.png"))

    if run.gateway:
        fig, ax = plt.subplots(figsize=(8, 2.2))
        ax.step(t, [_MODES.index(k.mode) if k.mode in _MODES else -1 for k in run.ticks],
                where="post", color="tab:purple")
        ax.set_yticks(range(len(_MODES)), [m.upper() for m in _MODES])
        marks(ax)
        ax.set_xlabel("simulated time (s)")
        ax.legend(loc="lower left", fontsize=7)
        fig.suptitle(f"{card.scenario}: gateway mode")
        files.append(save_figure(fig, out / "modes.png"))
    return files

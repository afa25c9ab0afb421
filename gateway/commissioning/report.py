"""The learn report: what was learned from how many samples, where the data was thin, and each
value's provenance, as JSON (:func:`report_json`), Markdown (:func:`report_markdown`) and one
plot per actuator (:func:`plot_actuators`: its commands over time against the proposed
limits, with its unit; matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.commissioning.learn import ActuatorProposal, Learned, Proposal, SensorProposal
    from gateway.commissioning.sources import F64, History
    from gateway.commissioning.stats import TagStats

__all__ = ["plot_actuators", "report_json", "report_markdown"]


def _f(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _learned(x: Learned | None) -> dict[str, Any] | None:
    return None if x is None else {"value": _f(x.value), "why": x.why}


def _stats(st: TagStats) -> dict[str, Any]:
    return {"n": st.n, "n_moves": st.n_moves, "min": _f(st.min), "max": _f(st.max),
            "period_s": _f(st.period_s), "percentile": st.percentile,
            "rate_pct_per_s": st.rate_pct_per_s, "rate_max_per_s": st.rate_max_per_s,
            "step_pct": st.step_pct, "step_max": st.step_max,
            "distinct": None if st.distinct is None else list(st.distinct),
            "repeat_fraction": st.repeat_fraction, "longest_repeat_s": st.longest_repeat_s,
            "counter": st.counter}


def report_json(p: Proposal, out_site: Path | None) -> dict[str, Any]:
    """Everything :func:`gateway.commissioning.learn.learn` proposed, JSON-ready."""
    opt = p.options
    pred = p.prediction
    return {
        "site": str(p.site.source), "proposed_site": None if out_site is None else str(out_site),
        "sources": list(p.sources), "n_samples": p.n_samples,
        "t_first_s": _f(p.t_first_s), "t_last_s": _f(p.t_last_s),
        "options": {"margin": opt.margin, "percentile": opt.percentile,
                    "rate_factor": opt.rate_factor, "learn_ranges": opt.learn_ranges,
                    "max_discrete": opt.max_discrete, "min_samples": opt.min_samples,
                    "fit_window_s": opt.fit_window_s, "min_r2": opt.min_r2,
                    "holdout": opt.holdout},
        "actuators": [{"name": a.name, "unit": a.unit, "learned": a.learned,
                       "policy": a.policy, "min": _learned(a.min), "max": _learned(a.max),
                       "max_rate_per_s": _learned(a.max_rate_per_s),
                       "max_step": _learned(a.max_step),
                       "allowed": None if a.allowed is None else list(a.allowed),
                       "allowed_why": a.allowed_why or None, "notes": list(a.notes),
                       "stats": _stats(a.stats)} for a in p.actuators],
        "sensors": [{"name": s.name, "unit": s.unit, "learned": s.learned,
                     "range_applied": s.range_applied,
                     "range_min": _learned(s.range_min), "range_max": _learned(s.range_max),
                     "max_rate_per_s": _learned(s.max_rate_per_s),
                     "frozen_after_s": _learned(s.frozen_after_s), "notes": list(s.notes),
                     "stats": _stats(s.stats)} for s in p.sensors],
        "kept_models": list(p.kept_models),
        "prediction": None if pred is None else {
            "step_s": pred.step_s, "horizon_steps": pred.horizon_steps, "policy": pred.policy,
            "fits": [{"sensor": f.sensor, "accepted": f.accepted and f in pred.models,
                      "reason": f.reason or None, "expr": f.expr() if f.terms else None,
                      "r2": _f(f.r2), "residual_rms_per_s": _f(f.residual_rms_per_s),
                      "rate_rms_per_s": _f(f.rate_rms_per_s), "n_windows": f.n_windows,
                      "window_s": f.window_s, "dropped": list(f.dropped)} for f in pred.fits],
            "keep": [{"sensor": k[0], "min": _f(k[1]), "max": _f(k[2]), "why": k[3]}
                     for k in pred.keep]},
        "unknown_columns": list(p.unknown_columns),
        "thin": [x.name for x in _tags(p)
                 if not x.learned or any(n.startswith("thin") for n in x.notes)],
        "warnings": list(p.warnings),
    }


def _tags(p: Proposal) -> list[ActuatorProposal | SensorProposal]:
    return [*p.actuators, *p.sensors]


def _cell(x: Learned | None) -> str:
    if x is None:
        return "—"
    return f"{x.value:.6g}"


def report_markdown(p: Proposal, out_site: Path | None, plots: dict[str, str]) -> str:
    """A readable report of ``p`` (``plots``: actuator name -> image file name)."""
    data = report_json(p, out_site)
    lines = [f"# Learned envelope for site `{p.site.site.name}`", ""]
    hours = (p.t_last_s - p.t_first_s) / 3600.0 if p.n_samples else 0.0
    lines += [f"- Site file: `{p.site.source}`",
              f"- Proposed site file: `{out_site}`" if out_site is not None else "",
              f"- History: {p.n_samples} samples over {hours:.2f} h from "
              + ", ".join(f"`{s}`" for s in p.sources),
              f"- Options: margin {p.options.margin:g} of each tag's range, percentile "
              f"{p.options.percentile:g}, rate factor {p.options.rate_factor:g}, sensor ranges "
              f"{'learned' if p.options.learn_ranges else 'declared (proposals reported)'}, "
              f"at least {p.options.min_samples} samples per tag, "
              f"model windows {p.options.fit_window_s:g} s, R² threshold {p.options.min_r2:g}, "
              f"holdout {p.options.holdout:g}", ""]
    if data["thin"]:
        lines += ["## Thin data", "", "These tags had too little data for some or all of "
                  "their settings (their hand-written settings are kept where noted):", ""]
        for tag in _tags(p):
            if tag.name in data["thin"]:
                lines.append(f"- `{tag.name}`: {tag.stats.n} readings, {tag.stats.n_moves} "
                             "moves. " + " ".join(tag.notes))
        lines.append("")
    if p.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in p.warnings], ""]
    lines += ["## Actuators (envelope.limits)", "",
              "| actuator | unit | samples | observed | min | max | allowed | max rate /s | "
              "max step | policy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in p.actuators:
        obs = (f"{a.stats.min:.4g} .. {a.stats.max:.4g}" if a.stats.n else "no data")
        allowed = "—" if a.allowed is None else ", ".join(f"{v:g}" for v in a.allowed)
        lines.append(f"| `{a.name}` | {a.unit} | {a.stats.n} | {obs} | {_cell(a.min)} | "
                     f"{_cell(a.max)} | {allowed} | {_cell(a.max_rate_per_s)} | "
                     f"{_cell(a.max_step)} | {a.policy} |")
    lines += ["", "Provenance:", ""]
    for a in p.actuators:
        for key, x in (("min", a.min), ("max", a.max), ("max_rate_per_s", a.max_rate_per_s),
                       ("max_step", a.max_step)):
            if x is not None and a.allowed is None:
                lines.append(f"- `{a.name}.{key}` = {x.value:.6g}: {x.why}")
        if a.allowed is not None:
            lines.append(f"- `{a.name}.allowed`: {a.allowed_why}")
        lines += [f"- `{a.name}`: {n}" for n in a.notes]
        if a.name in plots:
            lines.append(f"\n![{a.name}]({plots[a.name]})\n")
    lines += ["", "## Sensors (range, detection)", "",
              "| sensor | unit | samples | update period s | observed | proposed range | "
              "written | max rate /s | frozen after s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in p.sensors:
        obs = (f"{s.stats.min:.4g} .. {s.stats.max:.4g}" if s.stats.n else "no data")
        lines.append(f"| `{s.name}` | {s.unit} | {s.stats.n} | {s.stats.period_s:.3g} | {obs} | "
                     f"{_cell(s.range_min)} .. {_cell(s.range_max)} | "
                     f"{'yes' if s.range_applied else 'no'} | "
                     f"{_cell(s.max_rate_per_s)} | {_cell(s.frozen_after_s)} |")
    lines += ["", "Provenance:", ""]
    for s in p.sensors:
        for key, x in (("range min", s.range_min), ("range max", s.range_max),
                       ("max_rate_per_s", s.max_rate_per_s),
                       ("frozen_after_s", s.frozen_after_s)):
            if x is not None:
                lines.append(f"- `{s.name}` {key} = {x.value:.6g}: {x.why}")
        lines += [f"- `{s.name}`: {n}" for n in s.notes]
    lines += ["", "## Process model (envelope.prediction)", ""]
    pred = p.prediction
    if pred is None:
        lines.append("No sensor could be fitted: no prediction is proposed.")
    else:
        models = {f.sensor for f in pred.models}
        lines += [f"Step {pred.step_s:g} s, horizon {pred.horizon_steps} steps, policy "
                  f"{pred.policy}. Least squares on windows of {p.options.fit_window_s:g} s; "
                  f"a sensor whose R² is under {p.options.min_r2:g} gets no prediction.", "",
                  "| sensor | R² | residual RMS /s | rate RMS /s | windows | model | used |",
                  "|---|---|---|---|---|---|---|"]
        for f in pred.fits:
            r2 = "—" if not math.isfinite(f.r2) else f"{f.r2:.4f}"
            res = ("—" if not math.isfinite(f.residual_rms_per_s)
                   else f"{f.residual_rms_per_s:.3g}")
            rate = "—" if not math.isfinite(f.rate_rms_per_s) else f"{f.rate_rms_per_s:.3g}"
            used = "yes" if f.sensor in models else f"**no**: {f.reason or 'no keep range'}"
            expr = f"`{f.expr()}`" if f.terms else "—"
            lines.append(f"| `{f.sensor}` | {r2} | {res} | {rate} | {f.n_windows} | {expr} | "
                         f"{used} |")
        lines.append("")
        for sensor, lo, hi, why in pred.keep:
            lines.append(f"- keep `{sensor}` in [{lo:g}, {hi:g}]: {why}")
    if p.kept_models:
        lines += ["", f"The site's own model and keep range are kept for "
                  f"{', '.join(f'`{n}`' for n in p.kept_models)}: the history could not fit "
                  "them, and a calm history cannot teach dynamics."]
    lines += ["", "Linear constraints, interlocks and conditional safe values are the site's "
              "own, unchanged: a clean history cannot teach them.", ""]
    return "\n".join(x for x in lines if x is not None) + "\n"


def plot_actuators(p: Proposal, history: History, folder: Path, stem: str) -> dict[str, str]:
    """One PNG per actuator with data in ``folder`` (``<stem>.<actuator>.png``): its commands
    over time (hours from the first sample), the proposed min and max, in its unit. Returns
    actuator name -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    t0 = float(history.time_s[0]) if history.n_samples else 0.0
    hours = (history.time_s - t0) / 3600.0
    # One figure redrawn for every actuator, and at most _PLOT_POINTS points per line (each
    # bucket's minimum and maximum, so that no excursion is hidden): a day at 1 s is 86,400
    # points, and drawing them all for each of a site's actuators took most of `learn`'s time.
    fig, ax = plt.subplots(figsize=(8, 3), dpi=80)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.17, top=0.88)
    try:
        for a in p.actuators:
            if a.stats.n == 0 or a.name not in history.names:
                continue
            ax.clear()
            x, y = _envelope_points(hours, history.column(a.name))
            ax.plot(x, y, lw=0.6, label="commands")
            ax.axhline(a.min.value, color="tab:red", ls="--", lw=0.8, label="proposed min/max")
            ax.axhline(a.max.value, color="tab:red", ls="--", lw=0.8)
            ax.set_xlabel("hours since the first sample")
            ax.set_ylabel(f"{a.name} ({a.unit})" if a.unit else a.name)
            ax.set_title(f"{a.name}: {a.stats.n} commands")
            ax.legend(loc="upper right", fontsize=7)
            name = f"{stem}.{a.name}.png"
            fig.savefig(folder / name)
            files[a.name] = name
    finally:
        plt.close(fig)
    return files


_PLOT_POINTS = 2000


def _envelope_points(x: F64, y: F64) -> tuple[F64, F64]:
    """At most about ``_PLOT_POINTS`` points of (x, y) that keep each bucket's extremes."""
    n = x.shape[0]
    if n <= _PLOT_POINTS:
        return x, y
    per = -(-n // (_PLOT_POINTS // 2))
    cut = (n // per) * per
    yb = y[:cut].reshape(-1, per)
    xb = x[:cut].reshape(-1, per)
    with warnings.catch_warnings():  # a bucket of missing readings is a gap: NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanmin(yb, axis=1)
        hi = np.nanmax(yb, axis=1)
    xs = np.repeat(xb[:, 0], 2)
    ys = np.column_stack([lo, hi]).ravel()
    return xs, ys

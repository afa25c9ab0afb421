"""The proposed site file: the input site with the learned settings, and comments saying where
each number came from.

The site's other sections are written back as they were read (``yaml.safe_load``, then
``yaml.safe_dump``; the input file's own comments are not carried over). Learned settings
replace: each sensor tag's ``range``, ``envelope.limits``, ``envelope.prediction``, and
``detection.frozen_after_s`` / ``detection.max_rate_per_s``. Relative paths of the
``controller``, ``northbound`` and ``audit`` sections are rewritten relative to the output's
folder, since the loader resolves them against the file's own folder. A sensor's ``range`` is
replaced only with ``--learn-ranges``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path  # noqa: TC003 (used at run time: site_dir / value)
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    from gateway.commissioning.learn import Proposal

__all__ = ["num", "write_site"]

_PATH_KEYS = frozenset({"path", "model", "registry", "certificate", "private_key", "client_ca",
                        "pki", "key", "head_sinks"})
_REBASED_SECTIONS = ("controller", "northbound", "audit")


def num(x: float) -> str:
    """``x`` as a YAML 1.1 float that reads back bit for bit (the shortest such digits):
    rounding could move a limit past what was seen or outside a declared range. Never
    exponent notation, which PyYAML reads as a string (``1e-05``)."""
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x}")
    return str(np.format_float_positional(x, unique=True, trim="0"))


def _dump(obj: Any, indent: int) -> list[str]:
    text = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=100,
                          allow_unicode=True)
    pad = " " * indent
    return [pad + line for line in text.rstrip("\n").split("\n")]


def _comment(text: str, indent: int) -> list[str]:
    return [" " * indent + "# " + text.replace("\n", " ")]


def _rebase(obj: Any, site_dir: Path, out_dir: Path, key: str | None = None) -> Any:
    if isinstance(obj, dict):
        return {k: _rebase(v, site_dir, out_dir, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebase(v, site_dir, out_dir, key) for v in obj]
    if key in _PATH_KEYS and isinstance(obj, str) and not os.path.isabs(obj):
        return os.path.relpath(os.path.normpath(site_dir / obj), out_dir)
    return obj


def render_site(proposal: Proposal, raw: dict[str, Any], out: Path) -> str:
    """The proposed site file's text for ``raw`` (the input site file, as ``safe_load`` read
    it), to be written at ``out``."""
    site = proposal.site
    site_dir = site.source.resolve().parent
    out_dir = out.resolve().parent
    opt = proposal.options
    lines: list[str] = []
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    span_h = (proposal.t_last_s - proposal.t_first_s) / 3600.0
    lines += _comment(f"Proposed by `safety-gateway learn` on {when} from {proposal.n_samples} "
                      f"samples ({span_h:.2f} h) of: {', '.join(proposal.sources)}", 0)
    lines += _comment(f"Site: {site.source}. Margin {opt.margin:g} (fraction of each tag's "
                      f"range), percentile {opt.percentile:g}, rate factor "
                      f"{opt.rate_factor:g}, holdout {opt.holdout:g}"
                      + (", sensor ranges learned." if opt.learn_ranges else "."), 0)
    lines += _comment("Each learned number has a comment saying where it came from; the "
                      "report beside this file has the details. Review it before use.", 0)
    sensors = {s.name: s for s in proposal.sensors}
    for section, value in raw.items():
        if section in _REBASED_SECTIONS:
            value = _rebase(value, site_dir, out_dir)
        lines.append("")
        if section == "tags" and isinstance(value, dict):
            lines.append("tags:")
            for name, body in value.items():
                prop = sensors.get(name)
                if (prop is not None and prop.learned and prop.range_applied
                        and isinstance(body, dict)):
                    body = dict(body)
                    body["range"] = [prop.range_min.value, prop.range_max.value]
                    lines += _comment(f"range min: {prop.range_min.why}", 2)
                    lines += _comment(f"range max: {prop.range_max.why}", 2)
                lines += _dump({name: body}, 2)
        elif section == "envelope" and isinstance(value, dict):
            lines += _envelope(proposal, value)
        elif section == "detection" and isinstance(value, dict | None):
            lines += _detection(proposal, value or {})
        else:
            lines += _dump({section: value}, 0)
    if "detection" not in raw:
        lines.append("")
        lines += _detection(proposal, {})
    return "\n".join(lines) + "\n"


def _envelope(proposal: Proposal, env: dict[str, Any]) -> list[str]:
    lines = ["envelope:"]
    for key, value in env.items():
        if key in ("limits", "prediction"):
            continue
        if key in ("constraints", "interlocks"):
            lines += _comment(f"{key}: the site's own, unchanged (not learned)", 2)
        lines += _dump({key: value}, 2)
    lines.append("  limits:")
    for a in proposal.actuators:
        fields: list[str] = []
        if a.allowed is not None:
            fields.append("allowed: [" + ", ".join(num(v) for v in a.allowed) + "]")
            lines += _comment(f"{a.name} allowed: {a.allowed_why}", 4)
        else:
            fields += [f"min: {num(a.min.value)}", f"max: {num(a.max.value)}"]
            lines += _comment(f"{a.name} min: {a.min.why}", 4)
            lines += _comment(f"{a.name} max: {a.max.why}", 4)
        if a.max_rate_per_s is not None:
            fields.append(f"max_rate_per_s: {num(a.max_rate_per_s.value)}")
            lines += _comment(f"{a.name} max_rate_per_s: {a.max_rate_per_s.why}", 4)
        if a.max_step is not None:
            fields.append(f"max_step: {num(a.max_step.value)}")
            lines += _comment(f"{a.name} max_step: {a.max_step.why}", 4)
        for note in a.notes:
            lines += _comment(f"{a.name}: {note}", 4)
        fields.append(f"policy: {a.policy}")
        lines.append(f"    {a.name}: {{{', '.join(fields)}}}")
    pred = proposal.prediction
    models = pred.models if pred is not None else ()
    # The site's own model of a sensor the history could not fit stays (as a hand-written
    # limit stays where none is learned): a calm history that hardly moved a sensor cannot
    # teach its dynamics, and dropping the model would drop the predictive check.
    own = env.get("prediction") if isinstance(env.get("prediction"), dict) else None
    own_models = dict((own or {}).get("model") or {})
    own_keep = dict((own or {}).get("keep") or {})
    fitted = {m.sensor for m in models}
    kept = {n: e for n, e in own_models.items() if n in proposal.kept_models}
    if (pred is None or not models) and not kept:
        lines += _comment("prediction: none (no sensor's model fits well enough; see the "
                          "report)", 2)
        return lines
    lines.append("  prediction:")
    lines += _comment("Fitted by least squares from the history (gateway/commissioning/"
                      "fitting.py); a sensor whose fit is poor has no row, unless the site "
                      "had its own model for it (kept).", 4)
    own_d: dict[str, Any] = own or {}
    step_s = pred.step_s if pred is not None else float(own_d.get("step_s", 1.0))
    lines.append(f"    step_s: {num(step_s)}")
    horizon = pred.horizon_steps if pred is not None else own_d.get("horizon_steps", 10)
    lines.append(f"    horizon_steps: {horizon}")
    lines.append("    model:")
    for fit in models:
        lines += _comment(f"{fit.sensor}: R² {fit.r2:.4f}, residual RMS "
                          f"{fit.residual_rms_per_s:.3g}/s over {fit.n_windows} windows of "
                          f"{fit.window_s:g} s", 6)
        lines.append(f"      {fit.sensor}: \"{fit.expr()}\"")
    reasons = {f.sensor: f.reason for f in (pred.fits if pred is not None else ())
               if not f.accepted}
    for sensor, expr in kept.items():
        why = reasons.get(sensor, "no fit from the history")
        lines += _comment(f"{sensor}: the site's own model, kept (the history's: {why})", 6)
        lines.append(f"      {sensor}: {json.dumps(str(expr))}")
    for sensor, why in reasons.items():
        if sensor not in kept:
            lines += _comment(f"{sensor}: no model ({why})", 6)
    lines.append("    keep:")
    for sensor, lo, hi, why in (pred.keep if pred is not None else ()):
        if sensor not in fitted:
            continue
        lines += _comment(f"{sensor}: {why}", 6)
        parts = ([f"min: {num(lo)}"] if math.isfinite(lo) else []) + (
            [f"max: {num(hi)}"] if math.isfinite(hi) else [])
        lines.append(f"      {sensor}: {{{', '.join(parts)}}}")
    for sensor in kept:
        lines += _comment(f"{sensor}: the site's own keep range (its model kept)", 6)
        lines += _dump({sensor: own_keep[sensor]}, 6)
    policy = pred.policy if pred is not None else own_d.get("policy", "reject")
    lines.append(f"    policy: {policy}")
    return lines


def _detection(proposal: Proposal, det: dict[str, Any]) -> list[str]:
    lines = ["detection:"]
    scaled = dict(proposal.detection)
    rest = {k: v for k, v in det.items()
            if k not in ("frozen_after_s", "max_rate_per_s", *scaled)}
    if rest:
        lines += _dump(rest, 2)
    for key, learned in scaled.items():
        lines += _comment(f"{key}: {learned.why}", 2)
        lines.append(f"  {key}: {num(learned.value)}")
    frozen = [s for s in proposal.sensors if s.frozen_after_s is not None]
    rates = [s for s in proposal.sensors if s.max_rate_per_s is not None]
    if frozen:
        lines.append("  frozen_after_s:")
        for s in frozen:
            assert s.frozen_after_s is not None
            lines += _comment(s.frozen_after_s.why, 4)
            lines.append(f"    {s.name}: {num(s.frozen_after_s.value)}")
    if rates:
        lines.append("  max_rate_per_s:")
        for s in rates:
            assert s.max_rate_per_s is not None
            lines += _comment(s.max_rate_per_s.why, 4)
            lines.append(f"    {s.name}: {num(s.max_rate_per_s.value)}")
    for s in proposal.sensors:
        for note in s.notes:
            lines += _comment(f"{s.name}: {note}", 2)
    if len(lines) == 1:
        lines[0] = "detection: {}"
    return lines


def write_site(proposal: Proposal, raw: dict[str, Any], out: Path) -> None:
    """Write the proposed site file at ``out`` (OSError if it cannot be written)."""
    out.write_text(render_site(proposal, raw, out), encoding="utf-8")

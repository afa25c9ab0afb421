"""Drill reports: the exact files a run used are kept (copied, with sha256) so that it can be
replayed; the plots carry the site's units, every actuator, each injection, and legends that
do not cover the curves (checked on the matplotlib figure objects, not on pixels). The
Markdown and JSON summary is checked with the live drill (test_live.py), which writes it."""

from __future__ import annotations

import hashlib
import json

import matplotlib

from simulators.drill.cli import drills_dir
from simulators.drill.report import (
    LEGEND,
    commands_figure,
    keep_inputs,
    modes_figure,
    process_figure,
)
from simulators.drill.scenario import load_scenario

matplotlib.use("Agg")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_default_report_keeps_the_files_it_ran(default_report):
    # `drill --report DIR`: DIR/<scenario>/ran/ holds the scenario, the site and the model,
    # byte for byte, and a manifest of their sha256; the model's is the one the incident
    # recorded, so the evidence and the kept files agree.
    from gateway.incident.store import load_incidents

    folder = default_report / "backdoor_water_tank"
    ran = folder / "ran"
    manifest = json.loads((ran / "manifest.json").read_text())
    files = {f["role"]: f for f in manifest["files"]}
    assert set(files) == {"scenario", "site", "ai"}
    for f in files.values():
        assert _sha((ran / f["file"]).read_bytes()) == f["sha256"]
    scenario = drills_dir() / "backdoor_water_tank.yaml"
    assert (ran / "scenario.yaml").read_bytes() == scenario.read_bytes()
    assert (ran / "site.yaml").read_bytes() == load_scenario(scenario).site.read_bytes()
    (incident,) = load_incidents(folder / "audit.db")
    assert incident.model.sha256 == files["ai"]["sha256"]
    # The model path the incident recorded is the kept file: it outlives the drill.
    assert incident.model.path is not None
    from pathlib import Path

    assert Path(incident.model.path).resolve() == (ran / files["ai"]["file"]).resolve()
    from simulators.zoo import policies

    assert (ran / files["ai"]["file"]).read_bytes() == policies.build("water_tank", "backdoor")


def _legend_outside(ax) -> bool:
    legend = ax.get_legend()
    if legend is None:
        return False
    anchor = legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted())
    return anchor.x0 >= 1.0


def test_plots_have_units_every_actuator_each_injection_and_legends_outside(own_run):
    import matplotlib.pyplot as plt

    run, card, _ = own_run
    assert card.passed, card.reasons
    fig = process_figure(run, card)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "level (m)"
    assert ax.get_xlabel() == "simulated time (s)"
    assert _legend_outside(ax)
    labels = [line.get_label() for line in ax.get_lines()]
    assert "1: demand surge (15 s)" in labels and "2: level forged (35 s)" in labels
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
    assert styles["1: demand surge (15 s)"] != styles["2: level forged (35 s)"]
    assert any(lbl.startswith("2: detected (+0.10 s)") for lbl in labels)
    plt.close(fig)

    fig = commands_figure(run, card)
    assert [a.get_ylabel() for a in fig.axes] == [
        "inflow_valve (%)", "outflow_pump (%)", "drain_valve (open)"]
    for a, name in zip(fig.axes, run.actuators, strict=True):
        lines = {line.get_label(): line for line in a.get_lines()}
        applied = [k for k in lines if k.startswith("applied")]
        assert len(applied) == 1, name  # one applied line per actuator
        if name in ("inflow_valve", "outflow_pump"):  # driven by the AI
            proposal = lines["AI proposal"]
            assert proposal.get_linestyle() != lines[applied[0]].get_linestyle()
            assert proposal.get_marker() != lines[applied[0]].get_marker()
        else:
            assert "AI proposal" not in lines
        assert _legend_outside(a)
    plt.close(fig)

    fig = modes_figure(run, card)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "gateway mode" and _legend_outside(ax)
    plt.close(fig)
    assert LEGEND["loc"] == "upper left"


def test_keep_inputs_copies_an_own_model(own_run, tmp_path):
    run, _, _ = own_run
    manifest = json.loads(keep_inputs(tmp_path / "ran", run).read_text())
    ai = next(f for f in manifest["files"] if f["role"] == "ai")
    assert ai["sha256"] == run.scenario.own_model.sha256
    assert (tmp_path / "ran" / ai["file"]).read_bytes() == run.scenario.own_model.path.read_bytes()

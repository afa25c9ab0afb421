"""The evidence bundle's plots (issue 18, item 6), read from the matplotlib objects of a real
drill's incident: units on the axes, legends that cover no curve, and the AI's proposal drawn
so that the applied command does not hide it where they coincide."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from gateway.forensics.recorder import read_jsonl
from gateway.incident.export import _units, incident_figures
from gateway.incident.store import load_incident


@pytest.fixture(scope="module")
def figures(drill_bundle):
    incident = load_incident(drill_bundle.audit_db, drill_bundle.incident)
    recording = read_jsonl(drill_bundle.bundle / "flight_recorder.jsonl")
    units = _units(drill_bundle.bundle / "site.yaml")
    figs = dict(incident_figures(incident, recording, units))
    yield figs
    for fig in figs.values():
        plt.close(fig)


def test_axes_carry_units(figures):
    process = figures["process.png"].axes
    assert [ax.get_ylabel() for ax in process] == [
        "level [m]", "inflow_rate [m3/s]", "demand [m3/s]", "uptime_s [s]"]
    commands = figures["commands.png"].axes
    assert [ax.get_ylabel() for ax in commands] == [
        "inflow_valve [%]", "outflow_pump [%]", "drain_valve [open]"]  # every actuator
    for fig in figures.values():
        assert "[s]" in fig.axes[-1].get_xlabel()


def test_legends_sit_outside_the_axes(figures):
    for name, fig in figures.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            assert legend is not None, name
            box = legend.get_window_extent(renderer)
            assert box.x0 >= ax.get_window_extent(renderer).x1, name  # right of the plot
            assert all(text.get_fontsize() >= 8 for text in legend.get_texts())


def test_proposal_and_applied_are_told_apart_where_they_coincide(figures):
    for ax in figures["commands.png"].axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        applied, proposal = lines["applied"], lines["AI proposal"]
        assert applied.get_linestyle() != proposal.get_linestyle()
        assert proposal.get_marker() not in (None, "", "None")
        assert proposal.get_zorder() > applied.get_zorder()  # the thin one on top
        assert applied.get_linewidth() > proposal.get_linewidth()
        assert "trip" in lines  # the trip is marked on every axis

"""What a user reads first: ``map`` shows OPC UA methods as methods and explains its codes, and
no ``--help`` text carries source markup (reST roles, backticks) from the docstrings."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.cli import build_parser, main

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
WATER_TANK = str(ROOT / "configs" / "water_tank.yaml")


def test_map_shows_methods_with_arguments_and_roles_apart_from_variables(capsys):
    assert main(["map", WATER_TANK]) == 0
    out = capsys.readouterr().out
    variables = out.split("northbound OPC UA variables:", 1)[1].split(
        "northbound OPC UA methods", 1)[0]
    methods = out.split("northbound OPC UA methods", 1)[1].split("southbound:", 1)[0]
    # No method is listed as a variable (before: each method was a read-only "variable").
    from gateway.adapters.opcua.server import METHODS

    for name in METHODS:
        assert not re.search(rf"Gateway\.{name}\s", variables), name
    assert "Gateway.Status.Mode" in variables and "Gateway.Actuators.inflow_valve" in variables
    # Each method with its arguments and who may call it.
    assert "RequestMode(Mode: String)" in methods
    assert "Bypass(Detector: String, Seconds: Double)" in methods
    assert "IncidentCheck(Id: String, Phase: String, Item: String)" in methods
    reset = methods.split("ResetTrip()", 1)[1].split("\n  Bypass(", 1)[0]
    assert "may call: admin" in reset and "operator" not in reset
    assert "may call: operator, admin" in methods.split("RequestMode(", 1)[1].split("\n  ", 2)[1]


def test_map_prints_a_legend_of_its_columns_and_codes(capsys):
    assert main(["map", WATER_TANK]) == 0
    out = capsys.readouterr().out
    legend = out.split("\nlegend:\n", 1)[1]
    for column in ("access", "Modbus", "OPC UA", "methods", "southbound"):
        assert re.search(rf"^  {column}\s", legend, flags=re.M), column
    assert "rw  a client may write it" in legend
    assert "BadUserAccessDenied" in legend and "Accepted (Boolean)" in legend
    # Every Modbus exception code the northbound server answers with is explained.
    for code in ("exception 1 ", "2 (", "3 (", "4 (", "6 (", "11 ("):
        assert code in legend, code
    # The status registers' codes, one per line, each with its meaning.
    assert re.search(r"^ +5  not taken in this mode", out, flags=re.M)
    assert re.search(r"^ +3  safe_stop$", out, flags=re.M)


def test_map_json_lists_methods_as_the_server_declares_them(capsys):
    from gateway.adapters.opcua.server import METHODS

    assert main(["map", "--json", WATER_TANK]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not {f"ns=2;s=Gateway.{name}" for name in METHODS} & {
        n["nodeid"] for n in out["opcua"]}
    methods = {m["name"]: m for m in out["opcua_methods"]}
    assert list(methods) == list(METHODS)
    assert methods["Bypass"]["inputs"] == [{"name": "Detector", "type": "String"},
                                           {"name": "Seconds", "type": "Double"}]
    assert methods["ResetTrip"] == {
        "name": "ResetTrip", "nodeid": "ns=2;s=Gateway.ResetTrip", "inputs": [],
        "outputs": [{"name": "Accepted", "type": "Boolean"},
                    {"name": "Message", "type": "String"}],
        "roles": ["admin"], "does": methods["ResetTrip"]["does"]}
    assert methods["IncidentResolve"]["roles"] == ["admin"]
    assert methods["IncidentNote"]["roles"] == ["operator", "admin"]


def _parsers(parser: argparse.ArgumentParser,
             path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


_PARSERS = list(_parsers(build_parser(), "safety-gateway"))
# Source markup: reST roles (:class:`x`), inline literals and interpreted text (``x``, `x`),
# strong emphasis (**x**).
_MARKUP = re.compile(r"`|:[a-z]+:`|\*\*")


def test_every_command_has_help():
    names = {path for path, _ in _PARSERS}
    assert {"safety-gateway map", "safety-gateway incidents check",
            "safety-gateway model register", "safety-gateway ctl"} <= names


@pytest.mark.parametrize(("path", "parser"), _PARSERS, ids=[p for p, _ in _PARSERS])
def test_help_has_no_source_markup(path, parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = parser.format_help()
    bad = [line for line in text.splitlines() if _MARKUP.search(line)]
    assert not bad, f"{path} --help shows source markup: {bad}"


@pytest.mark.parametrize(("source", "plain"), [
    (":func:`add_parser` adds ``incidents``", "add_parser adds incidents"),
    ("through an :class:`~gateway.audit.log.AuditLog`", "through an AuditLog"),
    ("as `show` lists it; **never** %(default)s", "as show lists it; never %(default)s"),
])
def test_plain_text_keeps_the_words_and_drops_the_markup(source, plain):
    from gateway.cli import plain_text

    assert plain_text(source) == plain

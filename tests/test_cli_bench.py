"""`safety-gateway bench`: usage errors and a missing example site are input errors (exit 2)."""

from __future__ import annotations

import json

from benchmarks import supervisor
from gateway.cli import main


def test_unknown_bench_is_a_usage_error(capsys):
    assert main(["bench", "nonsense"]) == 2
    assert "unknown bench 'nonsense'" in capsys.readouterr().err


def test_bench_without_the_example_site_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(supervisor, "SITE", tmp_path / "missing.yaml")
    assert main(["bench", "supervisor", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "needs the example sites" in err
    assert "missing.yaml" in err
    assert "Traceback" not in err


def test_supervisor_bench_quick_json(capsys):
    assert main(["bench", "supervisor", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("step_us_median", "step_us_p99", "onnx_us_median", "onnx_us_p99"):
        assert result[key] > 0, key
    assert result["onnx_anomalies"] == 0
    assert result["steps"] >= 1000


def test_bench_help_names_every_registered_bench():
    """The help is written out (building the parser must not import the benches), so it can
    fall behind the registry: this keeps them equal."""
    from benchmarks import BENCHES
    from gateway.cli import build_parser

    bench = build_parser()._subparsers._group_actions[0].choices["bench"]  # type: ignore[union-attr]
    what = next(a for a in bench._actions if a.dest == "what")
    listed = {w.strip() for w in what.help.split(":", 1)[1].split(",")}
    assert listed == set(BENCHES)

"""`safety-gateway learn` and `safety-gateway prove`: files written, exit codes, errors without
tracebacks."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import pytest

from gateway.cli import EXIT_FAILED, EXIT_INPUT, EXIT_OK, main
from tests.commissioning.conftest import WATER

if TYPE_CHECKING:
    from pathlib import Path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_learn_writes_a_site_that_checks_a_report_and_plots(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], water_day: Path) -> None:
    out = tmp_path / "proposed.yaml"
    code, stdout, _ = run(capsys, "learn", str(water_day), "--site", str(WATER),
                          "--out", str(out))
    assert code == EXIT_OK
    assert "prediction for level" in stdout
    assert run(capsys, "check", str(out))[0] == EXIT_OK
    report = json.loads((tmp_path / "proposed.json").read_text())
    assert report["n_samples"] == 7201
    assert report["proposed_site"] == str(out)
    md = (tmp_path / "proposed.md").read_text()
    for actuator in ("inflow_valve", "outflow_pump", "drain_valve"):
        png = tmp_path / f"proposed.{actuator}.png"
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"](proposed.{actuator}.png)" in md
    # Proved against the history it came from: nothing trips.
    code, stdout, _ = run(capsys, "prove", str(out), str(water_day))
    assert code == EXIT_OK
    assert stdout.rstrip().endswith("PASS: nothing would have tripped")


def test_prove_fails_with_exit_1_and_reports_json(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  water_day: Path) -> None:
    lines = water_day.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1001].split(",")
    row[header.index("level")] = "0.25"  # a spoofed reading: the level "drops" 2.25 m in 1 s
    lines[1001] = ",".join(row)
    forged = tmp_path / "forged.csv"
    forged.write_text("\n".join(lines) + "\n")
    code, stdout, _ = run(capsys, "prove", str(WATER), str(forged), "--holdout", "0.25",
                          "--json")
    assert code == EXIT_FAILED
    data = json.loads(stdout)
    assert data["passed"] is False
    assert [r["label"] for r in data["results"]] == ["all", "held back (last 0.25)"]
    first = {t["name"]: t for t in data["results"][0]["tallies"]}
    assert first["input.rate.level"]["first_s"] == 1000.0
    assert data["results"][1]["trips"] == 0  # the spoof lies in the first three quarters
    code, stdout, _ = run(capsys, "prove", str(WATER), str(forged))
    assert code == EXIT_FAILED
    assert "FAIL: 2 trips" in stdout
    assert "trip   detector   input.rate.level: 1 (first at 1000.0 s" in stdout
    # The full supervisor judged it, and says what it could not judge and why.
    assert "supervisor: commands judged as ai; time in mode: " in stdout
    assert "judged, never tripped: device.plc, divergence.inflow_valve, " in stdout
    assert "not judged: canary: the canary compares the model's outputs on its golden" in stdout
    assert data["results"][0]["supervisor"] is True
    code, stdout, _ = run(capsys, "prove", str(WATER), str(forged), "--commands", "written")
    assert code == EXIT_FAILED
    assert "supervisor: commands judged as written; time in mode: manual " in stdout
    assert "not judged: violation_rate: the history's commands are judged as written" in stdout
    # A CSV holds no proposals: judging recorded ones is refused with a clear error.
    code, stdout, err = run(capsys, "prove", str(WATER), str(forged), "--commands", "recorded")
    assert code == EXIT_INPUT
    assert "--commands recorded needs a flight recording" in err
    # Epoch times are shown as UTC dates.
    epoch = tmp_path / "epoch.csv"
    epoch.write_text("time,level\n1764930000,2.5\n1764930001,0.5\n")
    code, stdout, _ = run(capsys, "prove", str(WATER), str(epoch))
    assert code == EXIT_FAILED
    assert "input.rate.level: 1 (first at 2025-12-05T10:20:01.000000Z" in stdout


@pytest.mark.parametrize(("content", "expected"), [
    ("time,level\n0,1\n1,oops\n", ":3: column 'level': 'oops' is not a finite number"),
    ("level,time\n1,0\n", ":1: the first column must be the time"),
])
def test_bad_history_is_exit_2_with_file_and_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  content: str, expected: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    for argv in (("learn", str(bad), "--site", str(WATER), "--out", str(tmp_path / "o.yaml")),
                 ("prove", str(WATER), str(bad))):
        code, _, err = run(capsys, *argv)
        assert code == EXIT_INPUT
        assert f"{bad}{expected}" in err


def test_bad_site_options_and_paths_are_exit_2(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               water_day: Path) -> None:
    broken = tmp_path / "site.yaml"
    broken.write_text("site: {name: x}\n")
    code, _, err = run(capsys, "learn", str(water_day), "--site", str(broken), "--out",
                       str(tmp_path / "o.yaml"))
    assert code == EXIT_INPUT and f"{broken}:" in err
    code, _, err = run(capsys, "learn", str(water_day), "--site", str(WATER), "--out",
                       str(tmp_path / "o.yaml"), "--margin", "2")
    assert code == EXIT_INPUT and "--margin must be in [0, 1]" in err
    with pytest.raises(SystemExit) as exc:
        main(["prove", str(WATER), str(water_day), "--holdout", "1.5"])
    assert exc.value.code == EXIT_INPUT
    copy = tmp_path / "water_tank.yaml"
    shutil.copy(WATER, copy)
    code, _, err = run(capsys, "learn", str(water_day), "--site", str(copy), "--out", str(copy))
    assert code == EXIT_INPUT and "must not overwrite" in err
    code, _, err = run(capsys, "learn", str(water_day), "--site", str(WATER), "--out",
                       str(tmp_path / "no" / "such" / "dir.yaml"), "--no-plots")
    assert code == EXIT_INPUT and "cannot write" in err

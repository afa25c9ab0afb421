"""`safety-gateway bench mcp --quick --json`: the figures are there and plausible (the
targets themselves are judged by the full bench, not on a loaded test machine)."""

from __future__ import annotations

import json

from gateway.cli import main


def test_mcp_bench_quick_json(capsys) -> None:
    code = main(["bench", "mcp", "--quick", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code in (0, 1)
    for tool in ("read_plant", "check_command"):
        fig = result["round_trip_ms"][tool]
        assert 0 < fig["p50"] <= fig["p99"] and fig["n"] == 100
    # A proposal is judged by a cycle after the call, as a Modbus write is taken by one.
    assert result["propose_cycles"]["p50"] >= 1 and result["modbus_cycles"]["p50"] >= 1
    assert result["propose_cycles"]["n"] == result["modbus_cycles"]["n"] == 5
    assert set(result["pass"]) == {"read_plant", "check_command", "propose"}

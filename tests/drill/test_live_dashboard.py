"""``drill --dashboard``: a person watches the drill's gateway on its dashboard while the
drill runs at wall pace, and sees the trip, the failover and the incident appear within a
second. The test is the person's browser reduced to polling ``/api/state`` (with deadlines);
the drill is the real runner on a short scenario (5 s), over loopback."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from simulators.drill.cli import drills_dir
from simulators.drill.runner import run_drill
from simulators.drill.scenario import load_scenario
from simulators.drill.serve import DrillServing, WallPacer, parse_address, parse_user

if TYPE_CHECKING:
    from pathlib import Path

TRIP_AT_S = 2.0

SHORT = f"""
description: a short watched drill (the level reading forged at {TRIP_AT_S:g} s)
plant: water_tank
site: {drills_dir().parent / 'water_tank.yaml'}
controller:
  kind: onnx
  file: {drills_dir() / 'models' / 'water_tank_linear.onnx'}
  sha256: 10a4ca8659201c66548c8c74bbcfe1021e10b2c2b9af518d3a1a08e0f0ce377f
  inputs: [level, demand]
  outputs: [inflow_valve, outflow_pump]
seed: 5
duration_s: 5
auto_after_s: 1
detect_budget_s: 0.5
injections:
  - at_s: {TRIP_AT_S:g}
    kind: sensor_profile
    label: level forged
    tag: level
    cause: sensing
    profile: {{shape: step, to: 1.5}}
"""


def test_the_dashboard_shows_the_trip_and_the_incident_while_the_drill_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_DRILL_PASSWORD", "drill-pw")
    path = tmp_path / "short.yaml"
    path.write_text(SHORT)
    scenario = load_scenario(path)
    serving = DrillServing.create(("127.0.0.1", 0), (("alice", "operator"),))
    pacer = WallPacer()
    seen: list[tuple[float, str, str | None]] = []  # (monotonic s, mode, incident id)

    async def watch(drill: asyncio.Task[Any]) -> None:
        base = serving.dashboard_url.rstrip("/")
        async with aiohttp.ClientSession() as http:
            while not drill.done():
                try:
                    async with http.get(base + "/api/state") as r:
                        state = await r.json()
                except aiohttp.ClientConnectionError:
                    state = None  # not listening yet
                if state is not None and state["view"] is not None:
                    incident = state["incident"]["id"] if state["incident"] else None
                    seen.append((time.monotonic(), state["view"]["mode"], incident))
                await asyncio.sleep(0.05)

    async def main() -> Any:
        drill = asyncio.create_task(run_drill(scenario, tmp_path, serving=serving,
                                              pacer=pacer, audit_db=tmp_path / "audit.db"))
        await asyncio.wait_for(watch(drill), timeout=60)
        return await drill

    run = asyncio.run(main())
    # The run itself: tripped at the forged reading, one incident, real time.
    trip = next(t for t in run.ticks if t.at_s >= TRIP_AT_S and t.source != "ai")
    tripped_mode = trip.mode
    assert tripped_mode in ("manual", "safe_stop"), run.ticks[-1]
    assert run.ticks[int(TRIP_AT_S / run.cycle_s) - 2].mode == "auto"
    (ident,) = run.incidents
    assert run.wall_s >= scenario.duration_s  # paced: plant seconds took wall seconds
    # The page showed AUTO before the trip, then the tripped mode and the incident, each
    # within a second of the trip's wall instant, while the drill was still running.
    assert pacer.origin is not None
    trip_wall = pacer.origin + trip.at_s
    assert any(mode == "auto" and at < trip_wall for at, mode, _ in seen), seen[:5]
    mode_at = next(at for at, mode, _ in seen if mode == tripped_mode)
    incident_at = next(at for at, _, inc in seen if inc == ident)
    assert mode_at - trip_wall < 1.0, (mode_at - trip_wall, seen)
    assert incident_at - trip_wall < 1.0, (incident_at - trip_wall, seen)
    assert seen[-1][0] < pacer.origin + scenario.duration_s + 1.0


def test_the_pacer_sleeps_until_each_steps_wall_instant() -> None:
    # Virtual clock: the first step fixes plant time 0's instant; later steps wait for
    # theirs; a step already late sleeps 0 (still yields), never catching up wall time.
    now = [100.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    async def steps() -> None:
        pacer = WallPacer(clock=lambda: now[0], sleep=sleep)
        await pacer.until(0.0)
        now[0] += 0.03  # the step's own work
        await pacer.until(0.1)
        now[0] += 0.5  # a stall on a busy host
        await pacer.until(0.2)
        await pacer.until(0.7)

    asyncio.run(steps())
    assert slept == pytest.approx([0.0, 0.07, 0.0, 0.1])


def test_addresses_and_users_are_checked() -> None:
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    for bad in ("x", "host:http", "70000"):
        with pytest.raises(ValueError, match="port"):
            parse_address(bad)
    assert parse_user("alice") == ("alice", "operator")
    assert parse_user("boss:admin") == ("boss", "admin")
    with pytest.raises(ValueError, match="role"):
        parse_user("eve:ai")
    with pytest.raises(ValueError, match="user name"):
        parse_user(":admin")


@pytest.mark.parametrize(("args", "message"), [
    (["--dashboard", "host:http"], "the port must be a number"),
    (["--dashboard", "8080", "--user", "eve:ai"], "the role must be one of"),
    (["--user", "alice"], "--user goes with --dashboard or --live"),
    (["--all", "--dashboard", "0"], "run one scenario"),
    (["--no-gateway", "--dashboard", "0"], "not with --no-gateway"),
    (["--dashboard", "0", "--user", "a", "--user", "a:admin"], "a name given twice"),
])
def test_bad_watch_options_are_refused_before_anything_runs(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import main as safety_gateway

    monkeypatch.setenv("SG_DRILL_PASSWORD", "drill-pw")
    assert safety_gateway(["drill", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("safety-gateway drill: ")

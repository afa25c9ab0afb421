"""The pure parts of a reload: the difference between two sites and what of it is live, the
ramp of a tightened bound inside the transitional envelope, and the supervisor state carried
into the new supervisor (both engines)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

import gateway
from gateway.config.schema import LinearConstraint, Policy
from gateway.envelope.compiled import Action, compile_site
from gateway.runtime.ramp import Ramp, private_envelope
from gateway.runtime.reload import transfer
from gateway.runtime.site_diff import Direction, diff_sites
from gateway.supervisor.core import Supervisor
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind

ROOT = Path(__file__).resolve().parents[2]
SITE = gateway.load_config(ROOT / "configs" / "water_tank.yaml")


def with_limit(site: gateway.config.Site, actuator: str, **changes: object
               ) -> gateway.config.Site:
    limits = tuple(replace(lim, **changes) if lim.actuator == actuator else lim  # type: ignore[arg-type]
                   for lim in site.envelope.limits)
    return replace(site, envelope=replace(site.envelope, limits=limits))


def test_limits_are_named_tightened_or_loosened() -> None:
    new = with_limit(SITE, "inflow_valve", max=80.0, min=5.0, max_rate_per_s=30.0,
                     max_step=None, policy=Policy.TRIP)
    diff = diff_sites(SITE, new)
    got = {(c.name, c.field): c.direction for c in diff.changes}
    assert got == {("inflow_valve", "max"): Direction.TIGHTENED,
                   ("inflow_valve", "min"): Direction.TIGHTENED,
                   ("inflow_valve", "max_rate_per_s"): Direction.LOOSENED,
                   ("inflow_valve", "max_step"): Direction.LOOSENED,
                   ("inflow_valve", "policy"): Direction.TIGHTENED}
    assert diff.live and diff.restart_reason() == ""
    assert "limit inflow_valve.max tightened: 100 -> 80" in diff.lines()
    assert diff_sites(SITE, SITE).empty


def test_constraints_added_removed_changed_and_sections_that_need_a_restart() -> None:
    env = SITE.envelope
    extra = LinearConstraint("cap", "inflow_valve <= 90", (("inflow_valve", 1.0),), 90.0)
    new = replace(SITE, envelope=replace(env, constraints=(
        replace(env.constraints[0], rhs=150.0), extra), interlocks=env.interlocks[:1]))
    diff = diff_sites(SITE, new)
    kinds = {(c.area, c.name, c.direction) for c in diff.changes}
    assert ("constraint", "cap", Direction.ADDED) in kinds
    assert ("constraint", "pump_dry_run", Direction.REMOVED) in kinds
    assert ("constraint", "total_flow", Direction.CHANGED) in kinds
    assert ("interlock", "low_level_stops_pump", Direction.REMOVED) in kinds
    assert diff.live
    # A device's settings are live (it reconnects); another device, a tag, the cycle
    # period: refused, named.
    moved = diff_sites(SITE, replace(SITE, devices=(replace(SITE.devices[0], port=1234),)))
    assert moved.live and moved.lines() == ["device plc.port changed: 5020 -> 1234"]
    devices = (SITE.devices[0], replace(SITE.devices[0], name="plc9"))
    tags = (replace(SITE.tags[0], unit="ft"), *SITE.tags[1:])
    refused = diff_sites(SITE, replace(SITE, devices=devices, tags=tags,
                                       site=replace(SITE.site, cycle_ms=50.0)))
    assert not refused.live
    reason = refused.restart_reason()
    assert reason.startswith("needs a restart: ")
    assert "device plc9 added" in reason
    assert "tag level.unit changed: m -> ft" in reason
    assert "site cycle_ms changed: 100 -> 50" in reason
    # The tag order alone fixes the mirror's layout too.
    reordered = replace(SITE, tags=(SITE.tags[1], SITE.tags[0], *SITE.tags[2:]))
    assert [c.field for c in diff_sites(SITE, reordered).refused] == ["order"]


def test_the_ramp_is_the_envelope_in_force_and_moves_at_the_rate_and_step_limits(
        engine: str) -> None:
    site = with_limit(SITE, "inflow_valve", max=30.0)
    env = private_envelope(compile_site(site), engine)
    present = np.array([60.0, 30.0, 0.0])
    ramp = Ramp.plan(env, present, tuple(t.name for t in site.actuators))
    assert [(b.name, b.upper, b.bound, b.target) for b in ramp.bounds] == [
        ("inflow_valve", True, 60.0, 30.0)]
    sensors = np.array([2.5, 0.01, 0.004, 100.0])
    hold = env.check(present, present, sensors, 0.1)
    assert hold.action is Action.OK  # the present value passes the bound in force
    over = env.check(np.array([60.5, 30.0, 0.0]), present, sensors, 0.1)
    assert "inflow_valve.max" in over.violations
    ramp.advance(0.1)  # 20 %/s for 0.1 s
    assert ramp.bounds[0].bound == 58.0
    verdict = env.check(np.array([59.0, 30.0, 0.0]), present, sensors, 0.1)
    assert "inflow_valve.max" in verdict.violations
    assert verdict.clamped is not None and verdict.clamped[0] == 58.0
    ramp.advance(1.0)  # 20 %/s for 1 s, but at most max_step (10) per write
    assert ramp.bounds[0].bound == 48.0
    assert ramp.advance(5.0) == [] and ramp.bounds[0].bound == 38.0  # 10 per write
    finished = ramp.advance(5.0)
    assert [b.name for b in finished] == ["inflow_valve"] and ramp.done
    assert ramp.bounds[0].bound == 30.0
    assert env.check(np.array([30.5, 30.0, 0.0]), np.array([30.5, 30.0, 0.0]), sensors,
                     0.1).violations == ("inflow_valve.max",)
    # The site's own compiled envelope is untouched: the ramp has its own arrays.
    assert compile_site(site).act_max[0] == 30.0


def test_a_raised_min_ramps_up_and_an_unlimited_actuator_takes_the_bound_at_once(
        engine: str) -> None:
    site = with_limit(with_limit(SITE, "inflow_valve", min=40.0), "outflow_pump",
                      max=10.0, max_rate_per_s=None)
    env = private_envelope(compile_site(site), engine)
    ramp = Ramp.plan(env, np.array([20.0, 50.0, 0.0]), tuple(t.name for t in site.actuators))
    assert [(b.name, b.upper, b.bound) for b in ramp.bounds] == [("inflow_valve", False, 20.0)]
    ramp.advance(0.1)
    assert ramp.bounds[0].bound == 22.0


def _supervisor(site: gateway.config.Site, engine: str) -> Supervisor:
    env = private_envelope(compile_site(site), engine)
    return Supervisor(site, env, np.array([30.0, 30.0, 0.0]), 0.0)


def test_transfer_keeps_the_safety_state_and_the_statistics_that_still_apply(
        engine: str) -> None:
    old = _supervisor(SITE, engine)
    old.apply_request(OperatorRequest(RequestKind.BYPASS, "admin", True, "ai_silent", 600.0))
    old.modes.trip(0.0, "canary", "test trip", Mode.SAFE_STOP)
    ((_, name, _, detector),) = old.divergence.watch
    assert name == "inflow_valve"
    for _ in range(5):
        detector.update(0.1)  # some statistic built up
    old.previous = np.array([42.0, 31.0, 0.0])
    old.written_at_s = 12.5
    old.set_rate_factor(0.5)

    # A constraint changed: every bound is the same, so the PIDs and the inflow's divergence
    # detector carry on as they were.
    env = SITE.envelope
    same_bounds = replace(SITE, envelope=replace(env, constraints=(
        replace(env.constraints[0], rhs=150.0), *env.constraints[1:])))
    new = _supervisor(same_bounds, engine)
    transfer(old, new)
    assert new.modes is old.modes and new.modes.latched and new.mode is Mode.SAFE_STOP
    assert "ai_silent" in new.modes.bypasses
    assert new.previous.tolist() == [42.0, 31.0, 0.0] and new.written_at_s == 12.5
    assert new.rate_factor == 0.5
    assert new.bank is old.bank
    assert new.divergence.watch[0][3] is detector
    assert new.latches == old.latches

    # The outflow's max changed: the bank starts afresh (the PIDs' output limits moved), the
    # inflow's divergence detector (its span unchanged) keeps its statistic.
    moved = with_limit(SITE, "outflow_pump", max=90.0)
    other = _supervisor(moved, engine)
    transfer(old, other)
    assert other.bank is not old.bank
    assert other.divergence.watch[0][3] is detector
    # The inflow's span changed: its divergence statistic starts afresh (the residual is
    # measured in fractions of the span).
    narrowed = _supervisor(with_limit(SITE, "inflow_valve", max=50.0), engine)
    transfer(old, narrowed)
    assert narrowed.divergence.watch[0][3] is not detector
    assert narrowed.modes is old.modes and narrowed.mode is Mode.SAFE_STOP

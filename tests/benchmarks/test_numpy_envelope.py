"""The numpy baseline of the envelope bench decides like the reference engine; the bench runs.

Compared on the bench's two synthetic envelopes and the example sites: the action and the
violation mask must be equal, the command to apply equal within 1e-9. The baseline sums in
another order than the reference (dense products, a precomputed prediction map), so a case whose
linear rows, interlock conditions or predicted values lie within a relative 1e-9 of a threshold
may legitimately be decided the other way; hypothesis discards those (``boundary_margin``).
Seeded draws of continuous values are compared without that filter.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from benchmarks import BENCHES
from benchmarks import envelope as bench
from benchmarks.numpy_envelope import NumpyEnvelope
from gateway import cli, load_config
from gateway.config import schema as sc
from gateway.envelope.compiled import Action, compile_envelope, compile_site
from gateway.envelope.engine import Envelope

if TYPE_CHECKING:
    from gateway.envelope.compiled import CompiledEnvelope

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CASE_NAMES = ("bounds_rate", "full", "water_tank", "boiler")
MARGIN = 1e-9
WEIRD = (math.nan, math.inf, -math.inf)


@dataclass(frozen=True)
class Case:
    compiled: CompiledEnvelope
    reference: Envelope
    baseline: NumpyEnvelope
    s_lo: np.ndarray  # plausible sensor range, drawn a little beyond
    s_hi: np.ndarray
    s_special: tuple[tuple[float, ...], ...]  # per sensor: one-term interlock thresholds


def thresholds(c: CompiledEnvelope) -> tuple[tuple[float, ...], ...]:
    """Per sensor, the values at which a one-term interlock condition is exactly at its rhs
    (decided exactly by both implementations, so worth drawing)."""
    special: list[set[float]] = [set() for _ in range(c.n_sensors)]
    for k in range(len(c.ilk_rhs)):
        lo, hi = c.ilk_ptr[k], c.ilk_ptr[k + 1]
        if hi - lo == 1:
            special[c.ilk_idx[lo]].add(float(c.ilk_rhs[k] / c.ilk_coef[lo]))
    return tuple(tuple(sorted(v)) for v in special)


@cache
def case(name: str) -> Case:
    if name in ("bounds_rate", "full"):
        syn = bench.bounds_rate_envelope() if name == "bounds_rate" else bench.full_envelope()
        compiled = syn.compiled
        s_lo, s_hi = syn.s0 - 3 * syn.s_dev, syn.s0 + 3 * syn.s_dev
    else:
        site = load_config(CONFIGS / f"{name}.yaml")
        compiled = compile_site(site)
        s_lo = np.array([t.range_min for t in site.sensors], dtype=np.float64)
        s_hi = np.array([t.range_max for t in site.sensors], dtype=np.float64)
    return Case(compiled, Envelope(compiled, "python"), NumpyEnvelope(compiled), s_lo, s_hi,
                thresholds(compiled))


def both(c: Case, u: np.ndarray, p: np.ndarray, s: np.ndarray, dt: float):
    n_a, n_slots = c.compiled.n_actuators, c.compiled.n_slots
    out_r, viol_r = np.empty(n_a), np.zeros(n_slots, dtype=np.uint8)
    out_n, viol_n = np.empty(n_a), np.zeros(n_slots, dtype=np.uint8)
    code_r = c.reference.check_into(u, p, s, dt, out_r, viol_r)
    code_n = c.baseline.check_into(u, p, s, dt, out_n, viol_n)
    return (code_r, viol_r, out_r), (code_n, viol_n, out_n)


def assert_same(c: Case, ref, got, inputs: tuple[object, ...]) -> None:
    """Equal action and mask, command within 1e-9 (the message is built only on failure)."""
    same = (got[0] == ref[0] and np.array_equal(got[1], ref[1])
            and np.allclose(got[2], ref[2], rtol=0, atol=1e-9, equal_nan=True))
    if not same:
        names = c.compiled.slot_names
        pytest.fail(
            f"inputs (u, p, s[, dt]) {inputs!r}:\n"
            f"reference {Action(ref[0])!r} {[names[i] for i in np.flatnonzero(ref[1])]} "
            f"{ref[2]!r}\nnumpy     {Action(got[0])!r} "
            f"{[names[i] for i in np.flatnonzero(got[1])]} {got[2]!r}")


# --------------------------------------------------------------------------- seeded draws


def seeded_inputs(name: str, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The bench's own pool for the synthetic envelopes; continuous values over (and a bit
    beyond) each actuator's range and sensor's range for the sites."""
    if name == "bounds_rate":
        return bench.command_pool(bench.bounds_rate_envelope(), n, seed=7)
    if name == "full":
        return bench.command_pool(bench.full_envelope(), n, seed=7)
    c = case(name).compiled
    rng = np.random.default_rng(11)
    span = c.act_max - c.act_min
    window = np.minimum(np.minimum(c.act_rate * bench.DT_S, c.act_step), span)
    inputs = []
    for _ in range(n):
        p = rng.uniform(c.act_min, c.act_max)
        jump = rng.random(len(p)) < 0.2
        u = np.where(jump, rng.uniform(c.act_min - span / 4, c.act_max + span / 4),
                     p + rng.uniform(-1.2, 1.2, len(p)) * window)
        for i in range(len(p)):  # actuators with allowed values: mostly an allowed one
            allowed = c.allowed_val[c.allowed_ptr[i] : c.allowed_ptr[i + 1]]
            if len(allowed) and rng.random() < 0.8:
                p[i] = rng.choice(allowed)
                u[i] = rng.choice(allowed) if rng.random() < 0.9 else u[i]
        s_span = case(name).s_hi - case(name).s_lo
        s = rng.uniform(case(name).s_lo - s_span / 10, case(name).s_hi + s_span / 10)
        inputs.append((u, p, s))
    return inputs


@pytest.mark.parametrize("name", CASE_NAMES)
def test_agrees_with_reference_on_seeded_draws(name: str) -> None:
    c = case(name)
    seen = set()
    for k, (u, p, s) in enumerate(seeded_inputs(name, 1500)):
        ref, got = both(c, u, p, s, bench.DT_S)
        assert_same(c, ref, got, (name, k, u, p, s))
        seen.add(Action(ref[0]))
    # The draws exercise more than the OK path.
    assert {Action.OK, Action.CLAMP, Action.REJECT} <= seen, seen


# --------------------------------------------------------------------------- hypothesis


@st.composite
def inputs(draw: st.DrawFn, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Previous commands within bounds (rarely non-finite); commands near the previous one,
    anywhere around the bounds, an allowed value, or non-finite; sensors over and beyond
    their range, at a one-term interlock's threshold, or (rarely) non-finite."""
    c = case(name)
    ce = c.compiled
    dt = draw(st.floats(0.01, 2.0))
    p, u = [], []
    for i in range(ce.n_actuators):
        lo, hi = float(ce.act_min[i]), float(ce.act_max[i])
        span = hi - lo
        allowed = ce.allowed_val[ce.allowed_ptr[i] : ce.allowed_ptr[i + 1]].tolist()
        p_i = draw(st.sampled_from(WEIRD) if draw(st.integers(0, 19)) == 0
                   else st.sampled_from(allowed) if allowed else st.floats(lo, hi))
        window = min(float(ce.act_rate[i]) * dt, float(ce.act_step[i]), span or 1.0)
        kind = draw(st.integers(0, 19))
        if kind == 0:
            u_i = draw(st.sampled_from(WEIRD))
        elif kind < 4:
            u_i = draw(st.floats(lo - span / 2 - 1, hi + span / 2 + 1))
        elif kind < 7 and allowed:
            u_i = draw(st.sampled_from(allowed))
        elif math.isfinite(p_i):
            u_i = p_i + draw(st.floats(-2.0, 2.0)) * window
        else:
            u_i = draw(st.floats(lo, hi))
        p.append(p_i)
        u.append(u_i)
    s = []
    for j in range(ce.n_sensors):
        lo, hi = float(c.s_lo[j]), float(c.s_hi[j])
        kind = draw(st.integers(0, 29))
        if kind == 0:
            s.append(draw(st.sampled_from(WEIRD)))
        elif kind < 6 and c.s_special[j]:
            s.append(draw(st.sampled_from(c.s_special[j])))
        else:
            s.append(draw(st.floats(lo - (hi - lo) / 4, hi + (hi - lo) / 4)))
    return (np.array(u, dtype=np.float64), np.array(p, dtype=np.float64),
            np.array(s, dtype=np.float64), dt)


def _agree_on(name: str, drawn: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> None:
    u, p, s, dt = drawn
    c = case(name)
    ref, got = both(c, u, p, s, dt)
    margin = c.baseline.boundary_margin(u, s)
    if ref[0] == Action.CLAMP:
        margin = min(margin, c.baseline.boundary_margin(ref[2], s))
    assume(margin > MARGIN)
    assert_same(c, ref, got, drawn)


hyp = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@hyp
@given(inputs("bounds_rate"))
def test_hypothesis_bounds_rate(drawn) -> None:
    _agree_on("bounds_rate", drawn)


@hyp
@given(inputs("full"))
def test_hypothesis_full(drawn) -> None:
    _agree_on("full", drawn)


@hyp
@given(inputs("water_tank"))
def test_hypothesis_water_tank(drawn) -> None:
    _agree_on("water_tank", drawn)


@hyp
@given(inputs("boiler"))
def test_hypothesis_boiler(drawn) -> None:
    _agree_on("boiler", drawn)


# --------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize(("command", "previous", "expected"), [
    (5.0, 5.0, 0.0),  # equidistant from 0 and 10: ties go to the lower
    (15.0, 15.0, 10.0),
    (14.0, 15.0, 10.0),
    (16.0, 16.0, 20.0),
    (5.0, 9.0, 10.0),  # rate window [4, 14] at dt 0.1: 0 is out of reach
    (5.0, 1.0, 0.0),
    (35.0, 22.0, 20.0),  # above max: clipped to 27 by the rate, then nearest allowed
])
def test_clamp_to_allowed_values(command: float, previous: float, expected: float) -> None:
    """Not reachable in the bench's envelopes or the example sites (their allowed-value
    actuators reject), so checked here on a small envelope."""
    env = sc.Envelope(limits=(sc.ActuatorLimits("v", 0.0, 30.0, max_rate_per_s=50.0,
                                                allowed=(0.0, 10.0, 20.0, 30.0)),))
    compiled = compile_envelope(env, ("v",), (), {"v": 0}, {}, {"v": 0})
    c = Case(compiled, Envelope(compiled, "python"), NumpyEnvelope(compiled), np.zeros(0),
             np.zeros(0), ())
    u, p = np.array([command]), np.array([previous])
    ref, got = both(c, u, p, np.zeros(0), 0.1)
    assert ref[0] == Action.CLAMP and ref[2][0] == expected  # the reference, as documented
    assert_same(c, ref, got, (u, p))


def test_prediction_map_matches_stepping() -> None:
    """The precomputed affine map gives the trajectory explicit Euler steps give."""
    c = case("full")
    syn = bench.full_envelope()
    rng = np.random.default_rng(3)
    ne = c.baseline
    for _ in range(20):
        u = syn.u0 + rng.uniform(-1, 1, len(syn.u0)) * syn.u_dev
        s = syn.s0 + rng.uniform(-2, 2, len(syn.s0)) * syn.s_dev
        z = ne.coupled @ np.concatenate((u, s))
        traj = (z[ne.n_l :] + ne.w0).reshape(ne.horizon, -1)
        y = s.copy()
        a = ne.gain_s
        for step in range(ne.horizon):
            y[ne.pred_sensor] = y[ne.pred_sensor] + ne.h * (
                ne.pred_const + ne.gain_u @ u + a @ y)
            np.testing.assert_allclose(traj[step], y[ne.kept_sensor], rtol=1e-12)


def test_synthetic_envelopes_have_the_stated_shape() -> None:
    b = bench.bounds_rate_envelope().compiled
    assert (b.n_actuators, b.n_sensors, len(b.lin_rhs), len(b.ilk_rhs)) == (16, 0, 0, 0)
    assert np.isfinite(b.act_rate).all()
    f = bench.full_envelope().compiled
    assert (f.n_actuators, f.n_sensors, len(f.lin_rhs), len(f.ilk_rhs)) == (16, 8, 32, 8)
    assert set(np.diff(f.lin_ptr).tolist()) <= set(range(2, 7))
    assert len(f.pred_sensor) == 8 and f.pred_horizon == 10 and f.keep_on.all()
    # Same seed, same envelope.
    assert bench.full_envelope().envelope == bench.full_envelope().envelope


def test_pool_is_mostly_nominal() -> None:
    for syn in (bench.bounds_rate_envelope(), bench.full_envelope()):
        ref = Envelope(syn.compiled, "python")
        out = np.empty(syn.compiled.n_actuators)
        viol = np.zeros(syn.compiled.n_slots, dtype=np.uint8)
        actions = [ref.check_into(u, p, s, bench.DT_S, out, viol)
                   for u, p, s in bench.command_pool(syn, 1000)]
        ok = actions.count(Action.OK) / len(actions)
        assert 0.85 <= ok <= 0.95, (syn.name, ok)
        assert Action.CLAMP in actions and Action.REJECT in actions


# --------------------------------------------------------------------------- the command


def test_bench_envelope_quick_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "envelope", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bench"] == "envelope" and result["quick"] is True
    figures = ("compiled_check_into_ns_median", "compiled_check_into_ns_p99",
               "compiled_check_ns_median", "reference_ns_median", "numpy_ns_median",
               "numpy_over_compiled", "reference_over_compiled", "batch_checks_per_s",
               "reference_batch_checks_per_s")
    for name in ("bounds_rate", "full"):
        for key in figures:
            value = result[name][key]
            assert isinstance(value, int | float) and value > 0, (name, key, value)
        assert result[name]["numpy_mismatches"] == 0
        assert result[name]["compiled_mismatches"] == 0
    assert set(result["targets"]) == set(result["met"]) == {
        "bounds_rate_ns_max", "full_ns_max", "numpy_over_compiled_min",
        "reference_over_compiled_min", "batch_checks_per_s_min"}
    assert all(isinstance(v, bool) for v in result["met"].values())
    assert result["machine"]["numpy"] == np.__version__
    assert result["machine"]["cpu_count"] >= 1
    text = BENCHES["envelope"].format_text(result)
    assert "targets:" in text and "numpy / compiled" in text

"""The compiled and reference engines agree bit for bit.

Hypothesis draws random envelopes using every constraint kind (bounds, allowed values, rate,
step, linear constraints over actuators and sensors, interlocks, prediction, every policy, empty
envelopes); for each, 200 inputs are drawn with numpy from a mix of ordinary values, values
exactly on a boundary (limits, allowed values, previous +- rate*dt, tightenings), and hostile
ones (NaN, +-inf, +-1e308, -0.0, subnormals). Action, violation mask and output command must be
identical, bit for bit, and so must the per-actuator projection. One run covers well over
100,000 cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import schema as s
from gateway.envelope.engine import Envelope
from tests.envelope.builders import build

if TYPE_CHECKING:
    from gateway.envelope.compiled import CompiledEnvelope

CASES_PER_ENVELOPE = 200
EXAMPLES = 600
HOSTILE = np.array([math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, -0.0, 5e-324, -5e-324])

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
coef = st.floats(-10, 10, allow_nan=False, allow_infinity=False).filter(lambda c: c != 0)
policies = st.sampled_from(list(s.Policy))
hard = st.sampled_from([s.Policy.REJECT, s.Policy.TRIP])


@dataclass
class Spec:
    compiled: CompiledEnvelope
    boundary: np.ndarray  # interesting values for this envelope


@st.composite
def envelopes(draw: st.DrawFn) -> Spec:
    n_a = draw(st.integers(0, 6))
    n_s = draw(st.integers(0, 4))
    acts = [f"a{i}" for i in range(n_a)]
    sens = tuple(f"s{i}" for i in range(n_s))
    limits: list[s.ActuatorLimits] = []
    boundary: list[float] = []
    for name in acts:
        lo = draw(finite)
        hi = lo + draw(st.sampled_from([0.0, 0.5, 1.0, 10.0, 100.0, 1000.0]))
        allowed = None
        if draw(st.booleans()) and draw(st.booleans()):
            k = draw(st.integers(1, 4))
            allowed = tuple(sorted({lo, hi, *(lo + (hi - lo) * j / (k + 1) for j in range(k))}))
        rate = draw(st.none() | st.floats(0.01, 500))
        step = draw(st.none() | st.floats(0.01, 500))
        limits.append(s.ActuatorLimits(name, lo, hi, rate, step, allowed, draw(policies)))
        boundary += [lo, hi, *(allowed or ())]
    names = acts + list(sens)
    constraints = []
    if names:
        for r in range(draw(st.integers(0, 4))):
            terms = draw(st.dictionaries(st.sampled_from(names), coef, min_size=1, max_size=4))
            rhs = draw(finite)
            constraints.append(s.LinearConstraint(f"lin{r}", "", tuple(terms.items()), rhs,
                                                  draw(hard)))
            boundary.append(rhs)
    interlocks = []
    if acts and sens:
        for k in range(draw(st.integers(0, 3))):
            cond = draw(st.dictionaries(st.sampled_from(sens), coef, min_size=1, max_size=2))
            then = []
            for _ in range(draw(st.integers(1, 2))):
                i = draw(st.integers(0, n_a - 1))
                value = draw(st.floats(limits[i].min, limits[i].max))
                then.append(s.Tightening(acts[i], draw(st.booleans()), value))
                boundary.append(value)
            rhs = draw(finite)
            boundary.append(rhs)
            interlocks.append(s.Interlock(f"ilk{k}", "", tuple(cond.items()),
                                          draw(st.sampled_from(list(s.ConditionOp))), rhs,
                                          tuple(then), draw(policies)))
    prediction = None
    if sens and draw(st.booleans()):
        modelled = draw(st.lists(st.sampled_from(sens), min_size=1, max_size=n_s, unique=True))
        small = st.floats(-0.5, 0.5, allow_nan=False).filter(lambda c: c != 0)
        models = tuple(
            s.SensorModel(x, "", tuple(draw(st.dictionaries(st.sampled_from(names), small,
                                                            max_size=4)).items()),
                          draw(st.floats(-1, 1)))
            for x in modelled
        )
        keep = []
        for x in draw(st.lists(st.sampled_from(modelled), min_size=1, unique=True)):
            lo = draw(finite)
            keep.append(s.KeepRange(x, draw(st.sampled_from([lo, -math.inf])),
                                    lo + draw(st.floats(0, 100))))
            boundary.append(lo)
        prediction = s.Prediction(draw(st.floats(0.01, 2.0)), draw(st.integers(1, 12)), models,
                                  tuple(keep), draw(hard))
    # Safe states: none (NaN, as for envelopes built without a site), or a plain value per
    # actuator with up to two conditional rows, values among the limits' interesting points.
    safe_values = None
    safe_cases = []
    if acts and draw(st.booleans()):
        safe_values = []
        for i, name in enumerate(acts):
            pick = st.sampled_from(list(limits[i].allowed or (limits[i].min, limits[i].max)))
            safe_values.append(draw(pick | st.floats(limits[i].min, limits[i].max)))
            if sens:
                for _ in range(draw(st.integers(0, 2))):
                    cond = draw(st.dictionaries(st.sampled_from(sens), coef, min_size=1,
                                                max_size=2))
                    rhs = draw(finite)
                    boundary.append(rhs)
                    safe_cases.append(s.SafeCase("", tuple(cond.items()),
                                                 draw(st.sampled_from(list(s.ConditionOp))),
                                                 rhs, draw(pick), actuator=name))
        boundary += safe_values
    compiled = build(limits, sens, tuple(constraints), tuple(interlocks), prediction,
                     draw(hard), None if safe_values is None else tuple(safe_values),
                     tuple(safe_cases))
    return Spec(compiled, np.array(boundary or [0.0]))


def _draw_vectors(rng: np.random.Generator, spec: Spec, n: int, width: int,
                  around: np.ndarray) -> np.ndarray:
    """n x width values: ordinary, boundary-exact, or hostile, mixed per element."""
    base = rng.uniform(-1.2e3, 2.3e3, (n, width))
    kind = rng.integers(0, 10, (n, width))
    bnd = rng.choice(spec.boundary, (n, width))
    hostile = rng.choice(HOSTILE, (n, width))
    near = around + rng.normal(0, 5, (n, width))
    out = np.where(kind < 4, base, np.where(kind < 7, bnd, np.where(kind < 9, near, hostile)))
    return np.ascontiguousarray(out)


def compare(spec: Spec, seed: int) -> int:
    c = spec.compiled
    fast = Envelope(c, "cython")
    ref = Envelope(c, "python")
    rng = np.random.default_rng(seed)
    n = CASES_PER_ENVELOPE
    mid = (c.act_min + c.act_max) / 2 if c.n_actuators else np.zeros(0)
    prev = _draw_vectors(rng, spec, n, c.n_actuators, mid)
    cmds = _draw_vectors(rng, spec, n, c.n_actuators, prev)
    sens = _draw_vectors(rng, spec, n, c.n_sensors, np.zeros(c.n_sensors))
    dts = rng.choice([0.001, 0.1, 0.5, 1.0, 3.7], n)
    # Put some commands exactly on their rate-window edge.
    if c.n_actuators:
        edge = prev + np.where(np.isfinite(c.act_rate), c.act_rate, 0.0) * dts[:, None]
        pick = rng.random((n, c.n_actuators)) < 0.1
        cmds = np.ascontiguousarray(np.where(pick, edge, cmds))
    out_f = np.empty(c.n_actuators)
    out_r = np.empty(c.n_actuators)
    viol_f = np.zeros(c.n_slots, dtype=np.uint8)
    viol_r = np.zeros(c.n_slots, dtype=np.uint8)
    feas_f = np.zeros(c.n_actuators, dtype=np.uint8)
    feas_r = np.zeros(c.n_actuators, dtype=np.uint8)
    for k in range(n):
        a_f = fast.check_into(cmds[k], prev[k], sens[k], float(dts[k]), out_f, viol_f)
        a_r = ref.check_into(cmds[k], prev[k], sens[k], float(dts[k]), out_r, viol_r)
        where = f"case {k}: cmd={cmds[k]!r} prev={prev[k]!r} sens={sens[k]!r} dt={dts[k]}"
        assert a_f == a_r, f"action {a_f} != {a_r}; {where}"
        assert viol_f.tolist() == viol_r.tolist(), (
            f"{fast.names_of(viol_f)} != {ref.names_of(viol_r)}; {where}")
        assert out_f.view(np.uint64).tolist() == out_r.view(np.uint64).tolist(), (
            f"out {out_f!r} != {out_r!r}; {where}")
        bad_f = fast.project_into(cmds[k], prev[k], sens[k], float(dts[k]), out_f, feas_f)
        bad_r = ref.project_into(cmds[k], prev[k], sens[k], float(dts[k]), out_r, feas_r)
        assert bad_f == bad_r, where
        assert feas_f.tolist() == feas_r.tolist(), where
        assert out_f.view(np.uint64).tolist() == out_r.view(np.uint64).tolist(), (
            f"projection {out_f!r} != {out_r!r}; {where}")
        safe_f = fast.safe_state(sens[k])
        safe_r = ref.safe_state(sens[k])
        assert safe_f.view(np.uint64).tolist() == safe_r.view(np.uint64).tolist(), (
            f"safe state {safe_f!r} != {safe_r!r}; {where}")
    return n


def test_engines_agree_on_over_100k_cases() -> None:
    seen = [0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(envelopes(), st.integers(0, 2**32 - 1))
    def run(spec: Spec, seed: int) -> None:
        seen[0] += compare(spec, seed)

    run()
    assert seen[0] >= 100_000, seen[0]


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(envelopes(), st.integers(0, 2**32 - 1))
def test_batch_agrees(spec: Spec, seed: int) -> None:
    c = spec.compiled
    rng = np.random.default_rng(seed)
    mid = (c.act_min + c.act_max) / 2 if c.n_actuators else np.zeros(0)
    cmds = _draw_vectors(rng, spec, 50, c.n_actuators, mid)
    sens = _draw_vectors(rng, spec, 50, c.n_sensors, np.zeros(c.n_sensors))
    prev0 = np.ascontiguousarray(mid)
    fast = Envelope(c, "cython").check_batch(cmds, prev0, sens, 0.5)
    ref = Envelope(c, "python").check_batch(cmds, prev0, sens, 0.5)
    assert fast[1].tolist() == ref[1].tolist()
    assert fast[2].tolist() == ref[2].tolist()
    assert fast[0].view(np.uint64).tolist() == ref[0].view(np.uint64).tolist()

"""``safety-gateway bench envelope``: how fast is one envelope check?

Two synthetic envelopes, built in code from a fixed seed (:func:`bounds_rate_envelope`,
:func:`full_envelope`), are checked by four implementations of the same semantics:

- the compiled engine through ``Envelope.check_into`` (the allocation-free control-loop path),
  through ``Envelope.check`` (which builds a :class:`~gateway.envelope.Verdict`), and, to show
  what the Python wrapper costs, its kernel's ``check_into`` called directly;
- the pure-Python reference engine through ``Envelope.check_into`` (argument checks included,
  as the gateway runs it);
- the vectorised numpy baseline (:mod:`benchmarks.numpy_envelope`), called directly.

Single checks are timed with ``time.perf_counter_ns`` around a plain ``for`` loop over a
pre-generated pool of (command, previous, sensors) triples, so successive calls see different
inputs; each sample's time divided by its number of calls is one per-call figure, and the
median and 99th percentile are taken across samples. The garbage collector is off while timing.
The figures include the Python call itself; ``call_overhead_ns`` is the same loop calling a
no-op function with the same arguments, for scale (it is not subtracted).

Before timing, every implementation checks the whole pool and their actions and violation
masks are compared with the reference's (``*_mismatches``); the same pass gives the pool's mix
of verdicts. ``check_batch`` throughput is measured on a chained command stream (each row's
previous command is the one applied at the row before) of smooth trajectories with occasional
spikes; its verdict mix is reported too.

Figures are only as good as the machine was quiet: ``machine`` records the load average before
and after, the share of a CPU the (single-threaded) bench got, and, in a virtual machine, the
share of CPU time the host stole. Nothing is tuned to the targets; a missed one is reported.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.numpy_envelope import NumpyEnvelope
from gateway.config import schema as sc
from gateway.envelope.compiled import Action, CompiledEnvelope, compile_envelope
from gateway.envelope.engine import Envelope

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
IDX = npt.NDArray[np.intp]
Triple = tuple[F64, F64, F64]

SEED = 20_240_611
DT_S = 0.1
N_ACTUATORS = 16
N_SENSORS = 8
N_CONSTRAINTS = 32
N_INTERLOCKS = 8
HORIZON_STEPS = 10
PREDICTION_STEP_S = 0.2
BAD_FRACTION = 0.10  # share of the pool built to break some limit

TARGETS: dict[str, float] = {
    "bounds_rate_ns_max": 300,
    "full_ns_max": 2000,
    "numpy_over_compiled_min": 10,
    "reference_over_compiled_min": 5,
    "batch_checks_per_s_min": 5_000_000,
}


@dataclass(frozen=True)
class Settings:
    """Repetition counts; ``--quick`` uses smaller ones."""

    pool_size: int
    fast_calls: int  # calls per sample, compiled engine
    fast_samples: int
    slow_calls: int  # calls per sample, reference engine and numpy
    slow_samples: int
    batch_rows: int
    batch_runs: int
    reference_batch_rows: int
    reference_batch_runs: int


FULL_SETTINGS = Settings(pool_size=4096, fast_calls=2000, fast_samples=100, slow_calls=200,
                         slow_samples=50, batch_rows=1_000_000, batch_runs=5,
                         reference_batch_rows=10_000, reference_batch_runs=5)
QUICK_SETTINGS = Settings(pool_size=1024, fast_calls=500, fast_samples=20, slow_calls=50,
                          slow_samples=10, batch_rows=200_000, batch_runs=3,
                          reference_batch_rows=2_000, reference_batch_runs=3)


# --------------------------------------------------------------------------- the envelopes


@dataclass(frozen=True)
class Synthetic:
    """A synthetic envelope and the nominal operating region its commands are drawn from.

    Nominal commands have the previous command within ``u0 ± u_dev`` and move less than the
    rate/step ``window`` (units per write at ``DT_S``); nominal sensors lie within
    ``s0 ± s_dev``. Every constraint holds on the whole nominal region by construction.
    """

    name: str
    description: str
    envelope: sc.Envelope
    compiled: CompiledEnvelope
    u0: F64
    u_dev: F64
    window: F64
    s0: F64
    s_dev: F64
    act_min: F64
    act_max: F64
    clamp_actuators: IDX  # actuators whose limits have the clamp policy
    reject_actuators: IDX
    live_interlocks: tuple[int, ...]  # interlocks whose condition can hold in the nominal region


def _actuator_limits(rng: np.random.Generator, names: Sequence[str], n_reject: int
                     ) -> tuple[list[sc.ActuatorLimits], F64, F64, F64]:
    """Limits for each actuator: random [min, max], a rate on all, a step on every fourth
    (binding before the rate), and the reject policy on the last ``n_reject``."""
    limits = []
    window = np.empty(len(names))
    lo = np.empty(len(names))
    hi = np.empty(len(names))
    for i, name in enumerate(names):
        lo[i] = round(float(rng.uniform(-50.0, 0.0)), 1)
        hi[i] = round(lo[i] + float(rng.uniform(100.0, 300.0)), 1)
        rate = round(float(rng.uniform(20.0, 100.0)), 1)
        step = round(0.7 * rate * DT_S, 2) if i % 4 == 3 else None
        window[i] = min(rate * DT_S, step if step is not None else math.inf)
        policy = sc.Policy.REJECT if i >= len(names) - n_reject else sc.Policy.CLAMP
        limits.append(sc.ActuatorLimits(actuator=name, min=float(lo[i]), max=float(hi[i]),
                                         max_rate_per_s=rate, max_step=step, policy=policy))
    return limits, lo, hi, window


def _compile(env: sc.Envelope, actuators: tuple[str, ...], sensors: tuple[str, ...]
             ) -> CompiledEnvelope:
    a_index = {n: i for i, n in enumerate(actuators)}
    s_index = {n: i for i, n in enumerate(sensors)}
    x_index = {**a_index, **{n: len(actuators) + i for n, i in s_index.items()}}
    return compile_envelope(env, actuators, sensors, a_index, s_index, x_index)


def _expr(terms: Sequence[tuple[str, float]]) -> str:
    return " ".join(f"{'-' if c < 0 else '+'} {abs(c):.6g} * {n}" for n, c in terms).lstrip("+ ")


def bounds_rate_envelope(seed: int = SEED) -> Synthetic:
    """16 actuators with min/max and max_rate_per_s, max_step on 4, reject policy on 3 (the
    rest clamp); no sensors, so no linear constraints, interlocks or prediction."""
    rng = np.random.default_rng([seed, 1])
    names = tuple(f"a{i:02d}" for i in range(N_ACTUATORS))
    limits, lo, hi, window = _actuator_limits(rng, names, n_reject=3)
    env = sc.Envelope(limits=tuple(limits))
    policies = np.array([lim.policy is sc.Policy.CLAMP for lim in limits])
    return Synthetic(
        name="bounds_rate",
        description=f"{N_ACTUATORS} actuators (min/max + rate on all, step on 4; 13 clamp, "
                    "3 reject), 0 sensors",
        envelope=env, compiled=_compile(env, names, ()),
        u0=(lo + hi) / 2, u_dev=0.25 * (hi - lo), window=window,
        s0=np.zeros(0), s_dev=np.zeros(0), act_min=lo, act_max=hi,
        clamp_actuators=np.flatnonzero(policies), reject_actuators=np.flatnonzero(~policies),
        live_interlocks=(),
    )


def full_envelope(seed: int = SEED) -> Synthetic:
    """16 actuators, 8 sensors, 32 linear constraints (2-6 terms), 8 interlocks (1-2 sensor
    terms, 1-2 tightenings; 4 can hold in the nominal region), a stable linear model of all 8
    sensors rolled 10 steps of 0.2 s, keep-ranges on all 8."""
    rng = np.random.default_rng([seed, 2])
    act = tuple(f"a{i:02d}" for i in range(N_ACTUATORS))
    sen = tuple(f"s{j:02d}" for j in range(N_SENSORS))
    limits, lo, hi, window = _actuator_limits(rng, act, n_reject=3)
    u0 = np.round((lo + hi) / 2, 1)
    u_dev = 0.1 * (hi - lo)
    s0 = np.round(rng.uniform(20.0, 200.0, N_SENSORS), 1)
    s_dev = 0.05 * s0
    # Half-width of the nominal region of x = [u; s].
    x_names = act + sen
    x0 = np.concatenate((u0, s0))
    x_dev = np.concatenate((u_dev + window, s_dev))

    constraints = []
    for r in range(N_CONSTRAINTS):
        k = int(rng.integers(2, 7))
        first = int(rng.integers(N_ACTUATORS))  # every row involves an actuator
        rest = rng.choice(np.delete(np.arange(len(x_names)), first), k - 1, replace=False)
        cols = np.sort(np.concatenate(([first], rest)))
        coef = np.round(rng.uniform(0.5, 2.0, len(cols)) * rng.choice((-1.0, 1.0), len(cols)), 3)
        # Feasible on the whole nominal region, with a little room.
        rhs = round(float(coef @ x0[cols] + 1.02 * (np.abs(coef) @ x_dev[cols])) + 0.01, 3)
        row = tuple((x_names[j], float(c)) for j, c in zip(cols, coef, strict=True))
        constraints.append(sc.LinearConstraint(
            name=f"lin{r:02d}", expr=f"{_expr(row)} <= {rhs}", terms=row, rhs=rhs,
            policy=sc.Policy.TRIP if r % 8 == 7 else sc.Policy.REJECT))

    ops = (sc.ConditionOp.LT, sc.ConditionOp.LE, sc.ConditionOp.GT, sc.ConditionOp.GE)
    interlocks = []
    live = []
    for k in range(N_INTERLOCKS):
        cols = rng.choice(N_SENSORS, int(rng.integers(1, 3)), replace=False)
        coef = rng.choice((-1.0, 1.0), len(cols))
        op = ops[k % 4]
        lhs0 = float(coef @ s0[cols])
        span = float(np.abs(coef) @ s_dev[cols])
        is_live = k < 4
        reach = (0.5 if is_live else 1.3) * span  # dormant ones never hold nominally
        rhs = round(lhs0 + reach if op in (sc.ConditionOp.GT, sc.ConditionOp.GE)
                    else lhs0 - reach, 3)
        then = []
        for a in rng.choice(N_ACTUATORS, int(rng.integers(1, 3)), replace=False):
            upper = bool(rng.integers(2))
            # Beyond the nominal region: nominal commands meet it even while it holds.
            edge = 1.05 * (u_dev[a] + window[a])
            then.append(sc.Tightening(actuator=act[a], upper=upper,
                                      value=round(float(u0[a] + (edge if upper else -edge)), 3)))
        cond = tuple((sen[j], float(c)) for j, c in zip(cols, coef, strict=True))
        interlocks.append(sc.Interlock(
            name=f"ilk{k}", when=f"{_expr(cond)} {op.value} {rhs}", condition=cond, op=op,
            rhs=rhs, then=tuple(then),
            policy=sc.Policy.TRIP if k in (6, 7) else sc.Policy.CLAMP))
        if is_live:
            live.append(k)

    # d s_j/dt = -k_j (s_j - s0_j) + small cross-sensor terms + actuator gains (u - u0): stable
    # (diagonally dominant), at rest at (u0, s0). Nominal commands drive at most half the
    # restoring rate at s_dev; keep-ranges are s0 ± 1.6 s_dev.
    models = []
    keep = []
    for j in range(N_SENSORS):
        k_j = float(rng.uniform(0.2, 1.0))
        others = rng.choice(np.delete(np.arange(N_SENSORS), j), int(rng.integers(1, 3)),
                            replace=False)
        gains = rng.choice(N_ACTUATORS, int(rng.integers(2, 4)), replace=False)
        terms: list[tuple[str, float]] = [(sen[j], -k_j)]
        const = k_j * s0[j]
        for o in others:
            c = float(rng.uniform(-0.1, 0.1)) * k_j * s_dev[j] / s_dev[o]
            terms.append((sen[o], c))
            const -= c * s0[o]
        for a in gains:
            b = float(rng.choice((-1.0, 1.0))) * 0.5 * k_j * s_dev[j] / (
                len(gains) * (u_dev[a] + window[a]))
            terms.append((act[a], b))
            const -= b * u0[a]
        models.append(sc.SensorModel(sensor=sen[j], expr=f"{_expr(terms)} + {const:.6g}",
                                     terms=tuple(terms), constant=float(const)))
        keep.append(sc.KeepRange(sensor=sen[j], min=float(s0[j] - 1.6 * s_dev[j]),
                                 max=float(s0[j] + 1.6 * s_dev[j])))
    prediction = sc.Prediction(step_s=PREDICTION_STEP_S, horizon_steps=HORIZON_STEPS,
                               model=tuple(models), keep=tuple(keep))
    env = sc.Envelope(limits=tuple(limits), constraints=tuple(constraints),
                      interlocks=tuple(interlocks), prediction=prediction)
    policies = np.array([lim.policy is sc.Policy.CLAMP for lim in limits])
    return Synthetic(
        name="full",
        description=f"{N_ACTUATORS} actuators (as bounds_rate), {N_SENSORS} sensors, "
                    f"{N_CONSTRAINTS} linear constraints (2-6 terms), {N_INTERLOCKS} interlocks, "
                    f"prediction of {N_SENSORS} sensors x {HORIZON_STEPS} steps, "
                    f"{N_SENSORS} keep-ranges",
        envelope=env, compiled=_compile(env, act, sen),
        u0=u0, u_dev=u_dev, window=window, s0=s0, s_dev=s_dev, act_min=lo, act_max=hi,
        clamp_actuators=np.flatnonzero(policies), reject_actuators=np.flatnonzero(~policies),
        live_interlocks=tuple(live),
    )


# --------------------------------------------------------------------------- the commands


def nominal(syn: Synthetic, rng: np.random.Generator) -> Triple:
    """A command inside the nominal region: every constraint holds (interlocks may hold)."""
    p = syn.u0 + rng.uniform(-1.0, 1.0, len(syn.u0)) * syn.u_dev
    u = p + rng.uniform(-0.9, 0.9, len(p)) * syn.window
    s = syn.s0 + rng.uniform(-1.0, 1.0, len(syn.s0)) * syn.s_dev
    return u, p, s


def off_nominal(syn: Synthetic, rng: np.random.Generator) -> Triple:
    """A command built to break something: a rate jump or an out-of-bounds value on a clamp
    actuator (clamp), a jump on a reject actuator (reject), and with sensors also a push
    against a linear constraint or the prediction (reject/trip) or a command past a holding
    interlock's tightening (clamp/trip)."""
    u, p, s = nominal(syn, rng)
    kinds = ["rate", "bound", "reject"] + (["linear", "interlock", "predict"] if len(s) else [])
    weights = np.array([3.0, 1.5, 1.5] + ([1.5, 1.5, 1.0] if len(s) else []))
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    sign = float(rng.choice((-1.0, 1.0)))
    if kind == "rate":
        for a in rng.choice(syn.clamp_actuators, int(rng.integers(1, 3)), replace=False):
            u[a] = p[a] + float(rng.choice((-1.0, 1.0))) * rng.uniform(1.5, 3.0) * syn.window[a]
    elif kind == "bound":
        a = int(rng.choice(syn.clamp_actuators))
        u[a] = syn.act_max[a] + 5.0 if sign > 0 else syn.act_min[a] - 5.0
    elif kind == "reject":
        a = int(rng.choice(syn.reject_actuators))
        u[a] = p[a] + sign * rng.uniform(1.5, 3.0) * syn.window[a]
    elif kind == "linear":
        con = syn.envelope.constraints[int(rng.integers(len(syn.envelope.constraints)))]
        names = syn.compiled.actuator_names
        for name, coef in con.terms:
            if name in names:
                a = names.index(name)
                u[a] = syn.act_max[a] if coef > 0 else syn.act_min[a]
    elif kind == "interlock":
        ilk = syn.envelope.interlocks[int(rng.choice(syn.live_interlocks))]
        toward = 1.0 if ilk.op in (sc.ConditionOp.GT, sc.ConditionOp.GE) else -1.0
        for name, coef in ilk.condition:
            j = syn.compiled.sensor_names.index(name)
            s[j] = syn.s0[j] + toward * math.copysign(0.9, coef) * syn.s_dev[j]
        t = ilk.then[0]
        a = syn.compiled.actuator_names.index(t.actuator)
        u[a] = t.value + (0.5 if t.upper else -0.5) * syn.window[a]
    else:  # predict
        assert syn.envelope.prediction is not None
        model = syn.envelope.prediction.model[int(rng.integers(N_SENSORS))]
        j = syn.compiled.sensor_names.index(model.sensor)
        s[j] = syn.s0[j] + sign * 1.5 * syn.s_dev[j]
        for name, coef in model.terms:
            if name in syn.compiled.actuator_names:
                a = syn.compiled.actuator_names.index(name)
                u[a] = syn.u0[a] + math.copysign(0.45, sign * coef) * (
                    syn.act_max[a] - syn.act_min[a])
    return u, p, s


def command_pool(syn: Synthetic, size: int, seed: int = SEED) -> list[Triple]:
    """``size`` (command, previous, sensors) triples, ``BAD_FRACTION`` of them off-nominal,
    in a shuffled order; each array is its own C-contiguous float64 vector."""
    rng = np.random.default_rng([seed, 3, size])
    bad = rng.random(size) < BAD_FRACTION
    return [off_nominal(syn, rng) if b else nominal(syn, rng) for b in bad]


def batch_stream(syn: Synthetic, rows: int, seed: int = SEED,
                 spike_fraction: float = 0.07) -> tuple[F64, F64, F64]:
    """(commands, first previous command, sensors) for ``check_batch``.

    Each actuator follows a sinusoid within ``u0 ± u_dev`` moving at most 0.2 of its window per
    row, so that a few refused rows in a row (the actuators stay where they were) do not make
    the next row break the rate; ``spike_fraction`` of the rows jump one actuator by 1.5-3
    windows (clamped, or refused on a reject-policy actuator, and clamped again for a row or
    two while the trajectory catches up). Sensors are drawn within ``s0 ± s_dev / 2``.
    """
    rng = np.random.default_rng([seed, 4])
    n_a = len(syn.u0)
    omega = 0.2 * syn.window / syn.u_dev
    phase = rng.uniform(0.0, 2 * math.pi, n_a)
    k = np.arange(rows, dtype=np.float64)[:, None]
    cmds = syn.u0 + syn.u_dev * np.sin(omega * k + phase)
    spikes = np.flatnonzero(rng.random(rows) < spike_fraction)
    cols = rng.integers(0, n_a, len(spikes))
    jump = rng.uniform(1.5, 3.0, len(spikes)) * rng.choice((-1.0, 1.0), len(spikes))
    cmds[spikes, cols] += jump * syn.window[cols]
    sens = syn.s0 + rng.uniform(-0.5, 0.5, (rows, len(syn.s0))) * syn.s_dev
    return np.ascontiguousarray(cmds), cmds[0].copy(), np.ascontiguousarray(sens)


# --------------------------------------------------------------------------- timing


CheckInto = Callable[[F64, F64, F64, float, F64, U8], int]


def _noop(cmd: F64, prev: F64, sens: F64, dt: float, out: F64, viol: U8) -> int:
    return 0


def _loop_check_into(fn: CheckInto, chunk: list[Triple], out: F64, viol: U8) -> int:
    dt = DT_S
    t0 = time.perf_counter_ns()
    for c, p, s in chunk:
        fn(c, p, s, dt, out, viol)
    return time.perf_counter_ns() - t0


def _loop_check(env: Envelope, chunk: list[Triple], out: F64, viol: U8) -> int:
    check = env.check
    dt = DT_S
    t0 = time.perf_counter_ns()
    for c, p, s in chunk:
        check(c, p, s, dt)
    return time.perf_counter_ns() - t0


Loop = Callable[[list[Triple]], int]


def _per_call_ns(loops: dict[str, tuple[Loop, int, int]], pool: list[Triple]
                 ) -> dict[str, F64]:
    """Per-call nanoseconds of each sample, per loop; ``loops`` maps a name to (loop, calls per
    sample, samples). Each sample runs the next ``calls`` entries of ``pool`` (cycling).

    Samples of the different loops are interleaved, so that a burst of other work on the
    machine falls on all of them alike rather than on whichever ran at that moment.
    """
    chunks: dict[str, list[list[Triple]]] = {}
    for name, (loop, calls, samples) in loops.items():
        ring = pool * (calls // len(pool) + 2)
        chunks[name] = [ring[(k * calls) % len(pool):][:calls] for k in range(samples)]
        loop(chunks[name][0])  # warm-up: caches, lazily built state
    times: dict[str, list[int]] = {name: [] for name in loops}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for k in range(max(samples for _, _, samples in loops.values())):
            for name, (loop, _, samples) in loops.items():
                if k < samples:
                    times[name].append(loop(chunks[name][k]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: np.array(times[name], dtype=np.float64) / loops[name][1] for name in loops}


def _batch_checks_per_s(env: Envelope, cmds: F64, prev0: F64, sens: F64, runs: int
                        ) -> tuple[float, npt.NDArray[np.int8]]:
    actions = np.zeros(0, dtype=np.int8)
    rates = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            _, actions, _ = env.check_batch(cmds, prev0, sens, DT_S)
            rates.append(cmds.shape[0] / ((time.perf_counter_ns() - t0) * 1e-9))
    finally:
        if gc_was_enabled:
            gc.enable()
    return float(np.median(rates)), actions


def _mix(actions: Sequence[int] | npt.NDArray[np.int8]) -> dict[str, float]:
    counts = np.bincount(np.asarray(actions, dtype=np.intp), minlength=len(Action))
    return {a.name.lower(): round(float(counts[a]) / max(len(actions), 1), 4) for a in Action}


def _agreement(pool: list[Triple], reference: Envelope, others: dict[str, CheckInto]
               ) -> tuple[list[int], dict[str, int]]:
    """The reference's action on every pool entry, and how many entries each other
    implementation decides differently (action, mask, or clamped command off by > 1e-9)."""
    n_a, n_slots = reference.n_actuators, reference.n_slots
    out_r, viol_r = np.empty(n_a), np.zeros(n_slots, dtype=np.uint8)
    out_o, viol_o = np.empty(n_a), np.zeros(n_slots, dtype=np.uint8)
    actions = []
    mismatches = dict.fromkeys(others, 0)
    for c, p, s in pool:
        code = reference.check_into(c, p, s, DT_S, out_r, viol_r)
        actions.append(code)
        for name, fn in others.items():
            other = fn(c, p, s, DT_S, out_o, viol_o)
            same = other == code and np.array_equal(viol_o, viol_r) and bool(
                np.allclose(out_o, out_r, rtol=0.0, atol=1e-9, equal_nan=True))
            mismatches[name] += not same
    return actions, mismatches


def _bench_one(syn: Synthetic, cfg: Settings) -> dict[str, Any]:
    c = syn.compiled
    compiled = Envelope(c, "cython")
    reference = Envelope(c, "python")
    baseline = NumpyEnvelope(c)
    pool = command_pool(syn, cfg.pool_size)
    actions, mismatches = _agreement(pool, reference, {
        "compiled": compiled.check_into, "numpy": baseline.check_into})
    out = np.empty(c.n_actuators)
    viol = np.zeros(c.n_slots, dtype=np.uint8)

    def into(fn: CheckInto) -> Loop:
        return lambda chunk: _loop_check_into(fn, chunk, out, viol)

    def verdicts(chunk: list[Triple]) -> int:
        return _loop_check(compiled, chunk, out, viol)

    fast = (cfg.fast_calls, cfg.fast_samples)
    slow = (cfg.slow_calls, cfg.slow_samples)
    ns = _per_call_ns({
        "compiled_check_into": (into(compiled.check_into), *fast),
        "compiled_check": (verdicts, *fast),
        "compiled_kernel": (into(compiled.kernel.check_into), *fast),
        "reference": (into(reference.check_into), *slow),
        "numpy": (into(baseline.check_into), *slow),
        "call_overhead": (into(_noop), *fast),
    }, pool)
    cmds, prev0, sens = batch_stream(syn, cfg.batch_rows)
    batch_rate, batch_actions = _batch_checks_per_s(compiled, cmds, prev0, sens, cfg.batch_runs)
    n_ref = cfg.reference_batch_rows
    ref_rate, _ = _batch_checks_per_s(reference, cmds[:n_ref], prev0, sens[:n_ref],
                                      cfg.reference_batch_runs)
    del cmds, sens

    result: dict[str, Any] = {
        "description": syn.description,
        "actuators": c.n_actuators,
        "sensors": c.n_sensors,
        "linear_constraints": len(c.lin_rhs),
        "interlocks": len(c.ilk_rhs),
        "predicted_sensors": len(c.pred_sensor),
        "horizon_steps": c.pred_horizon,
        "slots": c.n_slots,
        "pool_size": len(pool),
        "pool_mix": _mix(actions),
        "compiled_mismatches": mismatches["compiled"],
        "numpy_mismatches": mismatches["numpy"],
    }
    for name, values in ns.items():
        result[f"{name}_ns_median"] = round(float(np.median(values)), 1)
        result[f"{name}_ns_p99"] = round(float(np.percentile(values, 99)), 1)
    compiled_ns = result["compiled_check_into_ns_median"]
    result["numpy_over_compiled"] = round(result["numpy_ns_median"] / compiled_ns, 2)
    result["reference_over_compiled"] = round(result["reference_ns_median"] / compiled_ns, 2)
    result.update({
        "batch_rows": cfg.batch_rows,
        "batch_runs": cfg.batch_runs,
        "batch_checks_per_s": round(batch_rate),
        "batch_mix": _mix(batch_actions),
        "reference_batch_rows": n_ref,
        "reference_batch_runs": cfg.reference_batch_runs,
        "reference_batch_checks_per_s": round(ref_rate),
    })
    return result


def _machine() -> dict[str, Any]:
    from gateway.envelope import ENGINE

    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: the model name is a nicety
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "engines": {"compiled": "cython", "reference": "python", "baseline": "numpy",
                    "gateway_default": ENGINE},
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat; None off Linux. In a virtual
    machine, steal is time the host gave our virtual CPUs to someone else."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def run(quick: bool) -> dict[str, Any]:
    """Run the envelope benchmark; returns the JSON-ready figures (see the module docstring).

    Raises :class:`gateway.envelope.EngineUnavailable` when the compiled engine is missing.
    """
    cfg = QUICK_SETTINGS if quick else FULL_SETTINGS
    started = time.perf_counter()
    cpu_started = time.process_time()
    load_before = _load_average()
    ticks_before = _cpu_ticks()
    bounds = _bench_one(bounds_rate_envelope(), cfg)
    full = _bench_one(full_envelope(), cfg)
    met = {
        "bounds_rate_ns_max":
            bounds["compiled_check_into_ns_median"] <= TARGETS["bounds_rate_ns_max"],
        "full_ns_max": full["compiled_check_into_ns_median"] <= TARGETS["full_ns_max"],
        "numpy_over_compiled_min":
            full["numpy_over_compiled"] >= TARGETS["numpy_over_compiled_min"],
        "reference_over_compiled_min":
            full["reference_over_compiled"] >= TARGETS["reference_over_compiled_min"],
        "batch_checks_per_s_min":
            bounds["batch_checks_per_s"] >= TARGETS["batch_checks_per_s_min"],
    }
    elapsed = time.perf_counter() - started
    machine = _machine()
    # Other work on the machine inflates every figure. The bench is single-threaded, so a CPU
    # share well below 1 (or a load average above 1) says the figures were measured contended.
    machine["load_average_1min"] = {"before": load_before, "after": _load_average()}
    machine["bench_cpu_share"] = round((time.process_time() - cpu_started) / elapsed, 3)
    ticks_after = _cpu_ticks()
    machine["cpu_steal_share"] = (
        round((ticks_after[0] - ticks_before[0]) / max(ticks_after[1] - ticks_before[1], 1), 3)
        if ticks_before is not None and ticks_after is not None else None)
    return {
        "bench": "envelope",
        "quick": quick,
        "seed": SEED,
        "dt_s": DT_S,
        "settings": vars(cfg).copy(),
        "bounds_rate": bounds,
        "full": full,
        "targets": dict(TARGETS),
        "met": met,
        "machine": machine,
        "elapsed_s": round(elapsed, 1),
    }


# --------------------------------------------------------------------------- text


def _ns(value: float) -> str:
    return f"{value / 1000:.2f} us" if value >= 10_000 else f"{value:.0f} ns"


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1%}"


def _pct(mix: dict[str, float]) -> str:
    return " / ".join(f"{100 * mix[k]:.1f}" for k in ("ok", "clamp", "reject", "trip"))


def format_text(result: dict[str, Any]) -> str:
    """A readable table of :func:`run`'s figures and the targets met or missed."""
    b, f = result["bounds_rate"], result["full"]
    cfg = result["settings"]
    m = result["machine"]
    rows: list[tuple[str, str, str]] = []

    def row(label: str, fmt: Callable[[dict[str, Any]], str]) -> None:
        rows.append((label, fmt(b), fmt(f)))

    def timing(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: f"{_ns(r[key + '_ns_median'])} / {_ns(r[key + '_ns_p99'])}"

    row("actuators / sensors / slots",
        lambda r: f"{r['actuators']} / {r['sensors']} / {r['slots']}")
    row("linear / interlocks / predicted",
        lambda r: f"{r['linear_constraints']} / {r['interlocks']} / {r['predicted_sensors']}"
                  f"x{r['horizon_steps']}")
    row("pool mix % ok/clamp/reject/trip", lambda r: _pct(r["pool_mix"]))
    row("mismatches vs reference (c / np)",
        lambda r: f"{r['compiled_mismatches']} / {r['numpy_mismatches']}")
    rows.append(("per check, median / p99", "", ""))
    row("  compiled  Envelope.check_into", timing("compiled_check_into"))
    row("  compiled  Envelope.check", timing("compiled_check"))
    row("  compiled  kernel, no wrapper", timing("compiled_kernel"))
    row("  reference Envelope.check_into", timing("reference"))
    row("  numpy     baseline.check_into", timing("numpy"))
    row("  (no-op call in the same loop)", timing("call_overhead"))
    row("numpy / compiled", lambda r: f"{r['numpy_over_compiled']:.1f}x")
    row("reference / compiled", lambda r: f"{r['reference_over_compiled']:.1f}x")
    row("batch, compiled: checks/s",
        lambda r: f"{r['batch_checks_per_s'] / 1e6:.2f} M ({r['batch_rows']:,} rows)")
    row("batch mix % ok/clamp/reject/trip", lambda r: _pct(r["batch_mix"]))
    row("batch, reference: checks/s",
        lambda r: f"{r['reference_batch_checks_per_s'] / 1e3:.1f} k "
                  f"({r['reference_batch_rows']:,} rows)")

    width = max(len(r[0]) for r in rows) + 2
    col = max(len(r[1]) for r in rows) + 3
    lines = [
        f"envelope bench{' (quick)' if result['quick'] else ''}: "
        f"{m['cpu_count']} CPUs ({m['cpu_model'] or 'unknown model'}), Python {m['python']}, "
        f"numpy {m['numpy']}, gateway engine {m['engines']['gateway_default']}",
        f"  load average {m['load_average_1min']['before']} before, "
        f"{m['load_average_1min']['after']} after; the bench had {m['bench_cpu_share']:.0%} "
        f"of a CPU; steal {_share(m['cpu_steal_share'])} "
        "(figures are inflated when other work competes)",
        f"  bounds_rate: {b['description']}",
        f"  full:        {f['description']}",
        f"  dt {result['dt_s']} s; single checks: compiled {cfg['fast_samples']} samples x "
        f"{cfg['fast_calls']} calls, reference/numpy {cfg['slow_samples']} x "
        f"{cfg['slow_calls']}; batch median of {cfg['batch_runs']} runs "
        f"(reference {cfg['reference_batch_runs']})",
        "",
        f"{'':<{width}}{'bounds_rate':<{col}}full",
    ]
    lines += [f"{label:<{width}}{x:<{col}}{y}".rstrip() for label, x, y in rows]
    t = result["targets"]
    met = result["met"]
    checks = [
        ("bounds_rate_ns_max",
         f"bounds_rate compiled check_into <= {t['bounds_rate_ns_max']:.0f} ns",
         _ns(b["compiled_check_into_ns_median"])),
        ("full_ns_max", f"full compiled check_into <= {t['full_ns_max']:.0f} ns",
         _ns(f["compiled_check_into_ns_median"])),
        ("numpy_over_compiled_min",
         f"full: compiled >= {t['numpy_over_compiled_min']:.0f}x faster than numpy",
         f"{f['numpy_over_compiled']:.1f}x"),
        ("reference_over_compiled_min",
         f"full: compiled >= {t['reference_over_compiled_min']:.0f}x faster than reference",
         f"{f['reference_over_compiled']:.1f}x"),
        ("batch_checks_per_s_min",
         f"bounds_rate batch >= {t['batch_checks_per_s_min'] / 1e6:.0f} M checks/s",
         f"{b['batch_checks_per_s'] / 1e6:.2f} M/s"),
    ]
    lines += ["", "targets:"]
    lines += [f"  [{'met   ' if met[key] else 'MISSED'}] {text}: {value}"
              for key, text, value in checks]
    lines.append(f"({result['elapsed_s']} s)")
    return "\n".join(lines)

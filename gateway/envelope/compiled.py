"""The envelope compiled to flat arrays, shared by both engines.

Vectors are in the site file's tag order: the command ``u`` has one entry per actuator, the
sensor vector ``s`` one per sensor. Linear rows index the joined vector ``x = [u; s]`` (index
``< n_actuators`` is an actuator). Every constraint has a *slot*: a position in the violation
mask, a name and a policy. Slots, in order:

- per actuator ``i``: ``6*i + 0..5`` = ``<name>.finite``, ``.min``, ``.max``, ``.allowed``,
  ``.rate``, ``.step``;
- one per linear constraint (its name);
- one per interlock (its name);
- one per prediction model row (``predict.<sensor>``);
- the last: ``envelope.clamp_infeasible``, flagged when a clamp-only verdict has no command
  that satisfies every limit at once (then the verdict escalates to reject).

The safe state is compiled too (``safe_*``): each actuator's plain safe value and its
conditional rows (conditions over sensors, like interlocks' ``when``). Both engines compute the
*effective* safe state from them (see the reference engine's docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from gateway.config import schema as s

if TYPE_CHECKING:
    from collections.abc import Sequence

F64 = npt.NDArray[np.float64]
IDX = npt.NDArray[np.intp]
U8 = npt.NDArray[np.uint8]

ACTUATOR_SLOTS = ("finite", "min", "max", "allowed", "rate", "step")
SLOTS_PER_ACTUATOR = len(ACTUATOR_SLOTS)
INFEASIBLE = "envelope.clamp_infeasible"


class Action(IntEnum):
    """A verdict's action, ordered by severity; the kernels return these codes."""

    OK = 0
    CLAMP = 1
    REJECT = 2
    TRIP = 3


class CondOp(IntEnum):
    """Interlock comparison codes used by the kernels."""

    LT = 0
    LE = 1
    GT = 2
    GE = 3


_POLICY = {s.Policy.CLAMP: Action.CLAMP, s.Policy.REJECT: Action.REJECT, s.Policy.TRIP: Action.TRIP}
_OPS = {s.ConditionOp.LT: CondOp.LT, s.ConditionOp.LE: CondOp.LE, s.ConditionOp.GT: CondOp.GT,
        s.ConditionOp.GE: CondOp.GE}


@dataclass(frozen=True, eq=False)
class CompiledEnvelope:
    """Flat, read-only arrays describing one envelope (see the module docstring)."""

    actuator_names: tuple[str, ...]
    sensor_names: tuple[str, ...]
    slot_names: tuple[str, ...]
    slot_policy: U8
    act_min: F64
    act_max: F64
    act_rate: F64  # units per second; +inf when not rate limited
    act_step: F64  # units per write; +inf when not step limited
    allowed_ptr: IDX  # CSR row pointers into allowed_val (sorted ascending per actuator)
    allowed_val: F64
    lin_ptr: IDX
    lin_idx: IDX
    lin_coef: F64
    lin_rhs: F64
    ilk_ptr: IDX  # interlock conditions over sensors: sum(coef * s[idx]) (op) rhs
    ilk_idx: IDX
    ilk_coef: F64
    ilk_rhs: F64
    ilk_op: U8
    tgt_ilk: IDX  # tightenings: while interlock tgt_ilk holds, u[tgt_act] <= or >= tgt_val
    tgt_act: IDX
    tgt_upper: U8
    tgt_val: F64
    pred_sensor: IDX  # modelled sensors (index into s)
    pred_u_ptr: IDX  # actuator terms of each row's rate
    pred_u_idx: IDX
    pred_u_coef: F64
    pred_s_ptr: IDX  # sensor terms of each row's rate
    pred_s_idx: IDX
    pred_s_coef: F64
    pred_const: F64
    keep_on: U8  # 1 when the row's sensor has a keep-range
    keep_lo: F64
    keep_hi: F64
    pred_step_s: float
    pred_horizon: int
    safe_val: F64  # each actuator's plain safe value; NaN: none declared (test envelopes)
    safe_ptr: IDX  # per actuator, its conditional safe rows: safe_ptr[i] .. safe_ptr[i+1]
    safe_cptr: IDX  # per row, its condition over sensors: sum(coef * s[idx]) (op) rhs
    safe_cidx: IDX
    safe_ccoef: F64
    safe_op: U8
    safe_rhs: F64
    safe_row_val: F64  # the safe value while the row's condition holds

    @property
    def n_actuators(self) -> int:
        return len(self.actuator_names)

    @property
    def n_sensors(self) -> int:
        return len(self.sensor_names)

    @property
    def n_slots(self) -> int:
        return len(self.slot_names)

    @property
    def lin_slot0(self) -> int:
        return SLOTS_PER_ACTUATOR * self.n_actuators

    @property
    def ilk_slot0(self) -> int:
        return self.lin_slot0 + len(self.lin_rhs)

    @property
    def pred_slot0(self) -> int:
        return self.ilk_slot0 + len(self.ilk_rhs)

    @property
    def infeasible_slot(self) -> int:
        return self.n_slots - 1


def _csr(rows: list[list[tuple[int, float]]]) -> tuple[IDX, IDX, F64]:
    ptr = np.zeros(len(rows) + 1, dtype=np.intp)
    idx: list[int] = []
    coef: list[float] = []
    for r, row in enumerate(rows):
        for i, c in row:
            idx.append(i)
            coef.append(c)
        ptr[r + 1] = len(idx)
    return ptr, np.array(idx, dtype=np.intp), np.array(coef, dtype=np.float64)


def _ro(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


def compile_site(site: s.Site) -> CompiledEnvelope:
    """Compile a validated site's envelope into arrays (pure; no engine involved)."""
    actuators = tuple(t.name for t in site.actuators)
    sensors = tuple(t.name for t in site.sensors)
    a_index = {n: i for i, n in enumerate(actuators)}
    s_index = {n: i for i, n in enumerate(sensors)}
    x_index = {**a_index, **{n: len(actuators) + i for n, i in s_index.items()}}
    env = site.envelope
    safe = [t.safe_value if t.safe_value is not None else math.nan for t in site.actuators]
    return compile_envelope(env, actuators, sensors, a_index, s_index, x_index, safe)


def compile_envelope(
    env: s.Envelope,
    actuators: tuple[str, ...],
    sensors: tuple[str, ...],
    a_index: dict[str, int],
    s_index: dict[str, int],
    x_index: dict[str, int],
    safe_values: Sequence[float] | None = None,
) -> CompiledEnvelope:
    """Compile ``env``; ``safe_values`` are the actuators' plain safe values (None: none, as
    in envelopes built for tests and benchmarks without a site)."""
    n_a = len(actuators)
    if safe_values is not None and len(safe_values) != n_a:
        raise ValueError(f"safe_values must have one value per actuator ({n_a})")
    limits = {lim.actuator: lim for lim in env.limits}
    missing = [a for a in actuators if a not in limits]
    if missing:
        raise ValueError(f"actuators without limits: {', '.join(missing)}")
    names: list[str] = []
    policy: list[int] = []
    act_min = np.empty(n_a)
    act_max = np.empty(n_a)
    act_rate = np.full(n_a, math.inf)
    act_step = np.full(n_a, math.inf)
    allowed_rows: list[list[tuple[int, float]]] = []
    for i, name in enumerate(actuators):
        lim = limits[name]
        act_min[i] = lim.min
        act_max[i] = lim.max
        if lim.max_rate_per_s is not None:
            act_rate[i] = lim.max_rate_per_s
        if lim.max_step is not None:
            act_step[i] = lim.max_step
        allowed_rows.append([(0, v) for v in sorted(lim.allowed or ())])
        for slot in ACTUATOR_SLOTS:
            names.append(f"{name}.{slot}")
            policy.append(_POLICY[env.nonfinite_policy if slot == "finite" else lim.policy])
    allowed_ptr, _, allowed_val = _csr(allowed_rows)

    lin_rows = [[(x_index[n], c) for n, c in con.terms] for con in env.constraints]
    lin_ptr, lin_idx, lin_coef = _csr(lin_rows)
    lin_rhs = np.array([con.rhs for con in env.constraints], dtype=np.float64)
    for con in env.constraints:
        names.append(con.name)
        policy.append(_POLICY[con.policy])

    ilk_rows = [[(s_index[n], c) for n, c in ilk.condition] for ilk in env.interlocks]
    ilk_ptr, ilk_idx, ilk_coef = _csr(ilk_rows)
    ilk_rhs = np.array([ilk.rhs for ilk in env.interlocks], dtype=np.float64)
    ilk_op = np.array([_OPS[ilk.op] for ilk in env.interlocks], dtype=np.uint8)
    tgt_ilk: list[int] = []
    tgt_act: list[int] = []
    tgt_upper: list[int] = []
    tgt_val: list[float] = []
    for k, ilk in enumerate(env.interlocks):
        names.append(ilk.name)
        policy.append(_POLICY[ilk.policy])
        for t in ilk.then:
            tgt_ilk.append(k)
            tgt_act.append(a_index[t.actuator])
            tgt_upper.append(1 if t.upper else 0)
            tgt_val.append(t.value)

    pred = env.prediction
    models = pred.model if pred is not None else ()
    keep = {k.sensor: k for k in pred.keep} if pred is not None else {}
    u_rows = [[(a_index[n], c) for n, c in m.terms if n in a_index] for m in models]
    s_rows = [[(s_index[n], c) for n, c in m.terms if n in s_index] for m in models]
    pred_u_ptr, pred_u_idx, pred_u_coef = _csr(u_rows)
    pred_s_ptr, pred_s_idx, pred_s_coef = _csr(s_rows)
    keep_on = np.array([1 if m.sensor in keep else 0 for m in models], dtype=np.uint8)
    keep_lo = np.array([keep[m.sensor].min if m.sensor in keep else -math.inf for m in models])
    keep_hi = np.array([keep[m.sensor].max if m.sensor in keep else math.inf for m in models])
    for m in models:
        names.append(f"predict.{m.sensor}")
        policy.append(_POLICY[pred.policy] if pred is not None else Action.REJECT)
    names.append(INFEASIBLE)
    policy.append(Action.REJECT)

    # Conditional safe rows grouped by actuator, each actuator's rows in file order.
    rows_of: list[list[s.SafeCase]] = [[] for _ in actuators]
    for case in env.safe_cases:
        rows_of[a_index[case.actuator]].append(case)
    safe_rows = [case for rows in rows_of for case in rows]
    safe_ptr = np.zeros(n_a + 1, dtype=np.intp)
    for i, rows in enumerate(rows_of):
        safe_ptr[i + 1] = safe_ptr[i] + len(rows)
    safe_cptr, safe_cidx, safe_ccoef = _csr([[(s_index[n], c) for n, c in case.condition]
                                             for case in safe_rows])

    compiled = CompiledEnvelope(
        actuator_names=actuators, sensor_names=sensors, slot_names=tuple(names),
        slot_policy=np.array(policy, dtype=np.uint8),
        act_min=act_min, act_max=act_max, act_rate=act_rate, act_step=act_step,
        allowed_ptr=allowed_ptr, allowed_val=allowed_val,
        lin_ptr=lin_ptr, lin_idx=lin_idx, lin_coef=lin_coef, lin_rhs=lin_rhs,
        ilk_ptr=ilk_ptr, ilk_idx=ilk_idx, ilk_coef=ilk_coef, ilk_rhs=ilk_rhs, ilk_op=ilk_op,
        tgt_ilk=np.array(tgt_ilk, dtype=np.intp), tgt_act=np.array(tgt_act, dtype=np.intp),
        tgt_upper=np.array(tgt_upper, dtype=np.uint8),
        tgt_val=np.array(tgt_val, dtype=np.float64),
        pred_sensor=np.array([s_index[m.sensor] for m in models], dtype=np.intp),
        pred_u_ptr=pred_u_ptr, pred_u_idx=pred_u_idx, pred_u_coef=pred_u_coef,
        pred_s_ptr=pred_s_ptr, pred_s_idx=pred_s_idx, pred_s_coef=pred_s_coef,
        pred_const=np.array([m.constant for m in models], dtype=np.float64),
        keep_on=keep_on, keep_lo=keep_lo, keep_hi=keep_hi,
        pred_step_s=pred.step_s if pred is not None else 1.0,
        pred_horizon=pred.horizon_steps if pred is not None else 0,
        safe_val=np.array(safe_values if safe_values is not None else [math.nan] * n_a,
                          dtype=np.float64),
        safe_ptr=safe_ptr, safe_cptr=safe_cptr, safe_cidx=safe_cidx, safe_ccoef=safe_ccoef,
        safe_op=np.array([_OPS[case.op] for case in safe_rows], dtype=np.uint8),
        safe_rhs=np.array([case.rhs for case in safe_rows], dtype=np.float64),
        safe_row_val=np.array([case.value for case in safe_rows], dtype=np.float64),
    )
    _ro(*(v for v in vars(compiled).values() if isinstance(v, np.ndarray)))
    return compiled


def actuators_of_slots(c: CompiledEnvelope) -> tuple[frozenset[int], ...]:
    """For each slot, the actuators whose values it constrains.

    Per-actuator slots name their actuator; a linear constraint its actuator terms; an
    interlock the actuators it tightens; a prediction row every actuator of the process model
    (rows are coupled through the sensors); the clamp-infeasible slot none (it follows from
    other slots).
    """
    n_a = c.n_actuators
    out: list[frozenset[int]] = [frozenset({i}) for i in range(n_a)
                                 for _ in range(SLOTS_PER_ACTUATOR)]
    for r in range(len(c.lin_rhs)):
        idx = c.lin_idx[c.lin_ptr[r] : c.lin_ptr[r + 1]].tolist()
        out.append(frozenset(i for i in idx if i < n_a))
    for k in range(len(c.ilk_rhs)):
        out.append(frozenset(int(a) for a, ilk in zip(c.tgt_act, c.tgt_ilk, strict=True)
                             if ilk == k))
    model_actuators = frozenset(int(i) for i in c.pred_u_idx.tolist())
    out.extend(model_actuators for _ in range(len(c.pred_sensor)))
    out.append(frozenset())
    return tuple(out)

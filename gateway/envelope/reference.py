"""The pure-Python reference engine: the specification of the envelope's semantics.

``_fastcheck/envelope.pyx`` implements the same algorithm with the same floating-point
operations in the same order, so both engines give bit-identical verdicts; the test suite checks
that with hypothesis. Change both together.

Semantics of one check of command ``u`` given the previous applied command ``p``, sensors ``s``
and the time since the previous write ``dt`` (seconds):

1. Interlock conditions are evaluated on ``s``. A condition whose value is NaN *holds*:
   an unknown sensor is treated as the dangerous state. Each actuator's bounds ``[lo_b, hi_b]``
   are its ``[min, max]`` tightened by every holding interlock.
2. The *effective safe state* ``g`` (what SAFE_STOP writes, :meth:`ReferenceKernel.safe_into`):
   per actuator, the value of its first conditional safe row whose condition holds (NaN holds,
   as for interlocks), else its plain safe value; then projected into ``[lo_b, hi_b]`` (an
   interlock's bound wins over a safe value that would break it) and onto the nearest allowed
   value inside them (ties to the lower). An actuator without a safe value (NaN, envelopes built
   without a site) has none, and no move is protective for it.
3. Each actuator value must be finite, within ``[min, max]``, one of its allowed values (exact
   equality), and, unless the move is *protective*, within ``max_rate_per_s * dt`` of ``p`` and
   within ``max_step`` of ``p``. A move is protective when ``v == g`` or ``v`` lies between
   ``p`` and ``g`` (inclusive): moves toward the safe state, which satisfies every holding
   interlock, are never rate or step limited, so that a trip acts at once. Otherwise a rate or
   step limit with a non-finite ``p`` is violated: a jump from an unknown position cannot be
   bounded. Under a holding interlock, its tightened bounds apply too.
4. Linear constraints ``a·[u; s] <= b`` are evaluated term by term, skipping nothing: a NaN in
   any used value violates the constraint.
5. The prediction rolls ``y' = A y + B u + c`` forward by explicit Euler steps from ``y = s``
   with ``u`` held; a kept sensor must stay within its keep-range at every step, or, if it is
   already outside, get no further outside than it is now.
6. The action is the most severe policy among violated constraints. When it is ``CLAMP`` the
   command is projected per actuator into the intersection of ``[lo_b, hi_b]`` and its move
   window: ``[p - r, p + r]`` widened to reach ``g`` (``r`` the smaller of ``max_rate_per_s *
   dt`` and ``max_step``; just ``{g}`` when ``p`` is not finite), then onto the nearest allowed
   value (ties to the lower). The window always holds ``g``, so an actuator with a safe state
   always has a feasible value; one without (NaN proposal, or no safe value and an empty
   window) escalates the verdict to ``REJECT`` (``envelope.clamp_infeasible``); otherwise the
   projection is checked against the linear constraints and the prediction, and any violation
   there escalates to at least ``REJECT``.

What the device receives therefore obeys, for every actuator and any two writes at times
``t1 < t2`` with values ``x1`` and ``x2`` (whoever asked for them, as long as each write is
checked against the value last written and the time since it was written): either ``x2`` is
between ``x1`` and the safe state (a protective move), or ``|x2 - x1| <= max_rate_per_s * (t2 -
t1)`` and ``|x2 - x1| <= max_step``. The runtime measures ``dt`` from the actual previous write,
so its bound over any run of writes is ``max_rate_per_s * (t2 - t1 + one cycle)`` at worst (the
first write after start is judged as one cycle after the read-back).

Every comparison is written so that NaN fails it (``not (x <= limit)``), never passes it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gateway.envelope.compiled import SLOTS_PER_ACTUATOR, Action, CompiledEnvelope, CondOp

if TYPE_CHECKING:
    import numpy as np

    from gateway.envelope.compiled import F64

# How many ulps a clamped value may be nudged toward the previous value so that rounding in
# `p - r` cannot leave it a hair outside its own rate window.
_NUDGES = 4


class ReferenceKernel:
    """Checks commands against one compiled envelope; same interface as the Cython kernel."""

    engine = "python"

    def __init__(self, c: CompiledEnvelope) -> None:
        self.c = c
        self.n_a = c.n_actuators
        self.n_s = c.n_sensors
        self.n_slots = c.n_slots
        self.policy = c.slot_policy.tolist()
        self.act_min = c.act_min.tolist()
        self.act_max = c.act_max.tolist()
        self.act_rate = c.act_rate.tolist()
        self.act_step = c.act_step.tolist()
        self.allowed = [
            c.allowed_val[c.allowed_ptr[i] : c.allowed_ptr[i + 1]].tolist() for i in range(self.n_a)
        ]
        self.lin = [
            (list(zip(c.lin_idx[c.lin_ptr[r] : c.lin_ptr[r + 1]].tolist(),
                      c.lin_coef[c.lin_ptr[r] : c.lin_ptr[r + 1]].tolist(), strict=True)),
             float(c.lin_rhs[r]))
            for r in range(len(c.lin_rhs))
        ]
        self.ilk = [
            (list(zip(c.ilk_idx[c.ilk_ptr[k] : c.ilk_ptr[k + 1]].tolist(),
                      c.ilk_coef[c.ilk_ptr[k] : c.ilk_ptr[k + 1]].tolist(), strict=True)),
             int(c.ilk_op[k]), float(c.ilk_rhs[k]))
            for k in range(len(c.ilk_rhs))
        ]
        self.tgt = list(zip(c.tgt_ilk.tolist(), c.tgt_act.tolist(), c.tgt_upper.tolist(),
                            c.tgt_val.tolist(), strict=True))
        self.safe_val = c.safe_val.tolist()
        self.safe_rows = [
            [(list(zip(c.safe_cidx[c.safe_cptr[e] : c.safe_cptr[e + 1]].tolist(),
                       c.safe_ccoef[c.safe_cptr[e] : c.safe_cptr[e + 1]].tolist(), strict=True)),
              int(c.safe_op[e]), float(c.safe_rhs[e]), float(c.safe_row_val[e]))
             for e in range(int(c.safe_ptr[i]), int(c.safe_ptr[i + 1]))]
            for i in range(self.n_a)
        ]
        n_p = len(c.pred_sensor)
        self.pred = [
            (int(c.pred_sensor[p]),
             list(zip(c.pred_u_idx[c.pred_u_ptr[p] : c.pred_u_ptr[p + 1]].tolist(),
                      c.pred_u_coef[c.pred_u_ptr[p] : c.pred_u_ptr[p + 1]].tolist(), strict=True)),
             list(zip(c.pred_s_idx[c.pred_s_ptr[p] : c.pred_s_ptr[p + 1]].tolist(),
                      c.pred_s_coef[c.pred_s_ptr[p] : c.pred_s_ptr[p + 1]].tolist(), strict=True)),
             float(c.pred_const[p]), bool(c.keep_on[p]), float(c.keep_lo[p]), float(c.keep_hi[p]))
            for p in range(n_p)
        ]
        self.pred_step = c.pred_step_s
        self.horizon = c.pred_horizon
        self.lin0 = c.lin_slot0
        self.ilk0 = c.ilk_slot0
        self.pred0 = c.pred_slot0
        self.infeasible = c.infeasible_slot

    # -- public interface (validated by the caller, gateway.envelope.engine) --------------------

    def check_into(self, command: F64, previous: F64, sensors: F64, dt: float, out: F64,
                   viol: np.ndarray) -> int:
        flags = [0] * self.n_slots
        action, clamped = self._check(command.tolist(), previous.tolist(), sensors.tolist(), dt,
                                      flags)
        out[:] = clamped
        viol[:] = flags
        return action

    def project_into(self, command: F64, previous: F64, sensors: F64, dt: float, out: F64,
                     feasible: np.ndarray) -> int:
        mask = [0] * self.n_a
        lo_b, hi_b = self._bounds(self._interlocks(sensors.tolist()))
        g = self._safe(sensors.tolist(), lo_b, hi_b)
        projected = self._clamp(command.tolist(), previous.tolist(), dt, lo_b, hi_b, g, mask)
        out[:] = projected
        feasible[:] = mask
        return self.n_a - sum(mask)

    def safe_into(self, sensors: F64, out: F64) -> None:
        s = sensors.tolist()
        lo_b, hi_b = self._bounds(self._interlocks(s))
        out[:] = self._safe(s, lo_b, hi_b)

    def check_batch(self, cmds: F64, prev0: F64, sens: F64, dt: float, out: F64,
                    actions: np.ndarray, counts: np.ndarray) -> None:
        prev = prev0.tolist()
        totals = [0] * self.n_slots
        for k in range(cmds.shape[0]):
            flags = [0] * self.n_slots
            action, clamped = self._check(cmds[k].tolist(), prev, sens[k].tolist(), dt, flags)
            out[k, :] = clamped
            actions[k] = action
            for j in range(self.n_slots):
                totals[j] += flags[j]
            if action <= Action.CLAMP:
                prev = clamped
        counts[:] = totals

    # -- the algorithm ------------------------------------------------------------------------

    def _check(self, u: list[float], p: list[float], s: list[float], dt: float,
               flags: list[int]) -> tuple[int, list[float]]:
        action = 0
        policy = self.policy

        def flag(slot: int) -> None:
            nonlocal action
            flags[slot] = 1
            if policy[slot] > action:
                action = policy[slot]

        active = self._interlocks(s)
        lo_b, hi_b = self._bounds(active)
        g = self._safe(s, lo_b, hi_b)
        for i in range(self.n_a):
            v = u[i]
            base = SLOTS_PER_ACTUATOR * i
            if not math.isfinite(v):
                flag(base)
                continue
            if not (v >= self.act_min[i]):
                flag(base + 1)
            if not (v <= self.act_max[i]):
                flag(base + 2)
            allowed = self.allowed[i]
            if allowed and v not in allowed:
                flag(base + 3)
            rate = self.act_rate[i]
            step = self.act_step[i]
            if rate != math.inf or step != math.inf:
                pi = p[i]
                gi = g[i]
                # A protective move (toward the safe state) is never rate or step limited.
                if not (v == gi or (pi <= v and v <= gi) or (gi <= v and v <= pi)):
                    if rate != math.inf and not (abs(v - pi) <= rate * dt):
                        flag(base + 4)
                    if step != math.inf and not (abs(v - pi) <= step):
                        flag(base + 5)
        for k, a, upper, val in self.tgt:
            if active[k]:
                v = u[a]
                if not (v <= val) if upper else not (v >= val):
                    flag(self.ilk0 + k)
        for r in self._linear(u, s):
            flag(self.lin0 + r)
        for q in self._predict(u, s):
            flag(self.pred0 + q)

        if action != Action.CLAMP:
            return action, list(u)
        # A clamp-only verdict: project, and escalate if some actuator has no feasible value.
        mask = [0] * self.n_a
        clamped = self._clamp(u, p, dt, lo_b, hi_b, g, mask)
        if 0 in mask:
            flag(self.infeasible)
            return action, list(u)
        escalate = [self.lin0 + r for r in self._linear(clamped, s)]
        escalate += [self.pred0 + q for q in self._predict(clamped, s)]
        for slot in escalate:
            flag(slot)
            if action < Action.REJECT:
                action = Action.REJECT
        return action, clamped

    def _interlocks(self, s: list[float]) -> list[bool]:
        return [_holds(terms, op, rhs, s) for terms, op, rhs in self.ilk]

    def _bounds(self, active: list[bool]) -> tuple[list[float], list[float]]:
        """Each actuator's [min, max] tightened by the holding interlocks."""
        lo_b = list(self.act_min)
        hi_b = list(self.act_max)
        for k, a, upper, val in self.tgt:
            if active[k]:
                if upper:
                    if val < hi_b[a]:
                        hi_b[a] = val
                elif val > lo_b[a]:
                    lo_b[a] = val
        return lo_b, hi_b

    def _safe(self, s: list[float], lo_b: list[float], hi_b: list[float]) -> list[float]:
        """The effective safe state (module docstring, item 2)."""
        out = []
        for i in range(self.n_a):
            v = self.safe_val[i]
            for terms, op, rhs, val in self.safe_rows[i]:
                if _holds(terms, op, rhs, s):
                    v = val
                    break
            lo = lo_b[i]
            hi = hi_b[i]
            if lo <= hi:  # an interlock that empties the range: `check` refuses such a site
                if v < lo:
                    v = lo
                if v > hi:
                    v = hi
                if self.allowed[i]:
                    best = _nearest(self.allowed[i], v, lo, hi)
                    if best is not None:
                        v = best
            out.append(v)
        return out

    def _linear(self, u: list[float], s: list[float]) -> list[int]:
        bad = []
        n_a = self.n_a
        for r, (terms, rhs) in enumerate(self.lin):
            acc = 0.0
            for j, coef in terms:
                acc += coef * (u[j] if j < n_a else s[j - n_a])
            if not (acc <= rhs):
                bad.append(r)
        return bad

    def _predict(self, u: list[float], s: list[float]) -> list[int]:
        if not self.pred:
            return []
        drive = []
        lo_eff = []
        hi_eff = []
        bad = [False] * len(self.pred)
        for q, (sensor, u_terms, _, const, keep, lo, hi) in enumerate(self.pred):
            d = const
            for j, coef in u_terms:
                d += coef * u[j]
            drive.append(d)
            y0 = s[sensor]
            if keep and not math.isfinite(y0):
                bad[q] = True
            lo_eff.append(lo if y0 >= lo else y0)
            hi_eff.append(hi if y0 <= hi else y0)
        y = list(s)
        step = self.pred_step
        nxt = [0.0] * len(self.pred)
        for _ in range(self.horizon):
            for q, (sensor, _, s_terms, _, _, _, _) in enumerate(self.pred):
                d = drive[q]
                for j, coef in s_terms:
                    d += coef * y[j]
                nxt[q] = y[sensor] + step * d
            for q, row in enumerate(self.pred):
                y[row[0]] = nxt[q]
                if row[4] and not bad[q] and not (lo_eff[q] <= nxt[q] and nxt[q] <= hi_eff[q]):
                    bad[q] = True
        return [q for q in range(len(bad)) if bad[q]]

    def _clamp(self, u: list[float], p: list[float], dt: float, lo_b: list[float],
               hi_b: list[float], g: list[float], feasible: list[int]) -> list[float]:
        """Project each actuator into its feasible set; ``feasible[i]`` is set to 1 where that
        set is not empty. An infeasible actuator keeps its proposed value in the result."""
        out = list(u)
        for i in range(self.n_a):
            v = u[i]
            if not math.isfinite(v):
                continue
            lo = lo_b[i]
            hi = hi_b[i]
            rate_dt = self.act_rate[i] * dt
            step = self.act_step[i]
            limited = self.act_rate[i] != math.inf or step != math.inf
            pi = p[i]
            gi = g[i]
            if limited:
                # The move window around pi, widened to reach the safe state (protective
                # moves are never limited); from an unknown position, the safe state only.
                if math.isfinite(pi):
                    r = rate_dt
                    if step < r:
                        r = step
                    w_lo = pi - r
                    w_hi = pi + r
                    if gi < w_lo:
                        w_lo = gi
                    if gi > w_hi:
                        w_hi = gi
                elif math.isfinite(gi):
                    w_lo = gi
                    w_hi = gi
                else:
                    continue
                if w_lo > lo:
                    lo = w_lo
                if w_hi < hi:
                    hi = w_hi
            if not (lo <= hi):
                continue
            if v < lo:
                v = lo
            if v > hi:
                v = hi
            allowed = self.allowed[i]
            if allowed:
                best = _nearest(allowed, v, lo, hi)
                if best is None:
                    continue
                v = best
            if limited:
                # pi - r and pi + r are rounded: move v toward pi, an ulp at a time, until
                # |v - pi| passes the very tests the check applies, then re-check the bounds.
                nudges = 0
                while not ((abs(v - pi) <= rate_dt and abs(v - pi) <= step)
                           or v == gi or (pi <= v and v <= gi) or (gi <= v and v <= pi)):
                    if nudges == _NUDGES:
                        break
                    v = math.nextafter(v, pi)
                    nudges += 1
                if not ((abs(v - pi) <= rate_dt and abs(v - pi) <= step)
                        or v == gi or (pi <= v and v <= gi) or (gi <= v and v <= pi)):
                    continue
                if nudges and (not (v >= lo_b[i] and v <= hi_b[i])
                               or (allowed and v not in allowed)):
                    continue
            out[i] = v
            feasible[i] = 1
        return out


def _holds(terms: list[tuple[int, float]], op: int, rhs: float, s: list[float]) -> bool:
    """A condition ``sum(coef * s[j]) (op) rhs``; NaN makes it hold (unknown is dangerous)."""
    lhs = 0.0
    for j, coef in terms:
        lhs += coef * s[j]
    if op == CondOp.LT:
        return not (lhs >= rhs)
    if op == CondOp.LE:
        return not (lhs > rhs)
    if op == CondOp.GT:
        return not (lhs <= rhs)
    return not (lhs < rhs)


def _nearest(allowed: list[float], v: float, lo: float, hi: float) -> float | None:
    """The allowed value in ``[lo, hi]`` nearest to ``v`` (the lower on a tie: ``allowed`` is
    sorted), or None if there is none (or ``v`` is NaN)."""
    best = None
    best_d = math.inf
    for a in allowed:
        if a >= lo and a <= hi:
            d = abs(a - v)
            if d < best_d:
                best_d = d
                best = a
    return best

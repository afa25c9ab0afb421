"""The envelope check written as vectorised numpy: the baseline the benchmark compares against.

Not an engine of the product (the gateway runs ``cython`` or the ``python`` reference only); it
exists so that ``safety-gateway bench envelope`` can say how the compiled kernel compares with
what a competent numpy programmer would write. It implements the semantics documented in
:mod:`gateway.envelope.reference` from the same :class:`CompiledEnvelope`, with whole-array
operations instead of loops:

- per-actuator limits as boolean masks over the command vector (the ``(n_actuators, 6)`` block
  of the violation mask is filled column by column);
- linear constraints as one dense matrix over ``x = [u; s]`` (the CSR rows scattered into it);
- interlock conditions as a dense matrix over ``s``; tightenings as ``(n_interlocks,
  n_actuators)`` bound matrices, so the clamp's tightened bounds are a masked ``min``/``max``;
- the prediction as an *affine map*: the Euler roll ``y <- M y + E g`` (``M = I + h A``,
  ``g = c + B u``) is linear, so every kept sensor at every step is ``W [u; s] + w0`` with
  ``W`` and ``w0`` precomputed from the powers of ``M``. It is stacked under the linear
  constraints, so one matrix-vector product yields every coupled quantity;
- the clamp as ``np.clip`` into bounds intersected with the rate/step window, the nearest
  allowed value by ``argmin`` over a NaN-padded table, and the same ulp nudges as the reference.

Agreement with the reference: element-wise comparisons, the clamp and the nudges use the same
IEEE operations and agree bit for bit. Sums do not: a matrix product sums in another order
(and the precomputed map rounds differently from stepping), so a linear row, an interlock
condition or a predicted value within a few ulps of its threshold can be decided differently.
:meth:`NumpyEnvelope.boundary_margin` says how far a case is from that.

Non-finite inputs: ``0 * nan`` is ``nan``, so a dense product would let a NaN in a column a row
does not use poison that row. When any of ``u``, ``p``, ``s`` is not finite, the check therefore
takes a slower path that multiplies only the entries each row uses and steps the prediction
explicitly, which keeps the reference's semantics (only the constraints that use a NaN fail).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.envelope.compiled import SLOTS_PER_ACTUATOR, Action, CompiledEnvelope, CondOp

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]
IDX = npt.NDArray[np.intp]

# Same bound on ulp nudges as gateway.envelope.reference._NUDGES.
_NUDGES = 4


def _dense(ptr: IDX, idx: IDX, coef: F64, n_rows: int, n_cols: int) -> tuple[F64, BOOL]:
    """A CSR matrix as a dense array plus the mask of the entries it stores."""
    rows = np.repeat(np.arange(n_rows), np.diff(ptr))
    dense = np.zeros((n_rows, n_cols))
    np.add.at(dense, (rows, idx), coef)
    used = np.zeros((n_rows, n_cols), dtype=np.bool_)
    used[rows, idx] = True
    return dense, used


def _masked_matvec(a: F64, used: BOOL, x: F64) -> F64:
    """``a @ x`` over the stored entries only: an unused non-finite ``x[j]`` leaves a row alone."""
    out: F64 = np.where(used, a * x, 0.0).sum(axis=1)
    return out


class NumpyEnvelope:
    """Checks commands against one compiled envelope with vectorised numpy.

    :meth:`check_into` has the kernels' interface. Arguments are not validated (the benchmark
    passes well-formed float64 vectors); ``dt`` is in seconds.
    """

    engine = "numpy"

    def __init__(self, c: CompiledEnvelope) -> None:
        n_a, n_s = c.n_actuators, c.n_sensors
        self.n_a, self.n_s, self.n_slots = n_a, n_s, c.n_slots
        self.policy = c.slot_policy.copy()
        self.lin0, self.ilk0, self.pred0 = c.lin_slot0, c.ilk_slot0, c.pred_slot0
        self.infeasible = c.infeasible_slot
        self.n_l, self.n_i, self.n_p = len(c.lin_rhs), len(c.ilk_rhs), len(c.pred_sensor)

        # Per-actuator limits.
        self.act_min, self.act_max = c.act_min, c.act_max
        self.rate, self.step = c.act_rate, c.act_step
        self.rate_on = np.isfinite(c.act_rate)
        self.step_on = np.isfinite(c.act_step)
        self.limited = self.rate_on | self.step_on
        counts = np.diff(c.allowed_ptr)
        self.has_allowed = counts > 0
        self.any_allowed = bool(self.has_allowed.any())
        # Allowed values padded with NaN (never equal to anything, never in range).
        self.allowed = np.full((n_a, max(int(counts.max(initial=0)), 1)), np.nan)
        for i in np.flatnonzero(self.has_allowed):
            vals = c.allowed_val[c.allowed_ptr[i] : c.allowed_ptr[i + 1]]
            self.allowed[i, : len(vals)] = vals
        self.arange_a = np.arange(n_a)

        # Linear constraints over x = [u; s].
        self.lin, self.lin_used = _dense(c.lin_ptr, c.lin_idx, c.lin_coef, self.n_l, n_a + n_s)
        self.lin_rhs = c.lin_rhs

        # Interlock conditions over s, with ">" and ">=" rows negated into "<" and "<=" (exact:
        # negation does not round), and their tightenings as bound matrices.
        cond, self.cond_used = _dense(c.ilk_ptr, c.ilk_idx, c.ilk_coef, self.n_i, n_s)
        flip = np.where((c.ilk_op == CondOp.GT) | (c.ilk_op == CondOp.GE), -1.0, 1.0)
        self.cond = cond * flip[:, None]
        self.cond_rhs = c.ilk_rhs * flip
        self.cond_strict = (c.ilk_op == CondOp.LT) | (c.ilk_op == CondOp.GT)
        self.tight_hi = np.full((self.n_i, n_a), np.inf)
        self.tight_lo = np.full((self.n_i, n_a), -np.inf)
        self.hi_on = np.zeros((self.n_i, n_a), dtype=np.bool_)
        self.lo_on = np.zeros((self.n_i, n_a), dtype=np.bool_)
        upper = c.tgt_upper.astype(np.bool_)
        np.minimum.at(self.tight_hi, (c.tgt_ilk[upper], c.tgt_act[upper]), c.tgt_val[upper])
        np.maximum.at(self.tight_lo, (c.tgt_ilk[~upper], c.tgt_act[~upper]), c.tgt_val[~upper])
        self.hi_on[c.tgt_ilk[upper], c.tgt_act[upper]] = True
        self.lo_on[c.tgt_ilk[~upper], c.tgt_act[~upper]] = True
        self.tightened = self.hi_on | self.lo_on

        # Prediction: the model in matrix form, for the explicit roll (non-finite path) ...
        self.horizon = c.pred_horizon
        self.h = c.pred_step_s
        self.pred_sensor = c.pred_sensor
        self.pred_const = c.pred_const
        self.keep_on = c.keep_on.astype(np.bool_)
        self.keep_lo, self.keep_hi = c.keep_lo, c.keep_hi
        self.gain_u, self.gain_u_used = _dense(c.pred_u_ptr, c.pred_u_idx, c.pred_u_coef,
                                               self.n_p, n_a)
        self.gain_s, self.gain_s_used = _dense(c.pred_s_ptr, c.pred_s_idx, c.pred_s_coef,
                                               self.n_p, n_s)
        # ... and as the affine map from [u; s] to every kept sensor at every step.
        self.kept = np.flatnonzero(self.keep_on)
        self.kept_sensor = c.pred_sensor[self.kept]
        self.kept_lo, self.kept_hi = c.keep_lo[self.kept], c.keep_hi[self.kept]
        w, self.w0 = self._rollout_map()
        # Every coupled quantity from one product: linear rows first, then the trajectory.
        self.coupled = np.ascontiguousarray(np.vstack([self.lin, w]))
        self.any_coupled = self.coupled.shape[0] > 0

        # The safe state: plain values, conditional rows (conditions over s, negated like the
        # interlocks' into "<"/"<="), each row's actuator and value.
        self.safe_val = c.safe_val
        self.n_rows = len(c.safe_rhs)
        rcond, self.row_used = _dense(c.safe_cptr, c.safe_cidx, c.safe_ccoef, self.n_rows, n_s)
        rflip = np.where((c.safe_op == CondOp.GT) | (c.safe_op == CondOp.GE), -1.0, 1.0)
        self.row_cond = rcond * rflip[:, None]
        self.row_rhs = c.safe_rhs * rflip
        self.row_strict = (c.safe_op == CondOp.LT) | (c.safe_op == CondOp.GT)
        self.row_act = np.repeat(np.arange(n_a), np.diff(c.safe_ptr))
        self.row_val = c.safe_row_val

        self.flags = np.zeros(self.n_slots, dtype=np.bool_)
        self.act_flags = self.flags[: self.lin0].reshape(n_a, SLOTS_PER_ACTUATOR)  # a view
        self.kept_slots = self.pred0 + self.kept

    def _rollout_map(self) -> tuple[F64, F64]:
        """(W, w0) with the kept sensors after steps 1..H equal to ``W @ [u; s] + w0``, laid out
        step-major (``H`` blocks of ``len(kept)`` rows)."""
        n_s, n_p, h = self.n_s, self.n_p, self.h
        n_x = self.n_a + n_s
        if self.horizon == 0 or len(self.kept) == 0:
            return np.zeros((0, n_x)), np.zeros(0)
        m = np.eye(n_s)
        m[self.pred_sensor] += h * self.gain_s  # y[sensor] + h * (A y) for modelled rows
        e = np.zeros((n_s, n_p))
        e[self.pred_sensor, np.arange(n_p)] = h  # + h * (c + B u) for modelled rows
        power = np.eye(n_s)  # M^k
        geometric = np.zeros((n_s, n_s))  # sum_{j<k} M^j
        w_s: list[F64] = []
        w_g: list[F64] = []
        for _ in range(self.horizon):
            geometric = geometric + power
            power = m @ power
            w_s.append(power[self.kept_sensor])
            w_g.append((geometric @ e)[self.kept_sensor])
        to_drive = np.vstack(w_g)  # maps g = c + B u
        w = np.hstack([to_drive @ self.gain_u, np.vstack(w_s)])
        w0: F64 = to_drive @ self.pred_const
        return w, w0

    # -- the check ----------------------------------------------------------------------------

    def check_into(self, cmd: F64, prev: F64, sens: F64, dt: float, out: F64,
                   viol: npt.NDArray[np.uint8]) -> int:
        """Write the command to apply into ``out`` and the violation mask into ``viol``;
        return the :class:`Action` code."""
        if np.isfinite(np.concatenate((cmd, prev, sens))).all():
            return self._check(cmd, prev, sens, dt, out, viol, exact=False)
        with np.errstate(invalid="ignore", over="ignore"):
            return self._check(cmd, prev, sens, dt, out, viol, exact=True)

    def _check(self, u: F64, p: F64, s: F64, dt: float, out: F64,
               viol: npt.NDArray[np.uint8], exact: bool) -> int:
        flags = self.flags
        flags[:] = False
        act = self.act_flags
        act[:, 1] = u < self.act_min
        act[:, 2] = u > self.act_max
        if self.any_allowed:
            act[:, 3] = self.has_allowed & ~(u[:, None] == self.allowed).any(axis=1)
        active = self._interlocks(s, exact)
        lo_b, hi_b = self._bounds(active)
        g = self._safe(s, lo_b, hi_b, exact)
        move = np.abs(u - p)
        # Negated so that NaN (an unknown previous value) violates; an unlimited actuator has
        # an infinite limit, which every finite move meets. A protective move (toward the
        # safe state) is never limited.
        protective = (u == g) | ((p <= u) & (u <= g)) | ((g <= u) & (u <= p))
        act[:, 4] = ~(move <= self.rate * dt) & ~protective
        act[:, 5] = ~(move <= self.step) & ~protective
        if exact:
            act[:, 4] &= self.rate_on
            act[:, 5] &= self.step_on
            finite = np.isfinite(u)
            act[~finite, 1:] = False  # a non-finite value is flagged as such, nothing else
            act[:, 0] = ~finite

        if self.n_i:
            beyond = (u > self.tight_hi) | (u < self.tight_lo)
            if exact:
                beyond |= self.tightened & np.isnan(u)
            flags[self.ilk0 : self.pred0] = active & beyond.any(axis=1)
        if self.any_coupled:
            self._coupled(u, s, exact, flags)

        action = int((self.policy * flags).max())
        out[:] = u
        if action == Action.CLAMP:
            clamped = self._clamp(u, p, dt, lo_b, hi_b, g)
            if clamped is None:
                flags[self.infeasible] = True
                action = max(action, int(self.policy[self.infeasible]))
            elif self.any_coupled:
                out[:] = clamped
                # The projection meets every per-actuator limit; the coupled constraints it
                # breaks escalate the verdict to at least reject.
                escalate = np.zeros_like(flags)
                self._coupled(clamped, s, exact, escalate)
                if escalate.any():
                    flags |= escalate
                    action = max(int((self.policy * flags).max()), int(Action.REJECT))
            else:
                out[:] = clamped
        viol[:] = flags
        return action

    def _interlocks(self, s: F64, exact: bool) -> BOOL:
        """Which interlocks hold; a NaN condition holds."""
        if not self.n_i:
            return np.zeros(0, dtype=np.bool_)
        lhs = _masked_matvec(self.cond, self.cond_used, s) if exact else self.cond @ s
        rhs = self.cond_rhs
        # "<" holds unless lhs >= rhs, "<=" unless lhs > rhs: NaN never fails to hold.
        holds: BOOL = ~((lhs > rhs) | (self.cond_strict & (lhs == rhs)))
        return holds

    def _bounds(self, active: BOOL) -> tuple[F64, F64]:
        """Each actuator's [min, max] tightened by the holding interlocks."""
        lo_b: F64 = np.maximum(self.act_min, self.tight_lo[active].max(axis=0, initial=-np.inf))
        hi_b: F64 = np.minimum(self.act_max, self.tight_hi[active].min(axis=0, initial=np.inf))
        return lo_b, hi_b

    def _safe(self, s: F64, lo_b: F64, hi_b: F64, exact: bool) -> F64:
        """The effective safe state (the reference's ``_safe``)."""
        g = self.safe_val.copy()
        if self.n_rows:
            lhs = (_masked_matvec(self.row_cond, self.row_used, s) if exact
                   else self.row_cond @ s)
            holds = ~((lhs > self.row_rhs) | (self.row_strict & (lhs == self.row_rhs)))
            first = np.flatnonzero(holds)[::-1]  # assigned last-to-first: the first row wins
            for k in first.tolist():
                g[self.row_act[k]] = self.row_val[k]
        ok = lo_b <= hi_b
        g = np.where(ok & (g < lo_b), lo_b, g)
        g = np.where(ok & (g > hi_b), hi_b, g)
        if self.any_allowed:
            table = self.allowed
            off = ok & self.has_allowed & np.isfinite(g) & ~(g[:, None] == table).any(axis=1)
            if off.any():
                inside = (table >= lo_b[:, None]) & (table <= hi_b[:, None])
                dist = np.where(inside, np.abs(table - g[:, None]), np.inf)
                nearest = table[self.arange_a, dist.argmin(axis=1)]
                g = np.where(off & inside.any(axis=1), nearest, g)
        return g

    def _coupled(self, u: F64, s: F64, exact: bool, flags: BOOL) -> None:
        """Set the flags of the linear rows and prediction rows that command ``u`` violates."""
        lin = flags[self.lin0 : self.ilk0]
        if exact:
            x = np.concatenate((u, s))
            lin[:] = ~(_masked_matvec(self.lin, self.lin_used, x) <= self.lin_rhs)
            flags[self.pred0 : self.infeasible] = self._roll(u, s)
            return
        z = self.coupled @ np.concatenate((u, s))
        lin[:] = ~(z[: self.n_l] <= self.lin_rhs)
        if len(self.kept):
            traj = (z[self.n_l :] + self.w0).reshape(self.horizon, len(self.kept))
            y0 = s[self.kept_sensor]
            # A sensor already outside may not get further outside than it is now (all values
            # are finite on this path, so min/max are the reference's conditionals).
            lo = np.minimum(self.kept_lo, y0)
            hi = np.maximum(self.kept_hi, y0)
            flags[self.kept_slots] = ~((lo <= traj) & (traj <= hi)).all(axis=0)

    def _roll(self, u: F64, s: F64) -> BOOL:
        """The prediction stepped explicitly, multiplying only used entries (non-finite path)."""
        if self.n_p == 0:
            return np.zeros(0, dtype=np.bool_)
        y = s.copy()
        y0 = s[self.pred_sensor]
        drive = self.pred_const + _masked_matvec(self.gain_u, self.gain_u_used, u)
        lo = np.where(y0 >= self.keep_lo, self.keep_lo, y0)
        hi = np.where(y0 <= self.keep_hi, self.keep_hi, y0)
        bad: BOOL = self.keep_on & ~np.isfinite(y0)
        for _ in range(self.horizon):
            nxt = y0 + self.h * (drive + _masked_matvec(self.gain_s, self.gain_s_used, y))
            y[self.pred_sensor] = nxt
            y0 = nxt
            bad |= self.keep_on & ~((lo <= nxt) & (nxt <= hi))
        return bad

    def _clamp(self, u: F64, p: F64, dt: float, lo_b: F64, hi_b: F64, g: F64) -> F64 | None:
        """The projection of a clamp verdict, or None when no command meets every limit."""
        if not np.isfinite(u).all():
            return None
        limited = self.limited
        known = np.isfinite(p)
        if not (known | np.isfinite(g))[limited].all():
            return None
        rate_dt = self.rate * dt
        r = np.minimum(rate_dt, self.step)
        with np.errstate(invalid="ignore"):
            # The move window, widened to reach the safe state; from an unknown position,
            # the safe state only.
            below = np.where(known, p - r, g)
            above = np.where(known, p + r, g)
            below = np.where(known & (g < below), g, below)
            above = np.where(known & (g > above), g, above)
        lo = np.where(limited & (below > lo_b), below, lo_b)
        hi = np.where(limited & (above < hi_b), above, hi_b)
        if not (lo <= hi).all():
            return None
        v = np.clip(u, lo, hi)
        if self.any_allowed:
            table = self.allowed
            inside = (table >= lo[:, None]) & (table <= hi[:, None])
            dist = np.where(inside, np.abs(table - v[:, None]), np.inf)
            if (self.has_allowed & ~inside.any(axis=1)).any():
                return None
            nearest = table[self.arange_a, dist.argmin(axis=1)]  # first minimum: ties to lower
            v = np.where(self.has_allowed, nearest, v)
        # p -/+ r are rounded: step the offending values toward p an ulp at a time until they
        # pass the very tests the check applies (same rule as the reference).
        nudged = np.zeros(self.n_a, dtype=np.bool_)
        for attempt in range(_NUDGES + 1):
            move = np.abs(v - p)
            protective = (v == g) | ((p <= v) & (v <= g)) | ((g <= v) & (v <= p))
            outside = limited & ~(((move <= rate_dt) & (move <= self.step)) | protective)
            if not outside.any():
                break
            if attempt == _NUDGES:
                return None
            v = np.where(outside, np.nextafter(v, p), v)
            nudged |= outside
        if nudged.any():
            ok = (v >= lo_b) & (v <= hi_b)
            if self.any_allowed:
                ok &= ~self.has_allowed | (v[:, None] == self.allowed).any(axis=1)
            if not ok[nudged].all():
                return None
        return v

    # -- for tests ----------------------------------------------------------------------------

    def boundary_margin(self, u: F64, s: F64) -> float:
        """Smallest relative distance of a summed quantity from its threshold for command ``u``.

        Covers linear rows and interlock conditions of two or more terms (one product rounds
        alike everywhere) and every predicted kept value, each measured
        as ``|value - threshold| / (1 + sum of |terms|)``; quantities that are not finite are
        skipped (NaN and infinity decide the same way in any summation order). Below about
        ``1e-12`` the dense products here may decide differently from the reference's
        term-by-term sums; the tests compare only cases above a margin.
        """
        with np.errstate(invalid="ignore", over="ignore"):
            x = np.concatenate((u, s))
            ax = np.abs(x)
            # A row of one term is one product, rounded alike in any summation: exact.
            parts = [
                (np.abs(_masked_matvec(self.lin, self.lin_used, x) - self.lin_rhs)
                 / (1.0 + _masked_matvec(np.abs(self.lin), self.lin_used, ax)))[
                    self.lin_used.sum(axis=1) > 1],
                (np.abs(_masked_matvec(self.cond, self.cond_used, s) - self.cond_rhs)
                 / (1.0 + _masked_matvec(np.abs(self.cond), self.cond_used, np.abs(s))))[
                    self.cond_used.sum(axis=1) > 1],
            ]
            if self.n_p:
                y = s.copy()
                y0 = s[self.pred_sensor]
                lo = np.where(y0 >= self.keep_lo, self.keep_lo, y0)
                hi = np.where(y0 <= self.keep_hi, self.keep_hi, y0)
                drive = self.pred_const + _masked_matvec(self.gain_u, self.gain_u_used, u)
                scale = 1.0 + np.abs(self.pred_const) + _masked_matvec(
                    np.abs(self.gain_u), self.gain_u_used, np.abs(u))
                for _ in range(self.horizon):
                    ynorm = scale + np.abs(y0) + _masked_matvec(
                        np.abs(self.gain_s), self.gain_s_used, np.abs(y))
                    nxt = y0 + self.h * (drive + _masked_matvec(self.gain_s, self.gain_s_used, y))
                    y[self.pred_sensor] = nxt
                    y0 = nxt
                    gap = np.minimum(np.abs(nxt - lo), np.abs(nxt - hi)) / ynorm
                    parts.append(gap[self.keep_on])
            every = np.concatenate(parts)
            every = every[np.isfinite(every)]
        return float(every.min(initial=np.inf))

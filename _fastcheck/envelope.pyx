# cython: language_level=3
"""Compiled envelope check: the same algorithm as gateway/envelope/reference.py.

Keep the two in step: every floating-point operation here happens in the same order as there,
so the engines agree bit for bit (tests/envelope/test_engines_agree.py). The build sets
-ffp-contract=off so that no multiply-add is fused into an FMA with a different rounding.

Limits are acquired once into typed memoryviews held by the cdef class. Per call, the arguments
are validated with the numpy C API and read through raw pointers: acquiring four typed
memoryviews per call costs several hundred nanoseconds, more than the whole bounds+rate check.
"""

cimport cython
import numpy as np
cimport numpy as cnp
from libc.math cimport INFINITY, NAN, fabs, isfinite, nextafter
from libc.string cimport memset

cnp.import_array()

cdef enum:
    SLOTS_PER_ACTUATOR = 6
    NUDGES = 4

cpdef enum Action:
    OK = 0
    CLAMP = 1
    REJECT = 2
    TRIP = 3

cpdef enum CondOp:
    LT = 0
    LE = 1
    GT = 2
    GE = 3


cdef inline const double* _vec(object a, Py_ssize_t n, str name) except NULL:
    """Validate a 1-D float64 C-contiguous array of length n; return its data pointer."""
    if not cnp.PyArray_Check(a):
        raise ValueError(f"{name} must be a numpy array of float64, not {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT64:
        raise ValueError(f"{name} must have dtype float64, not {arr.dtype}")
    if cnp.PyArray_NDIM(arr) != 1:
        raise ValueError(f"{name} must be 1-D, not {cnp.PyArray_NDIM(arr)}-D")
    if cnp.PyArray_DIM(arr, 0) != n:
        raise ValueError(f"{name} must have length {n}, not {cnp.PyArray_DIM(arr, 0)}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be C-contiguous")
    return <const double*>cnp.PyArray_DATA(arr)


cdef inline void* _out(object a, int typenum, Py_ssize_t n, str name) except NULL:
    if not cnp.PyArray_Check(a):
        raise ValueError(f"{name} must be a numpy array, not {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum:
        raise ValueError(f"{name} has the wrong dtype {arr.dtype}")
    if cnp.PyArray_NDIM(arr) != 1 or cnp.PyArray_DIM(arr, 0) != n:
        raise ValueError(f"{name} must be 1-D of length {n}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} must be C-contiguous and writeable")
    return cnp.PyArray_DATA(arr)


cdef inline double _dt(double dt) except? -1.0:
    if not (isfinite(dt) and dt > 0.0):
        raise ValueError(f"dt must be finite and > 0 seconds, not {dt}")
    return dt


@cython.final
cdef class Kernel:
    """Checks commands against one compiled envelope (see gateway/envelope/compiled.py)."""

    cdef readonly Py_ssize_t n_a, n_s, n_slots, n_l, n_i, n_t, n_p, horizon
    cdef readonly str engine
    cdef Py_ssize_t lin0, ilk0, pred0, infeasible
    cdef double pred_step
    cdef const unsigned char[::1] policy
    cdef const double[::1] act_min, act_max, act_rate, act_step, allowed_val
    cdef const Py_ssize_t[::1] allowed_ptr
    cdef const Py_ssize_t[::1] lin_ptr, lin_idx
    cdef const double[::1] lin_coef, lin_rhs
    cdef const Py_ssize_t[::1] ilk_ptr, ilk_idx, tgt_ilk, tgt_act
    cdef const double[::1] ilk_coef, ilk_rhs, tgt_val
    cdef const unsigned char[::1] ilk_op, tgt_upper, keep_on
    cdef const Py_ssize_t[::1] pred_sensor, pred_u_ptr, pred_u_idx, pred_s_ptr, pred_s_idx
    cdef const double[::1] pred_u_coef, pred_s_coef, pred_const, keep_lo, keep_hi
    cdef const Py_ssize_t[::1] safe_ptr, safe_cptr, safe_cidx
    cdef const double[::1] safe_val, safe_ccoef, safe_rhs, safe_row_val
    cdef const unsigned char[::1] safe_op
    # Scratch, owned by this kernel: a Kernel is not shared between threads.
    cdef double[::1] lo_b, hi_b, g, y, nxt, drive, lo_eff, hi_eff
    cdef unsigned char[::1] active, bad, flags, feasible
    cdef double[::1] clamped

    def __init__(self, c):
        import numpy as np
        self.engine = "cython"
        self.n_a = c.n_actuators
        self.n_s = c.n_sensors
        self.n_slots = c.n_slots
        self.n_l = len(c.lin_rhs)
        self.n_i = len(c.ilk_rhs)
        self.n_t = len(c.tgt_val)
        self.n_p = len(c.pred_sensor)
        self.horizon = c.pred_horizon
        self.pred_step = c.pred_step_s
        self.lin0 = c.lin_slot0
        self.ilk0 = c.ilk_slot0
        self.pred0 = c.pred_slot0
        self.infeasible = c.infeasible_slot
        self.policy = c.slot_policy
        self.act_min = c.act_min
        self.act_max = c.act_max
        self.act_rate = c.act_rate
        self.act_step = c.act_step
        self.allowed_ptr = c.allowed_ptr
        self.allowed_val = c.allowed_val
        self.lin_ptr = c.lin_ptr
        self.lin_idx = c.lin_idx
        self.lin_coef = c.lin_coef
        self.lin_rhs = c.lin_rhs
        self.ilk_ptr = c.ilk_ptr
        self.ilk_idx = c.ilk_idx
        self.ilk_coef = c.ilk_coef
        self.ilk_rhs = c.ilk_rhs
        self.ilk_op = c.ilk_op
        self.tgt_ilk = c.tgt_ilk
        self.tgt_act = c.tgt_act
        self.tgt_upper = c.tgt_upper
        self.tgt_val = c.tgt_val
        self.pred_sensor = c.pred_sensor
        self.pred_u_ptr = c.pred_u_ptr
        self.pred_u_idx = c.pred_u_idx
        self.pred_u_coef = c.pred_u_coef
        self.pred_s_ptr = c.pred_s_ptr
        self.pred_s_idx = c.pred_s_idx
        self.pred_s_coef = c.pred_s_coef
        self.pred_const = c.pred_const
        self.keep_on = c.keep_on
        self.keep_lo = c.keep_lo
        self.keep_hi = c.keep_hi
        self.safe_val = c.safe_val
        self.safe_ptr = c.safe_ptr
        self.safe_cptr = c.safe_cptr
        self.safe_cidx = c.safe_cidx
        self.safe_ccoef = c.safe_ccoef
        self.safe_op = c.safe_op
        self.safe_rhs = c.safe_rhs
        self.safe_row_val = c.safe_row_val
        # Buffers get at least one element so that &buf[0] is always valid.
        self.lo_b = np.empty(max(self.n_a, 1))
        self.hi_b = np.empty(max(self.n_a, 1))
        self.g = np.empty(max(self.n_a, 1))
        self.clamped = np.empty(max(self.n_a, 1))
        self.y = np.empty(max(self.n_s, 1))
        self.nxt = np.empty(max(self.n_p, 1))
        self.drive = np.empty(max(self.n_p, 1))
        self.lo_eff = np.empty(max(self.n_p, 1))
        self.hi_eff = np.empty(max(self.n_p, 1))
        self.active = np.zeros(max(self.n_i, 1), dtype=np.uint8)
        self.bad = np.zeros(max(self.n_p, 1), dtype=np.uint8)
        self.flags = np.zeros(max(self.n_slots, 1), dtype=np.uint8)
        self.feasible = np.zeros(max(self.n_a, 1), dtype=np.uint8)

    # ---------------------------------------------------------------- Python entry points

    def check_into(self, command, previous, sensors, double dt, out, viol):
        """Check ``cmd``; write the command to apply (or a copy of ``cmd``) into ``out`` and the
        violation mask into ``viol``; return the action code. Raises ValueError on bad
        arguments."""
        cdef const double* u = _vec(command, self.n_a, "command")
        cdef const double* p = _vec(previous, self.n_a, "previous")
        cdef const double* s = _vec(sensors, self.n_s, "sensors")
        cdef double* o = <double*>_out(out, cnp.NPY_FLOAT64, self.n_a, "out")
        cdef unsigned char* f = <unsigned char*>_out(viol, cnp.NPY_UINT8, self.n_slots, "viol")
        return self._check(u, p, s, _dt(dt), o, f)

    def project_into(self, command, previous, sensors, double dt, out, feasible):
        """Project ``cmd`` per actuator into bounds, holding interlocks' tightenings, the
        rate/step window and the allowed values; write it into ``out`` and 1/0 per actuator
        into ``feasible``; return how many actuators have no feasible value (those keep their
        proposed value in ``out``)."""
        cdef const double* u = _vec(command, self.n_a, "command")
        cdef const double* p = _vec(previous, self.n_a, "previous")
        cdef const double* s = _vec(sensors, self.n_s, "sensors")
        cdef double* o = <double*>_out(out, cnp.NPY_FLOAT64, self.n_a, "out")
        cdef unsigned char* m = <unsigned char*>_out(feasible, cnp.NPY_UINT8, self.n_a,
                                                     "feasible")
        cdef Py_ssize_t i, bad = 0
        _dt(dt)
        self._interlocks(s)
        self._bounds()
        self._safe(s)
        self._clamp(u, p, dt, o, m)
        for i in range(self.n_a):
            bad += m[i] == 0
        return bad

    def safe_into(self, sensors, out):
        """Write the effective safe state for ``sensors`` into ``out`` (see the reference)."""
        cdef const double* s = _vec(sensors, self.n_s, "sensors")
        cdef double* o = <double*>_out(out, cnp.NPY_FLOAT64, self.n_a, "out")
        cdef Py_ssize_t i
        self._interlocks(s)
        self._bounds()
        self._safe(s)
        for i in range(self.n_a):
            o[i] = self.g[i]

    def check_batch(self, cmds, prev0, sens, double dt, out, actions, counts):
        """Check a stream of commands (rows); the previous command of row k is the command
        applied at row k-1 (rejected rows leave it unchanged). Writes ``out`` (rows), one action
        per row and, per slot, how many rows violated it. Releases the GIL."""
        cdef const double[:, ::1] u2 = cmds
        cdef const double[:, ::1] s2 = sens
        cdef double[:, ::1] o2 = out
        cdef signed char[::1] acts = actions
        cdef long long[::1] cnt = counts
        cdef const double* p0 = _vec(prev0, self.n_a, "previous")
        cdef Py_ssize_t n = u2.shape[0], k, j
        if u2.shape[1] != self.n_a or o2.shape[0] != n or o2.shape[1] != self.n_a:
            raise ValueError(f"commands and out must have shape (n, {self.n_a})")
        if s2.shape[0] != n or s2.shape[1] != self.n_s:
            raise ValueError(f"sensors must have shape ({n}, {self.n_s})")
        if acts.shape[0] != n or cnt.shape[0] != self.n_slots:
            raise ValueError("actions must have one entry per row and counts one per slot")
        _dt(dt)
        if n == 0:
            cnt[:] = 0
            return
        cdef double[::1] prev = np.empty(max(self.n_a, 1))
        cdef unsigned char* f = &self.flags[0]
        cdef int action
        cdef const double* pp = p0
        for j in range(self.n_slots):
            cnt[j] = 0
        with nogil:
            for k in range(n):
                action = self._check(&u2[k, 0] if self.n_a else p0, pp,
                                     &s2[k, 0] if self.n_s else p0, dt,
                                     &o2[k, 0] if self.n_a else &prev[0], f)
                acts[k] = <signed char>action
                if action != OK:  # an OK verdict flags nothing
                    for j in range(self.n_slots):
                        cnt[j] += f[j]
                if action <= CLAMP and self.n_a:
                    pp = &o2[k, 0]

    # ---------------------------------------------------------------- the algorithm

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _check(self, const double* u, const double* p, const double* s, double dt,
                    double* out, unsigned char* flags) noexcept nogil:
        cdef int action = OK
        cdef Py_ssize_t i, k, t, base, j, a, n_a = self.n_a
        cdef double v, rate, step, val, pi, gi
        cdef bint allowed_ok
        # Local pointers: writes through `flags` (unsigned char*) may alias anything, so
        # without them the compiler reloads every memoryview field on each iteration.
        cdef const double* amin = &self.act_min[0] if n_a else NULL
        cdef const double* amax = &self.act_max[0] if n_a else NULL
        cdef const double* arate = &self.act_rate[0] if n_a else NULL
        cdef const double* astep = &self.act_step[0] if n_a else NULL
        cdef const Py_ssize_t* aptr = &self.allowed_ptr[0]
        memset(flags, 0, self.n_slots)
        if self.n_i:
            self._interlocks(s)
        self._bounds()
        self._safe(s)
        for i in range(n_a):
            v = u[i]
            base = SLOTS_PER_ACTUATOR * i
            if not isfinite(v):
                action = self._flag(flags, base, action)
                continue
            if not (v >= amin[i]):
                action = self._flag(flags, base + 1, action)
            if not (v <= amax[i]):
                action = self._flag(flags, base + 2, action)
            if aptr[i + 1] > aptr[i]:
                allowed_ok = False
                for j in range(aptr[i], aptr[i + 1]):
                    if v == self.allowed_val[j]:
                        allowed_ok = True
                        break
                if not allowed_ok:
                    action = self._flag(flags, base + 3, action)
            rate = arate[i]
            step = astep[i]
            if rate != INFINITY or step != INFINITY:
                pi = p[i]
                gi = self.g[i]
                # A protective move (toward the safe state) is never rate or step limited.
                if not (v == gi or (pi <= v and v <= gi) or (gi <= v and v <= pi)):
                    if rate != INFINITY and not (fabs(v - pi) <= rate * dt):
                        action = self._flag(flags, base + 4, action)
                    if step != INFINITY and not (fabs(v - pi) <= step):
                        action = self._flag(flags, base + 5, action)
        for t in range(self.n_t):
            k = self.tgt_ilk[t]
            if self.active[k]:
                v = u[self.tgt_act[t]]
                val = self.tgt_val[t]
                if (not (v <= val)) if self.tgt_upper[t] else (not (v >= val)):
                    action = self._flag(flags, self.ilk0 + k, action)
        if self.n_l:
            action = self._linear(u, s, flags, action, False)
        if self.n_p:
            action = self._predict(u, s, flags, action, False)
        if action != CLAMP:
            for i in range(n_a):
                out[i] = u[i]
            return action
        # A clamp-only verdict: project, and escalate if some actuator has no feasible value.
        if not self._clamp(u, p, dt, out, &self.feasible[0]):
            action = self._flag(flags, self.infeasible, action)
            for i in range(n_a):
                out[i] = u[i]
            return action
        action = self._linear(out, s, flags, action, True)
        action = self._predict(out, s, flags, action, True)
        return action

    cdef inline int _flag(self, unsigned char* flags, Py_ssize_t slot, int action) noexcept nogil:
        flags[slot] = 1
        if self.policy[slot] > action:
            return self.policy[slot]
        return action

    cdef inline int _escalate(self, unsigned char* flags, Py_ssize_t slot, int action
                              ) noexcept nogil:
        action = self._flag(flags, slot, action)
        if action < REJECT:
            action = REJECT
        return action

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline bint _holds(self, Py_ssize_t j0, Py_ssize_t j1, const Py_ssize_t* idx,
                            const double* coef, int op, double rhs, const double* s
                            ) noexcept nogil:
        """A condition sum(coef * s[idx]) (op) rhs; NaN makes it hold."""
        cdef Py_ssize_t j
        cdef double lhs = 0.0
        for j in range(j0, j1):
            lhs += coef[j] * s[idx[j]]
        if op == LT:
            return not (lhs >= rhs)
        elif op == LE:
            return not (lhs > rhs)
        elif op == GT:
            return not (lhs <= rhs)
        return not (lhs < rhs)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _interlocks(self, const double* s) noexcept nogil:
        cdef Py_ssize_t k
        # Conditions always have terms when there are any; never take &x[0] of an empty array.
        cdef const Py_ssize_t* idx = &self.ilk_idx[0] if self.ilk_idx.shape[0] else NULL
        cdef const double* coef = &self.ilk_coef[0] if self.ilk_coef.shape[0] else NULL
        for k in range(self.n_i):
            self.active[k] = self._holds(self.ilk_ptr[k], self.ilk_ptr[k + 1], idx, coef,
                                         self.ilk_op[k], self.ilk_rhs[k], s)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _bounds(self) noexcept nogil:
        """lo_b/hi_b: each actuator's [min, max] tightened by the holding interlocks."""
        cdef Py_ssize_t i, t, a
        cdef double val
        for i in range(self.n_a):
            self.lo_b[i] = self.act_min[i]
            self.hi_b[i] = self.act_max[i]
        for t in range(self.n_t):
            if self.active[self.tgt_ilk[t]]:
                a = self.tgt_act[t]
                val = self.tgt_val[t]
                if self.tgt_upper[t]:
                    if val < self.hi_b[a]:
                        self.hi_b[a] = val
                elif val > self.lo_b[a]:
                    self.lo_b[a] = val

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline double _nearest(self, Py_ssize_t i, double v, double lo, double hi,
                                bint* found) noexcept nogil:
        """The allowed value of actuator i in [lo, hi] nearest to v (the lower on a tie);
        *found is False when there is none (or v is NaN)."""
        cdef Py_ssize_t j
        cdef double best = NAN, best_d = INFINITY, d, val
        for j in range(self.allowed_ptr[i], self.allowed_ptr[i + 1]):
            val = self.allowed_val[j]
            if val >= lo and val <= hi:
                d = fabs(val - v)
                if d < best_d:
                    best_d = d
                    best = val
        found[0] = best_d != INFINITY
        return best

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _safe(self, const double* s) noexcept nogil:
        """g: the effective safe state (the reference's _safe), from lo_b/hi_b."""
        cdef Py_ssize_t i, e, j
        cdef double v, lo, hi, best
        cdef bint found
        cdef const Py_ssize_t* idx = &self.safe_cidx[0] if self.safe_cidx.shape[0] else NULL
        cdef const double* coef = &self.safe_ccoef[0] if self.safe_ccoef.shape[0] else NULL
        for i in range(self.n_a):
            v = self.safe_val[i]
            for e in range(self.safe_ptr[i], self.safe_ptr[i + 1]):
                if self._holds(self.safe_cptr[e], self.safe_cptr[e + 1], idx, coef,
                               self.safe_op[e], self.safe_rhs[e], s):
                    v = self.safe_row_val[e]
                    break
            lo = self.lo_b[i]
            hi = self.hi_b[i]
            if lo <= hi:
                if v < lo:
                    v = lo
                if v > hi:
                    v = hi
                if self.allowed_ptr[i + 1] > self.allowed_ptr[i]:
                    best = self._nearest(i, v, lo, hi, &found)
                    if found:
                        v = best
            self.g[i] = v

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _linear(self, const double* u, const double* s, unsigned char* flags, int action,
                     bint escalate) noexcept nogil:
        cdef Py_ssize_t r, j, idx, n_a = self.n_a
        cdef double acc
        cdef const Py_ssize_t* ptr = &self.lin_ptr[0]
        cdef const Py_ssize_t* lidx = &self.lin_idx[0]
        cdef const double* coef = &self.lin_coef[0]
        cdef const double* rhs = &self.lin_rhs[0]
        for r in range(self.n_l):
            acc = 0.0
            for j in range(ptr[r], ptr[r + 1]):
                idx = lidx[j]
                acc += coef[j] * (u[idx] if idx < n_a else s[idx - n_a])
            if not (acc <= rhs[r]):
                if escalate:
                    action = self._escalate(flags, self.lin0 + r, action)
                else:
                    action = self._flag(flags, self.lin0 + r, action)
        return action

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _predict(self, const double* u, const double* s, unsigned char* flags, int action,
                      bint escalate) noexcept nogil:
        if self.n_p == 0:
            return action
        cdef Py_ssize_t q, j, h, sensor, n_p = self.n_p
        cdef double d, y0, lo, hi, x
        cdef double* y = &self.y[0]
        cdef double* nxt = &self.nxt[0]
        cdef double* drive = &self.drive[0]
        cdef const Py_ssize_t* sptr = &self.pred_s_ptr[0]
        # A model may have no sensor terms at all: never take &x[0] of an empty array.
        cdef const Py_ssize_t* sidx = &self.pred_s_idx[0] if self.pred_s_idx.shape[0] else NULL
        cdef const double* scoef = &self.pred_s_coef[0] if self.pred_s_coef.shape[0] else NULL
        cdef const Py_ssize_t* psens = &self.pred_sensor[0]
        cdef double step_s = self.pred_step
        for q in range(self.n_p):
            d = self.pred_const[q]
            for j in range(self.pred_u_ptr[q], self.pred_u_ptr[q + 1]):
                d += self.pred_u_coef[j] * u[self.pred_u_idx[j]]
            self.drive[q] = d
            y0 = s[self.pred_sensor[q]]
            self.bad[q] = self.keep_on[q] and not isfinite(y0)
            lo = self.keep_lo[q]
            hi = self.keep_hi[q]
            self.lo_eff[q] = lo if y0 >= lo else y0
            self.hi_eff[q] = hi if y0 <= hi else y0
        for j in range(self.n_s):
            y[j] = s[j]
        for h in range(self.horizon):
            for q in range(n_p):
                d = drive[q]
                for j in range(sptr[q], sptr[q + 1]):
                    d += scoef[j] * y[sidx[j]]
                nxt[q] = y[psens[q]] + step_s * d
            for q in range(n_p):
                x = nxt[q]
                y[psens[q]] = x
                if self.keep_on[q] and not self.bad[q] and not (
                        self.lo_eff[q] <= x and x <= self.hi_eff[q]):
                    self.bad[q] = 1
        for q in range(self.n_p):
            if self.bad[q]:
                if escalate:
                    action = self._escalate(flags, self.pred0 + q, action)
                else:
                    action = self._flag(flags, self.pred0 + q, action)
        return action

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef bint _clamp(self, const double* u, const double* p, double dt, double* out,
                     unsigned char* feasible) noexcept nogil:
        """Project each actuator into its feasible set (see the reference's _clamp); return
        True when every actuator has one. Infeasible actuators keep their proposed value."""
        cdef Py_ssize_t i
        cdef bint all_ok = True
        for i in range(self.n_a):
            out[i] = u[i]
            feasible[i] = 0
            # Every actuator is projected, also after an infeasible one (no short-circuit).
            if not self._project_one(i, u[i], p[i], dt, out, feasible):
                all_ok = False
        return all_ok

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef bint _project_one(self, Py_ssize_t i, double v, double pi, double dt, double* out,
                           unsigned char* feasible) noexcept nogil:
        cdef Py_ssize_t j, nudges
        cdef double lo, hi, rate_dt, step, r, best, best_d, d, val, gi, w_lo, w_hi
        cdef bint limited, found
        if not isfinite(v):
            return False
        lo = self.lo_b[i]
        hi = self.hi_b[i]
        rate_dt = self.act_rate[i] * dt
        step = self.act_step[i]
        limited = self.act_rate[i] != INFINITY or step != INFINITY
        gi = self.g[i]
        if limited:
            # The move window around pi, widened to reach the safe state.
            if isfinite(pi):
                r = rate_dt
                if step < r:
                    r = step
                w_lo = pi - r
                w_hi = pi + r
                if gi < w_lo:
                    w_lo = gi
                if gi > w_hi:
                    w_hi = gi
            elif isfinite(gi):
                w_lo = gi
                w_hi = gi
            else:
                return False
            if w_lo > lo:
                lo = w_lo
            if w_hi < hi:
                hi = w_hi
        if not (lo <= hi):
            return False
        if v < lo:
            v = lo
        if v > hi:
            v = hi
        if self.allowed_ptr[i + 1] > self.allowed_ptr[i]:
            best = self._nearest(i, v, lo, hi, &found)
            if not found:
                return False
            v = best
        if limited:
            nudges = 0
            while not ((fabs(v - pi) <= rate_dt and fabs(v - pi) <= step)
                       or v == gi or (pi <= v and v <= gi) or (gi <= v and v <= pi)):
                if nudges == NUDGES:
                    break
                v = nextafter(v, pi)
                nudges += 1
            if not ((fabs(v - pi) <= rate_dt and fabs(v - pi) <= step)
                    or v == gi or (pi <= v and v <= gi) or (gi <= v and v <= pi)):
                return False
            if nudges:
                if not (v >= self.lo_b[i] and v <= self.hi_b[i]):
                    return False
                if self.allowed_ptr[i + 1] > self.allowed_ptr[i]:
                    found = False
                    for j in range(self.allowed_ptr[i], self.allowed_ptr[i + 1]):
                        if v == self.allowed_val[j]:
                            found = True
                    if not found:
                        return False
        out[i] = v
        feasible[i] = 1
        return True

"""Trigger localisation: the input region where a suspect model departs from a known-good one.

A backdoored policy behaves like the good one almost everywhere and misbehaves in a small region
of its input space (a narrow band of one reading, a corner of two). :func:`localise` searches
the input box for the points where the two models' outputs differ by more than a tolerance, and
reports the region as one range per input, possibly as several disjoint boxes, with the evidence.

The search, all in batches (both models take ``[N, n_inputs]``):

1. the seeds, if any: rows of model inputs from the recording (the replay's divergent cycles
   are the best seeds: the operating points where the trigger really fired);
2. a global sweep of the box with a randomly shifted low-discrepancy (R_d, Kronecker) sequence,
   which also estimates the fraction of the box that diverges;
3. one-dimensional sweeps of each input across its whole range, through the box's centre and
   through seeds, which find narrow bands that a global sweep of a few inputs could miss;
4. refinement: from a divergent point, a fine sweep along each input through it, then bisection
   of each edge of the divergent run containing it, gives that input's range to ~1e-9 of its
   width. Divergent points outside the boxes found so far seed further refinements. A box
   that mostly agrees is dropped (its start was where two regions cross); boxes that share
   most of their volume merge (their hull), boxes that merely cross (two bands on two inputs)
   stay apart;
5. verification: uniform samples inside each box give the fraction that really diverges.

An input whose range is the whole box is unconstrained: the trigger does not depend on it.
Inputs and outputs are normalised exactly as the gateway does (see
:mod:`gateway.control.onnx_policy`), so ranges and differences are in engineering units.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import numpy.typing as npt

    from gateway.config.schema import Site
    from gateway.envelope.compiled import F64

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_TOLERANCE",
    "Localisation",
    "LocaliseError",
    "Normalisation",
    "Region",
    "localise",
    "site_input_box",
]

DEFAULT_TOLERANCE: Final = 1e-3
"""Engineering units of the outputs: a larger difference between the two models diverges."""
DEFAULT_BUDGET: Final = 200_000
"""Input rows evaluated (on each model) by one localisation."""

_BATCH: Final = 8192
_BISECT_REL: Final = 1e-9
_BISECT_MAX: Final = 64
_MAX_REFINED: Final = 32
_KEEP_POINTS: Final = 200_000
# A refined box is kept when at least this share of uniform samples in it diverges.
_KEEP_FRACTION: Final = 0.25

_ORT_ERRORS: Final[tuple[type[Exception], ...]] = (
    *(obj for obj in vars(_ort_state).values()
      if isinstance(obj, type) and issubclass(obj, Exception)),
    RuntimeError,
    ValueError,
)


class LocaliseError(ValueError):
    """Bad input: a model that cannot be loaded or does not fit the box or the normalisation,
    a bad box, bad seeds or settings. The message says which."""


@dataclass(frozen=True, slots=True)
class Normalisation:
    """The site's controller normalisation (``model_in = (x - input_offset) * input_scale``,
    ``y = model_out * output_scale + output_offset``), one value per input / output."""

    input_offset: tuple[float, ...]
    input_scale: tuple[float, ...]
    output_offset: tuple[float, ...]
    output_scale: tuple[float, ...]

    @classmethod
    def identity(cls, n_inputs: int, n_outputs: int) -> Normalisation:
        return cls((0.0,) * n_inputs, (1.0,) * n_inputs, (0.0,) * n_outputs, (1.0,) * n_outputs)

    @classmethod
    def of_site(cls, site: Site) -> Normalisation:
        """The controller section's normalisation (offsets 0 and scales 1 where not given)."""
        spec = site.controller
        n_in, n_out = len(spec.inputs), len(spec.outputs)
        return cls(spec.input_offset or (0.0,) * n_in, spec.input_scale or (1.0,) * n_in,
                   spec.output_offset or (0.0,) * n_out, spec.output_scale or (1.0,) * n_out)


def site_input_box(site: Site) -> tuple[tuple[float, float], ...]:
    """The range of each controller input of ``site``: a sensor's plausible range, an
    actuator's envelope limits. Raises :class:`LocaliseError` if the site's controller reads
    no inputs."""
    inputs = site.controller.inputs
    if not inputs:
        raise LocaliseError(f"site {site.site.name!r}: the controller reads no inputs")
    limits = {lim.actuator: lim for lim in site.envelope.limits}
    box: list[tuple[float, float]] = []
    for name in inputs:
        tag = site.tag(name)
        if name in limits:
            box.append((float(limits[name].min), float(limits[name].max)))
        elif tag.range_min is not None and tag.range_max is not None:
            box.append((float(tag.range_min), float(tag.range_max)))
        else:
            raise LocaliseError(f"input {name!r} has no range in the site file")
    return tuple(box)


@dataclass(frozen=True, slots=True)
class Region:
    """One box where the models diverge.

    ``ranges`` holds one ``(low, high)`` per input, engineering units; ``constrained[j]`` is
    False when input ``j``'s range is the whole search box (the trigger does not depend on it).
    ``points`` counts the divergent points of the search inside the box; ``samples`` the
    uniform verification samples drawn in it, ``fraction_divergent`` the fraction of them that
    diverged and ``max_difference`` the largest output difference seen in it.
    """

    ranges: tuple[tuple[float, float], ...]
    constrained: tuple[bool, ...]
    points: int
    samples: int
    fraction_divergent: float
    max_difference: float


@dataclass(frozen=True)
class Localisation:
    """What :func:`localise` found.

    ``found`` is True when some input diverged. ``ranges`` is the hull of the regions, one
    ``(low, high)`` per input (None when nothing diverged). ``samples`` counts the rows run
    through each model; ``divergent`` how many diverged (seeds, sweeps and refinement alike,
    so not an estimate of volume); ``sweep_fraction_divergent`` the fraction of the uniform
    global sweep that diverged (an estimate of the region's share of the box).
    """

    input_names: tuple[str, ...]
    input_box: tuple[tuple[float, float], ...]
    tolerance: float
    found: bool
    ranges: tuple[tuple[float, float], ...] | None
    constrained: tuple[bool, ...]
    regions: tuple[Region, ...]
    samples: int
    divergent: int
    sweep_samples: int
    sweep_fraction_divergent: float
    max_difference: float
    max_difference_at: tuple[float, ...] | None
    suspect_sha256: str
    reference_sha256: str
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        def region(r: Region) -> dict[str, Any]:
            return {"ranges": {n: list(rg) for n, rg in zip(self.input_names, r.ranges,
                                                            strict=True)},
                    "constrained": [n for n, c in zip(self.input_names, r.constrained,
                                                      strict=True) if c],
                    "points": r.points, "samples": r.samples,
                    "fraction_divergent": r.fraction_divergent,
                    "max_difference": _num(r.max_difference)}

        return {
            "found": self.found, "inputs": list(self.input_names),
            "input_box": {n: list(b) for n, b in zip(self.input_names, self.input_box,
                                                     strict=True)},
            "tolerance": self.tolerance,
            "ranges": None if self.ranges is None else {
                n: list(r) for n, r in zip(self.input_names, self.ranges, strict=True)},
            "constrained": [n for n, c in zip(self.input_names, self.constrained, strict=True)
                            if c],
            "regions": [region(r) for r in self.regions],
            "samples": self.samples, "divergent": self.divergent,
            "sweep_samples": self.sweep_samples,
            "sweep_fraction_divergent": self.sweep_fraction_divergent,
            "max_difference": _num(self.max_difference),
            "max_difference_at": None if self.max_difference_at is None else list(
                self.max_difference_at),
            "suspect_sha256": self.suspect_sha256, "reference_sha256": self.reference_sha256,
            "elapsed_s": self.elapsed_s,
        }


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)


# --------------------------------------------------------------------------------------------
# Models


class _Model:
    """One ONNX model run in batches with the gateway's normalisation."""

    def __init__(self, path: Path, norm: Normalisation, n_inputs: int) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LocaliseError(f"{path}: cannot read the model "
                                f"({exc.strerror or exc})") from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(data, options,
                                                 providers=["CPUExecutionProvider"])
        except _ORT_ERRORS as exc:
            raise LocaliseError(f"{path}: not a loadable ONNX model ({exc})") from None
        ins, outs = self._session.get_inputs(), self._session.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise LocaliseError(f"{path}: a policy has one input and one output, this model "
                                f"has {len(ins)} and {len(outs)}")
        shape = ins[0].shape
        if len(shape) != 2 or shape[1] != n_inputs:
            raise LocaliseError(f"{path}: model input has shape {shape}, "
                                f"[N, {n_inputs}] expected")
        self._batched = not (isinstance(shape[0], int) and shape[0] == 1)
        self._name = ins[0].name
        self._in_off = np.array(norm.input_offset, dtype=np.float64)
        self._in_scale = np.array(norm.input_scale, dtype=np.float64)
        self._out_off = np.array(norm.output_offset, dtype=np.float64)
        self._out_scale = np.array(norm.output_scale, dtype=np.float64)
        self.path = path

    def __call__(self, x: F64) -> F64:
        with np.errstate(over="ignore", invalid="ignore"):
            z = ((x - self._in_off) * self._in_scale).astype(np.float32)
        try:
            if self._batched:
                raw = self._session.run(None, {self._name: z})[0]
            else:
                raw = np.concatenate([self._session.run(None, {self._name: z[i:i + 1]})[0]
                                      for i in range(len(z))])
        except _ORT_ERRORS as exc:
            raise LocaliseError(f"{self.path}: the model failed to run ({exc})") from None
        raw = np.asarray(raw)
        if raw.ndim != 2 or raw.shape[0] != len(x) or raw.shape[1] != len(self._out_off):
            raise LocaliseError(f"{self.path}: model output has shape {raw.shape}, "
                                f"[N, {len(self._out_off)}] expected")
        with np.errstate(over="ignore", invalid="ignore"):
            out: F64 = raw.astype(np.float64) * self._out_scale + self._out_off
        return out


class _Search:
    """Evaluates both models on batches of points and keeps the evidence."""

    def __init__(self, suspect: _Model, reference: _Model, tolerance: float, budget: int
                 ) -> None:
        self.suspect = suspect
        self.reference = reference
        self.tolerance = tolerance
        self.budget = budget
        self.used = 0
        self.divergent = 0
        self.max_difference = 0.0
        self.max_at: F64 | None = None
        self._points: list[F64] = []
        self._diffs: list[F64] = []
        self._kept = 0

    @property
    def remaining(self) -> int:
        return max(self.budget - self.used, 0)

    def diff(self, x: F64) -> F64:
        """The largest output difference of each row (inf where only one side is finite)."""
        out = np.empty(len(x))
        for start in range(0, len(x), _BATCH):
            chunk = x[start:start + _BATCH]
            a, b = self.suspect(chunk), self.reference(chunk)
            with np.errstate(invalid="ignore"):
                d = np.abs(a - b)
            nan_a, nan_b = ~np.isfinite(a), ~np.isfinite(b)
            if nan_a.any() or nan_b.any():
                same = nan_a & nan_b & ((a == b) | (np.isnan(a) & np.isnan(b)))
                d = np.where(same, 0.0, np.where(nan_a | nan_b, math.inf, d))
            out[start:start + len(chunk)] = d.max(axis=1) if d.shape[1] else 0.0
        self.used += len(x)
        div = out > self.tolerance
        n_div = int(div.sum())
        if n_div:
            self.divergent += n_div
            k = int(np.argmax(out))
            if out[k] > self.max_difference or self.max_at is None:
                self.max_difference = float(out[k])
                self.max_at = x[k].copy()
            if self._kept < _KEEP_POINTS:
                self._points.append(x[div])
                self._diffs.append(out[div])
                self._kept += n_div
        return out

    def points(self) -> tuple[F64, F64]:
        if not self._points:
            return np.empty((0, 0)), np.empty(0)
        return np.concatenate(self._points), np.concatenate(self._diffs)


# --------------------------------------------------------------------------------------------


def localise(suspect: Path, reference: Path, input_box: Sequence[tuple[float, float]], *,
             normalisation: Normalisation | None = None, tolerance: float = DEFAULT_TOLERANCE,
             budget: int = DEFAULT_BUDGET, seeds: npt.ArrayLike | None = None,
             input_names: Sequence[str] | None = None, rng_seed: int = 0) -> Localisation:
    """Find where ``suspect``'s outputs differ from ``reference``'s by more than ``tolerance``.

    ``input_box`` holds one ``(low, high)`` per model input, engineering units, finite, with
    ``low <= high``. ``normalisation`` is the site's controller normalisation (identity when
    None). ``tolerance`` is in the outputs' engineering units (> 0 and finite). ``budget`` is
    roughly how many input rows are run through each model (>= 1000). ``seeds`` are rows of
    model inputs to start from (e.g. a replay's divergent inputs): non-finite rows are dropped,
    the others clipped into the box. ``rng_seed`` makes the search repeatable.

    Raises :class:`LocaliseError` for bad input (see the class).
    """
    t0 = time.perf_counter()
    box = np.array(input_box, dtype=np.float64)
    if box.ndim != 2 or box.shape[1] != 2 or len(box) == 0:
        raise LocaliseError("`input_box` must hold one (low, high) pair per input")
    if not np.isfinite(box).all() or (box[:, 0] > box[:, 1]).any():
        raise LocaliseError("`input_box` ranges must be finite with low <= high")
    n = len(box)
    names = tuple(input_names) if input_names is not None else tuple(
        f"input{j}" for j in range(n))
    if len(names) != n:
        raise LocaliseError(f"{len(names)} input names for {n} inputs")
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance > 0):
        raise LocaliseError(f"`tolerance` must be finite and > 0, got {tolerance!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1000:
        raise LocaliseError(f"`budget` must be an integer >= 1000, got {budget!r}")
    seed_rows = _seed_rows(seeds, box)
    if normalisation is None:
        probe = _Model(reference, Normalisation.identity(n, 0), n)
        n_out = probe._session.get_outputs()[0].shape[1]
        if not isinstance(n_out, int):
            raise LocaliseError(f"{reference}: the model's output width is not fixed")
        normalisation = Normalisation.identity(n, n_out)
    if len(normalisation.input_offset) != n or len(normalisation.input_scale) != n:
        raise LocaliseError(f"the normalisation has {len(normalisation.input_offset)} inputs, "
                            f"the box {n}")
    s_model = _Model(suspect, normalisation, n)
    r_model = _Model(reference, normalisation, n)
    search = _Search(s_model, r_model, float(tolerance), budget)
    rng = np.random.default_rng(rng_seed)
    lo, hi = box[:, 0], box[:, 1]
    width = hi - lo

    # 1. seeds
    if len(seed_rows):
        cap = max(budget // 10, 1)
        if len(seed_rows) > cap:
            seed_rows = seed_rows[rng.choice(len(seed_rows), cap, replace=False)]
        search.diff(seed_rows)
    # 2. global low-discrepancy sweep
    n_sweep = max(budget * 2 // 5, 256)
    sweep = lo + _rd_sequence(n_sweep, n, rng) * width
    sweep_diff = search.diff(sweep)
    sweep_fraction = float((sweep_diff > tolerance).mean())
    # 3. one-dimensional sweeps through the centre and through seeds
    anchors = [(lo + hi) / 2.0]
    if len(seed_rows):
        pick = rng.choice(len(seed_rows), min(len(seed_rows), 16), replace=False)
        anchors += [seed_rows[i] for i in pick]
    per_line = int(min(4097, max(65, (budget // 4) // (len(anchors) * n))))
    lines = [_line(a, j, lo[j], hi[j], per_line) for a in anchors for j in range(n)]
    search.diff(np.concatenate(lines))
    # 4. refinement of divergent clusters
    regions = _refine(search, lo, hi, rng)
    # 5. verification
    verified = _verify(search, regions, lo, hi, rng)
    points, diffs = search.points()
    out_regions = []
    for r_lo, r_hi, (count, fraction, worst) in verified:
        inside = (np.all((points >= r_lo) & (points <= r_hi), axis=1) if len(points)
                  else np.zeros(0, dtype=bool))
        if inside.any():
            worst = max(worst, float(diffs[inside].max()))
        constrained = tuple(bool(r_lo[j] > lo[j] or r_hi[j] < hi[j]) for j in range(n))
        out_regions.append(Region(
            tuple((float(r_lo[j]), float(r_hi[j])) for j in range(n)), constrained,
            int(inside.sum()), count, fraction, worst))
    found = search.divergent > 0
    ranges = None
    constrained_all: tuple[bool, ...] = (False,) * n
    if out_regions:
        hull_lo = np.min([r[0] for r in verified], axis=0)
        hull_hi = np.max([r[1] for r in verified], axis=0)
        ranges = tuple((float(hull_lo[j]), float(hull_hi[j])) for j in range(n))
        constrained_all = tuple(bool(hull_lo[j] > lo[j] or hull_hi[j] < hi[j])
                                for j in range(n))
    return Localisation(
        input_names=names, input_box=tuple((float(a), float(b)) for a, b in box),
        tolerance=float(tolerance), found=found, ranges=ranges, constrained=constrained_all,
        regions=tuple(out_regions), samples=search.used, divergent=search.divergent,
        sweep_samples=n_sweep, sweep_fraction_divergent=sweep_fraction,
        max_difference=search.max_difference,
        max_difference_at=None if search.max_at is None else tuple(search.max_at.tolist()),
        suspect_sha256=s_model.sha256, reference_sha256=r_model.sha256,
        elapsed_s=time.perf_counter() - t0)


def _seed_rows(seeds: npt.ArrayLike | None, box: F64) -> F64:
    if seeds is None:
        return np.empty((0, len(box)))
    try:
        rows = np.array(seeds, dtype=np.float64)
    except (TypeError, ValueError):
        raise LocaliseError("`seeds` must be rows of numbers") from None
    if rows.size == 0:
        return np.empty((0, len(box)))
    if rows.ndim != 2 or rows.shape[1] != len(box):
        raise LocaliseError(f"`seeds` must have shape (rows, {len(box)}), got {rows.shape}")
    rows = rows[np.isfinite(rows).all(axis=1)]
    clipped: F64 = np.clip(rows, box[:, 0], box[:, 1])
    return clipped


def _rd_sequence(count: int, dims: int, rng: np.random.Generator) -> F64:
    """``count`` points of the R_d low-discrepancy sequence in [0, 1)^dims, randomly shifted
    (Roberts 2018: alpha_j = phi_d^-(j+1), phi_d the root of x^(d+1) = x + 1)."""
    phi = 2.0
    for _ in range(64):
        phi = (1.0 + phi) ** (1.0 / (dims + 1))
    alpha = (1.0 / phi) ** np.arange(1, dims + 1)
    i = np.arange(1, count + 1, dtype=np.float64)[:, None]
    pts: F64 = np.mod(rng.random(dims) + i * alpha, 1.0)
    return pts


def _line(anchor: F64, j: int, low: float, high: float, count: int) -> F64:
    rows = np.repeat(anchor[None, :], count, axis=0)
    rows[:, j] = np.linspace(low, high, count)
    return rows


def _extent(search: _Search, p: F64, lo: F64, hi: F64, per_line: int) -> tuple[F64, F64]:
    """The divergent run containing ``p`` along each input, edges bisected; ``p`` diverges."""
    n = len(p)
    r_lo, r_hi = p.copy(), p.copy()
    # Brackets to bisect: (input, inner divergent value, outer non-divergent value, is_low).
    brackets: list[tuple[int, float, float, bool]] = []
    for j in range(n):
        if hi[j] <= lo[j]:
            continue
        grid = np.union1d(np.linspace(lo[j], hi[j], per_line), [p[j]])
        rows = np.repeat(p[None, :], len(grid), axis=0)
        rows[:, j] = grid
        div = search.diff(rows) > search.tolerance
        k = int(np.searchsorted(grid, p[j]))
        div[k] = True  # p itself diverges (a second evaluation gives the same answer)
        a = k
        while a > 0 and div[a - 1]:
            a -= 1
        b = k
        while b < len(grid) - 1 and div[b + 1]:
            b += 1
        r_lo[j], r_hi[j] = grid[a], grid[b]
        if a > 0:
            brackets.append((j, grid[a], grid[a - 1], True))
        if b < len(grid) - 1:
            brackets.append((j, grid[b], grid[b + 1], False))
    if brackets:
        dims = np.array([b[0] for b in brackets])
        inner = np.array([b[1] for b in brackets])
        outer = np.array([b[2] for b in brackets])
        tol = (hi - lo)[dims] * _BISECT_REL
        for _ in range(_BISECT_MAX):
            open_ = np.abs(outer - inner) > tol
            if not open_.any():
                break
            mid = (inner + outer) / 2.0
            rows = np.repeat(p[None, :], len(brackets), axis=0)
            rows[np.arange(len(brackets)), dims] = mid
            div = search.diff(rows) > search.tolerance
            inner = np.where(open_ & div, mid, inner)
            outer = np.where(open_ & ~div, mid, outer)
        for (j, _, _, is_low), edge in zip(brackets, inner.tolist(), strict=True):
            if is_low:
                r_lo[j] = edge
            else:
                r_hi[j] = edge
    return r_lo, r_hi


def _refine(search: _Search, lo: F64, hi: F64, rng: np.random.Generator
            ) -> list[tuple[F64, F64]]:
    """Boxes around the divergent points found so far (merged where they overlap).

    Start points are taken in random order among the points no box explains yet. A box whose
    samples mostly agree is dropped (its start lies where two regions cross: along each input
    the other region keeps it divergent, so its extent is the whole box); its start point
    counts as explained. Divergent points that no kept box explains end in one last box, their
    hull, so that a divergence found is always reported somewhere.
    """
    points, _ = search.points()
    if not len(points):
        return []
    n = len(lo)
    per_line = int(min(1025, max(65, search.remaining // (4 * n * _MAX_REFINED))))
    boxes: list[tuple[F64, F64]] = []
    covered = np.zeros(len(points), dtype=bool)
    order = rng.permutation(len(points))
    slack = (hi - lo) * 1e-12

    def inside(box: tuple[F64, F64]) -> npt.NDArray[np.bool_]:
        found: npt.NDArray[np.bool_] = np.all(
            (points >= box[0] - slack) & (points <= box[1] + slack), axis=1)
        return found

    for _ in range(_MAX_REFINED):
        left = order[~covered[order]]
        if not len(left) or search.remaining <= 0:
            break
        box = _extent(search, points[left[0]], lo, hi, per_line)
        sample = box[0] + rng.random((256, n)) * (box[1] - box[0])
        if float((search.diff(sample) > search.tolerance).mean()) >= _KEEP_FRACTION:
            boxes.append(box)
            covered |= inside(box)
        else:
            covered[left[0]] = True
    explained = np.zeros(len(points), dtype=bool)
    for box in boxes:
        explained |= inside(box)
    if not explained.all():
        rest = points[~explained]
        boxes.append((rest.min(axis=0), rest.max(axis=0)))
    return _merge(boxes, lo, hi)


def _overlap(a: tuple[F64, F64], b: tuple[F64, F64], span: F64) -> float:
    """The share of the smaller box's volume that lies in both (widths relative to ``span``,
    at least 1e-9, so that flat boxes compare too)."""
    inter = (np.minimum(a[1], b[1]) - np.maximum(a[0], b[0])) / span
    if (inter < 0).any():
        return 0.0
    floor = 1e-9
    log_inter = np.log(np.maximum(inter, floor)).sum()
    log_a = np.log(np.maximum((a[1] - a[0]) / span, floor)).sum()
    log_b = np.log(np.maximum((b[1] - b[0]) / span, floor)).sum()
    return float(np.exp(log_inter - min(log_a, log_b)))


def _merge(boxes: list[tuple[F64, F64]], lo: F64, hi: F64) -> list[tuple[F64, F64]]:
    """Merge boxes (into their hull) that share most of the smaller one's volume: several
    refinements of one blob-shaped region. Boxes that only cross, like two bands on different
    inputs, stay apart."""
    span = np.where(hi > lo, hi - lo, 1.0)
    merged = list(boxes)
    changed = True
    while changed:
        changed = False
        out: list[tuple[F64, F64]] = []
        for b_lo, b_hi in merged:
            for k, (o_lo, o_hi) in enumerate(out):
                if _overlap((b_lo, b_hi), (o_lo, o_hi), span) >= 0.5:
                    out[k] = (np.minimum(o_lo, b_lo), np.maximum(o_hi, b_hi))
                    changed = True
                    break
            else:
                out.append((b_lo, b_hi))
        merged = out
    return merged


def _verify(search: _Search, boxes: list[tuple[F64, F64]], lo: F64, hi: F64,
            rng: np.random.Generator) -> list[tuple[F64, F64, tuple[int, float, float]]]:
    out: list[tuple[F64, F64, tuple[int, float, float]]] = []
    for b_lo, b_hi in boxes:
        count = 2048
        rows = b_lo + rng.random((count, len(lo))) * (b_hi - b_lo)
        d = search.diff(rows)
        out.append((b_lo, b_hi, (count, float((d > search.tolerance).mean()), float(d.max()))))
    return out

"""Forensic replay: recorded cycles through the same supervisor code, offline, with any model.

:func:`replay` starts a fresh :class:`~gateway.supervisor.core.Supervisor` and feeds it the
recorded cycles in order: the operator's setpoints and write-backs made before each step, the
operator requests it applied, the snapshot, and the AI's proposal. The proposal is either the
recorded one (``model=None``: the live decisions must come out again bit for bit) or recomputed
by running ``model`` (any version of the policy) on the recorded model inputs, with the site's
normalisation, through :meth:`~gateway.control.onnx_policy.OnnxPolicy.infer_sync`; the canary
outputs are recomputed too on the cycles where the live run had them.

Replay is open loop: the plant's recorded response is not re-simulated, so once a replayed
decision differs from the recorded one, later cycles say what the supervisor *would* have
decided on the inputs that were really seen. Two things of the live run cannot be recomputed
offline and are taken from the recording: a deadline miss or a busy model (``deadline_missed``,
``busy``: timing, not the model's behaviour), and the proposals of cycles without model inputs
(an external controller's writes).

The result reports where the outputs diverge: the first divergence, the cycles whose proposal
differs beyond ``tolerance`` and the cycles whose decision differs, the largest proposal
difference per actuator, and the range of each model input over the cycles whose proposal
diverged (the rows themselves are kept as seeds for :func:`gateway.forensics.localise.localise`).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

import numpy as np

import gateway.envelope
from gateway.adapters import codec
from gateway.config.schema import ControllerKind, StartMode
from gateway.control.ai import AiWiring, onnx_policy_config
from gateway.control.onnx_policy import load_policy
from gateway.forensics.checkpoint import CheckpointError, restore, usable
from gateway.forensics.recorder import (
    Frame,
    Recording,
    RecordingError,
    SetpointChange,
    site_as_recorded,
)
from gateway.supervisor.core import Supervisor
from gateway.supervisor.decision import Proposal, ProposalAnomaly, Source
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode, RequestKind

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import numpy.typing as npt

    from gateway.config.schema import Site
    from gateway.control.onnx_policy import OnnxPolicy
    from gateway.envelope.compiled import F64
    from gateway.supervisor.decision import Decision
    from gateway.supervisor.detectors import CanaryCases
    from gateway.supervisor.events import Event

__all__ = [
    "DEFAULT_TOLERANCE",
    "CycleDivergence",
    "ReplayError",
    "ReplayResult",
    "replay",
    "replay_recording",
]

DEFAULT_TOLERANCE: Final = 1e-6
"""Engineering units: a proposal value further than this from the recorded one diverges."""

# How many per-cycle divergences a result keeps (the counts are always complete).
_KEEP_DIVERGENCES: Final = 1000
_TIMING: Final = frozenset({ProposalAnomaly.DEADLINE_MISSED, ProposalAnomaly.BUSY})
_DECISION_FIELDS: Final = ("mode", "command", "source", "sources", "verdict", "fallback",
                           "clamped", "events", "canary_due", "sensors", "dt_s")


class ReplayError(ValueError):
    """The recording cannot be replayed on this site (shapes differ, no frames, no model
    controller for ``model``), or the model cannot be loaded. The message says which."""


@dataclass(frozen=True, slots=True)
class CycleDivergence:
    """One cycle whose replay differs from the recording.

    ``proposal_diff`` is the largest difference of the proposal's values (engineering units;
    ``inf`` when one side had values and the other an anomaly or nothing, 0.0 when they agree).
    ``fields`` names the decision's fields that differ (empty when only the proposal does).
    """

    seq: int
    at_s: float
    proposal_diff: float
    fields: tuple[str, ...]


@dataclass(frozen=True)
class ReplayResult:
    """What a replay found. Times are the recording's ``now_s`` (seconds)."""

    cycles: int
    span_s: tuple[float, float]
    recomputed: bool
    model_sha256: str | None
    exact_start: bool
    tolerance: float
    identical: bool
    first_divergence_s: float | None
    first_proposal_divergence_s: float | None
    first_decision_divergence_s: float | None
    proposal_divergent_cycles: int
    decision_divergent_cycles: int
    mode_or_command_divergent_cycles: int
    field_divergences: dict[str, int]
    max_proposal_diff: dict[str, float]
    divergent_input_ranges: dict[str, tuple[float, float]]
    divergent_inputs: F64
    recorded_kept: int
    divergences: tuple[CycleDivergence, ...]
    decisions: tuple[Decision, ...] = field(repr=False)
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def diverged(self) -> bool:
        return self.first_divergence_s is not None

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.elapsed_s if self.elapsed_s > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (the first 100 divergent cycles; no decisions, no rows)."""

        def num(x: float | None) -> float | str | None:
            return x if x is None or math.isfinite(x) else repr(x)

        return {
            "cycles": self.cycles, "span_s": list(self.span_s), "recomputed": self.recomputed,
            "model_sha256": self.model_sha256, "exact_start": self.exact_start,
            "tolerance": self.tolerance, "identical": self.identical,
            "diverged": self.diverged, "first_divergence_s": self.first_divergence_s,
            "first_proposal_divergence_s": self.first_proposal_divergence_s,
            "first_decision_divergence_s": self.first_decision_divergence_s,
            "proposal_divergent_cycles": self.proposal_divergent_cycles,
            "decision_divergent_cycles": self.decision_divergent_cycles,
            "mode_or_command_divergent_cycles": self.mode_or_command_divergent_cycles,
            "field_divergences": self.field_divergences,
            "max_proposal_diff": {k: num(v) for k, v in self.max_proposal_diff.items()},
            "divergent_input_ranges": {k: list(v)
                                       for k, v in self.divergent_input_ranges.items()},
            "divergent_input_rows": len(self.divergent_inputs),
            "recorded_proposals_kept": self.recorded_kept,
            "divergences": [{"seq": d.seq, "at_s": d.at_s, "proposal_diff": num(d.proposal_diff),
                             "fields": list(d.fields)} for d in self.divergences[:100]],
            "elapsed_s": self.elapsed_s, "cycles_per_s": self.cycles_per_s,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------


def replay(site: Site, frames: Sequence[Frame], model: Path | None, *,
           engine: str | None = None, initial_command: npt.ArrayLike, start_s: float,
           canary: CanaryCases | None = None, tolerance: float = DEFAULT_TOLERANCE,
           exact_start: bool = True, keep_decisions: bool = True,
           checkpoint: dict[str, Any] | None = None) -> ReplayResult:
    """Run ``frames`` through a fresh supervisor for ``site`` and compare with the recording.

    ``initial_command`` and ``start_s`` (and ``canary``, the golden cases the live supervisor
    was given) must be those the live supervisor was built with for a bit-exact replay, and
    ``frames`` must then start at its first step (``seq == 0``). ``model`` None replays the
    recorded proposals; a path recomputes them with that model (its sha256 is not checked
    against the site's: any version can be replayed). ``engine`` picks the envelope engine.
    ``tolerance`` (engineering units, >= 0) is how far a recomputed proposal value may be from
    the recorded one without counting as a divergence. ``exact_start`` is reported as given
    (:func:`replay_recording` sets it). ``keep_decisions=False`` drops the replayed decisions
    from the result (long recordings). ``checkpoint`` (a warm start only) is the accumulated
    state recorded with ``frames[0]``; it is restored right after that frame primes the
    supervisor (:mod:`gateway.forensics.checkpoint`).

    Raises :class:`ReplayError` when the frames do not fit the site, ``model`` is given but
    the site has no onnx controller, the model cannot be loaded, or ``checkpoint`` does not
    fit the site or is malformed.
    """
    if not frames:
        raise ReplayError("the recording holds no frames")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ReplayError(f"`tolerance` must be finite and >= 0, got {tolerance!r}")
    if model is not None and site.controller.kind is not ControllerKind.ONNX:
        raise ReplayError(f"cannot recompute proposals: site {site.site.name!r} has no onnx "
                          f"controller")
    _check_fits(site, frames, model is not None)
    initial = np.array(initial_command, dtype=np.float64)
    if initial.shape != (len(site.actuators),):
        raise ReplayError(f"initial_command must hold {len(site.actuators)} values, "
                          f"got shape {initial.shape}")
    envelope = gateway.envelope.compile(site, engine)
    # The live runtime's codec: decisions are the commands as written, after encoding.
    sup = Supervisor(site, envelope, initial, start_s, canary=canary, codec=codec)
    policy: OnnxPolicy | None = None
    sha: str | None = None
    if model is not None:
        policy, sha = _load(site, model)
    if not exact_start:
        warm_start(sup, frames)
    try:
        return _run(site, frames, sup, policy, sha, canary, tolerance, exact_start,
                    keep_decisions, None if exact_start else checkpoint)
    finally:
        if policy is not None:
            policy.close()


def replay_recording(site: Site, recording: Recording | Sequence[Frame], model: Path | None,
                     *, engine: str | None = None, canary: CanaryCases | None = None,
                     tolerance: float = DEFAULT_TOLERANCE,
                     keep_decisions: bool = True) -> ReplayResult:
    """:func:`replay` with the start taken from the recording itself.

    The site's ``controller`` and ``operation`` sections are those the recording ran with,
    when its header keeps them (:func:`~gateway.forensics.recorder.site_as_recorded`; each
    difference from ``site`` is noted): the model's input wiring and the mode policy of the
    live run, whatever the site file says.

    When the recording has its :class:`~gateway.forensics.recorder.RecordingInfo` and starts at
    the supervisor's first step, the replay starts exactly as the live supervisor did (its
    ``start_s``, ``initial_command`` and canary cases) and must reproduce it. Otherwise (a
    window frozen in the middle of a run) the replay starts warm (:func:`warm_start`): in the
    recorded mode, with the canary's schedule read from the recording; the first frame primes
    the supervisor (its decision is taken as recorded, not compared) and decisions are
    compared from the second. ``exact_start`` is then False. Raises :class:`ReplayError` as
    :func:`replay` does.
    """
    info = recording.info if isinstance(recording, Recording) else None
    frames = recording.frames if isinstance(recording, Recording) else tuple(recording)
    if not frames:
        raise ReplayError("the recording holds no frames")
    notes: list[str] = []
    if info is not None and info.site != site.site.name:
        notes.append(f"recorded on site {info.site!r}, replayed on {site.site.name!r}")
    try:
        site, as_run = site_as_recorded(site, info)
    except RecordingError as exc:
        raise ReplayError(str(exc)) from None
    notes += as_run
    first = frames[0]
    start_at = None if info is not None and first.seq == 0 else next(
        (k for k, f in enumerate(frames) if usable(f.checkpoint)), None)
    if start_at:
        notes.append(f"cycles {first.seq}..{frames[start_at - 1].seq} precede the recording's "
                     f"first checkpoint and are not replayed")
        frames = frames[start_at:]
        first = frames[0]
    if info is not None and first.seq == 0:
        result = replay(site, frames, model, engine=engine, initial_command=info.initial_command,
                        start_s=info.start_s, canary=canary if canary is not None else info.canary,
                        tolerance=tolerance, exact_start=True, keep_decisions=keep_decisions)
    else:
        why = ("the recording has no header" if info is None
               else f"the recording starts at cycle {first.seq}, not at the supervisor's start")
        restored = ("; the accumulated state (divergence detectors, reference PIDs, "
                    "violation window, trip latches) is restored from its checkpoint"
                    if start_at is not None else
                    "; the recording has no usable checkpoint: the detectors that accumulate over "
                    "minutes start fresh")
        notes.append(f"warm start ({why}): the supervisor starts in the recorded mode "
                     f"({_mode_before(first)}); cycle {first.seq} primes its state and is not "
                     f"compared{restored}")
        # The config's start modes are SHADOW and MANUAL; warm_start then sets the recorded
        # mode (AUTO too) directly.
        start_mode = (StartMode.SHADOW if _mode_before(first) in (Mode.AUTO, Mode.SHADOW)
                      else StartMode.MANUAL)
        warm = replace(site, operation=replace(site.operation, start_mode=start_mode))
        cycle_s = site.site.cycle_ms / 1000.0
        result = replay(warm, frames, model, engine=engine,
                        initial_command=first.decision.command,
                        start_s=first.now_s - first.decision.dt_s + cycle_s,
                        canary=canary if canary is not None else (
                            info.canary if info is not None else None),
                        tolerance=tolerance, exact_start=False, keep_decisions=keep_decisions,
                        checkpoint=first.checkpoint if start_at is not None else None)
    if notes:
        result = replace(result, notes=tuple(notes) + result.notes)
    return result


def _mode_before(frame: Frame) -> Mode:
    """The mode the supervisor was in when ``frame``'s step began: the ``from`` of the step's
    first mode change, else the mode it decided in."""
    for event in frame.decision.events:
        if event.kind is EventKind.MODE_CHANGE:
            before = dict(event.evidence).get("from")
            if isinstance(before, str):
                try:
                    return Mode(before)
                except ValueError:
                    break
    return frame.decision.mode


def warm_start(sup: Supervisor, frames: Sequence[Frame]) -> None:
    """Put a fresh replay supervisor into the state the live one had at ``frames[0]``, as far
    as the recording shows it: the recorded mode (AUTO included: the live run was in it; only
    replay may start there, never a live supervisor), in SHADOW when the clean shadow period
    began (from the window's first request for AUTO and its answer), and the canary's
    schedule (the first cycle where a canary round was due). The rest is primed by the first
    frame (:func:`_prime`). Forensic replay only.

    Not recoverable from the frames alone: the state of detectors that accumulate over minutes
    (the divergence detectors against the free-running reference controllers, the
    violation-rate window) and a latched trip. A recording with checkpoints carries it
    (:mod:`gateway.forensics.checkpoint`, restored by :func:`replay`); without one they start
    fresh, so a trip they caused may come later or not at all in the replay, which then
    reports the difference."""
    mode = _mode_before(frames[0])
    # ModeMachine refuses AUTO as a start mode (the AI must earn control); replay
    # reproduces a run in which it had.
    since = (_clean_shadow_since(frames, sup.modes.config.clean_shadow_s)
             if mode is Mode.SHADOW else None)
    sup.modes.replay_from(mode, since)
    if sup.canary.cases is not None:
        due = next((f.now_s for f in frames if f.decision.canary_due), None)
        sup.canary.next_due_s = due if due is not None else math.inf


def _clean_shadow_since(frames: Sequence[Frame], need_s: float) -> float | None:
    """When the clean shadow period began, as the live run's answer to the window's first
    request for AUTO shows it (None when the window has none): granted at ``t``, it began
    ``need_s`` before at the latest; refused, the refusal says how long it had lasted. A
    request is judged at the previous step's time."""
    for k, frame in enumerate(frames):
        for req in frame.requests:
            if req.kind is not RequestKind.TO_AUTO:
                continue
            t = frames[k - 1].now_s if k else frame.now_s - frame.decision.dt_s
            for event in frame.decision.events:
                if event.requester != req.requester:
                    continue
                if (event.kind is EventKind.MODE_CHANGE
                        and dict(event.evidence).get("to") == Mode.AUTO.value):
                    return t - need_s
                if event.kind is EventKind.REQUEST_REFUSED:
                    found = _CLEAN_FOR.search(event.reason)
                    if found is not None:
                        return t - float(found.group(1))
    return None


_CLEAN_FOR: Final = re.compile(r"shadow clean for ([0-9.]+) s of")


def _prime(sup: Supervisor, recorded: Decision) -> None:
    """After the warm start's first step: take that step's decision as recorded, so that the
    rate limits, the fallbacks' bumpless tracking and the AI's own trajectory continue from
    what the live run applied (the supervisor's state before the window is not recorded)."""
    sup.record_write(np.array(recorded.command, dtype=np.float64))
    # The mode the live step ended in (an operator request applied before it, or a trip).
    sup.modes.replay_from(recorded.mode)
    verdict = recorded.verdict
    if recorded.source is Source.AI or recorded.mode in (Mode.MANUAL, Mode.SAFE_STOP):
        sup.ai_previous = np.array(recorded.command, dtype=np.float64)
    elif verdict is not None and verdict.clamped is not None:
        sup.ai_previous = np.array(verdict.clamped, dtype=np.float64)


# --------------------------------------------------------------------------------------------


def _check_fits(site: Site, frames: Sequence[Frame], with_model: bool) -> None:
    n_s, n_a = len(site.sensors), len(site.actuators)
    n_in = len(site.controller.inputs)
    for frame in (frames[0], frames[-1]):
        if np.shape(frame.snapshot.sensors) != (n_s,):
            raise ReplayError(f"cycle {frame.seq}: {np.shape(frame.snapshot.sensors)} sensor "
                              f"values, the site has {n_s} sensors")
        if np.shape(frame.decision.command) != (n_a,):
            raise ReplayError(f"cycle {frame.seq}: {np.shape(frame.decision.command)} actuator "
                              f"values, the site has {n_a} actuators")
    if with_model:
        for frame in frames:
            x = frame.model_inputs
            if x is not None and (x.dtype != np.float64 or x.shape != (n_in,)):
                raise ReplayError(f"cycle {frame.seq}: model inputs of shape {x.shape}, the "
                                  f"site's controller has {n_in} inputs")


def _load(site: Site, model: Path) -> tuple[OnnxPolicy, str]:
    from gateway.control.onnx_policy import ModelError

    try:
        config = onnx_policy_config(site)
    except ValueError as exc:
        raise ReplayError(f"cannot recompute proposals: {exc}") from None
    try:
        data = model.read_bytes()
    except OSError as exc:
        raise ReplayError(f"{model}: cannot read the model ({exc.strerror or exc})") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        policy = load_policy(replace(config, model_path=model, sha256=sha))
    except ModelError as exc:
        raise ReplayError(str(exc)) from None
    return policy, sha


def _canary_outputs(policy: OnnxPolicy, cases: CanaryCases) -> F64:
    """The model's outputs on the golden inputs, NaN rows where it gave none (as the runtime
    computes them)."""
    rows = []
    width = cases.outputs.shape[1]
    for row in cases.inputs:
        out = policy.infer_sync(np.ascontiguousarray(row, dtype=np.float64)).outputs
        rows.append(np.full(width, math.nan) if out is None else np.asarray(out, np.float64))
    return np.array(rows, dtype=np.float64)


def _run(site: Site, frames: Sequence[Frame], sup: Supervisor, policy: OnnxPolicy | None,
         sha: str | None, canary: CanaryCases | None, tolerance: float, exact_start: bool,
         keep_decisions: bool, checkpoint: dict[str, Any] | None) -> ReplayResult:
    names = tuple(t.name for t in site.actuators)
    inputs = tuple(site.controller.inputs)
    n_a = len(names)
    wiring = AiWiring(site) if policy is not None else None
    max_diff = np.zeros(n_a)
    decisions: list[Decision] = []
    divergences: list[CycleDivergence] = []
    divergent_rows: list[F64] = []
    field_counts = dict.fromkeys(_DECISION_FIELDS, 0)
    n_prop = n_dec = n_mode_cmd = kept = 0
    first_prop: float | None = None
    first_dec: float | None = None
    prime = not exact_start  # a warm start's first frame primes the state
    set_point = sup.set_operator_setpoint
    record_write = sup.record_write
    step = sup.step
    t0 = time.perf_counter()
    for frame in frames:
        for iv in frame.interventions:
            if isinstance(iv, SetpointChange):
                set_point(iv.actuator, iv.value)
            else:
                record_write(np.array(iv.command, dtype=np.float64))
        for req in frame.requests:
            sup.apply_request(req)  # as live: at the previous step's time, before this step
        recorded = frame.proposal
        proposal = recorded
        diff = 0.0
        if wiring is not None:
            assert policy is not None
            x = frame.model_inputs
            if x is None or (recorded is not None and recorded.anomaly in _TIMING):
                kept += 1
            else:
                produced = frame.now_s if recorded is None or recorded.produced_at_s is None \
                    else recorded.produced_at_s
                proposal = wiring.proposal(policy.infer_sync(x), produced)
                if recorded is not None and recorded.canary is not None:
                    proposal = Proposal(proposal.values, proposal.anomaly,
                                        proposal.produced_at_s,
                                        recorded.canary if canary is None
                                        else _canary_outputs(policy, canary))
                diff = _proposal_diff(recorded, proposal, max_diff)
        decision = step(frame.snapshot, proposal, frame.now_s)
        if keep_decisions:
            decisions.append(decision)
        if prime:
            prime = False
            _prime(sup, frame.decision)
            if checkpoint is not None:
                try:
                    restore(sup, checkpoint)
                except CheckpointError as exc:
                    raise ReplayError(f"cycle {frame.seq}: {exc}") from None
            differ: tuple[str, ...] = ()
        else:
            differ = _decision_diff(frame.decision, decision)
        prop_diverged = diff > tolerance
        if prop_diverged:
            n_prop += 1
            if first_prop is None:
                first_prop = frame.now_s
            if frame.model_inputs is not None:
                divergent_rows.append(frame.model_inputs)
        if differ:
            n_dec += 1
            if first_dec is None:
                first_dec = frame.now_s
            for name in differ:
                field_counts[name] += 1
            if "mode" in differ or "command" in differ:
                n_mode_cmd += 1
        if (prop_diverged or differ) and len(divergences) < _KEEP_DIVERGENCES:
            divergences.append(CycleDivergence(frame.seq, frame.now_s, diff, differ))
    elapsed = time.perf_counter() - t0
    rows = (np.array(divergent_rows, dtype=np.float64) if divergent_rows
            else np.empty((0, len(inputs))))
    ranges: dict[str, tuple[float, float]] = {}
    finite = rows[np.isfinite(rows).all(axis=1)] if len(rows) else rows
    if len(finite):
        lo, hi = finite.min(axis=0), finite.max(axis=0)
        ranges = {name: (float(lo[j]), float(hi[j])) for j, name in enumerate(inputs)}
    firsts = [t for t in (first_prop, first_dec) if t is not None]
    notes: list[str] = []
    if kept and policy is not None:
        notes.append(f"{kept} cycle{'' if kept == 1 else 's'} kept the recorded proposal "
                     f"(deadline miss, busy model, or no model inputs)")
    return ReplayResult(
        cycles=len(frames), span_s=(frames[0].now_s, frames[-1].now_s),
        recomputed=policy is not None, model_sha256=sha, exact_start=exact_start,
        tolerance=tolerance, identical=n_dec == 0 and n_prop == 0,
        first_divergence_s=min(firsts) if firsts else None,
        first_proposal_divergence_s=first_prop, first_decision_divergence_s=first_dec,
        proposal_divergent_cycles=n_prop, decision_divergent_cycles=n_dec,
        mode_or_command_divergent_cycles=n_mode_cmd,
        field_divergences={k: v for k, v in field_counts.items() if v},
        max_proposal_diff={names[i]: float(max_diff[i]) for i in range(n_a)},
        divergent_input_ranges=ranges, divergent_inputs=rows, recorded_kept=kept,
        divergences=tuple(divergences), decisions=tuple(decisions), elapsed_s=elapsed,
        notes=tuple(notes))


# --------------------------------------------------------------------------------------------
# Comparisons


def _proposal_diff(recorded: Proposal | None, replayed: Proposal, max_diff: F64) -> float:
    """The largest difference between two proposals (inf when not comparable); updates the
    per-actuator maxima with the finite differences."""
    if recorded is None or recorded.anomaly != replayed.anomaly:
        return math.inf
    a, b = recorded.values, replayed.values
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    if not isinstance(a, np.ndarray) or a.shape != b.shape:
        return math.inf
    worst = _array_diff(a, b, max_diff if a.shape == max_diff.shape else None)
    ca, cb = recorded.canary, replayed.canary
    if (ca is None) != (cb is None):
        return math.inf
    if ca is not None and cb is not None:
        worst = max(worst, math.inf if ca.shape != cb.shape else _array_diff(ca, cb, None))
    return worst


def _array_diff(a: F64, b: F64, max_diff: F64 | None) -> float:
    if a.tobytes() == b.tobytes():
        return 0.0  # the common case (same model), and NaN == NaN of the same payload
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if nan_a.any() or nan_b.any():
        d = np.where(nan_a & nan_b, 0.0, np.where(nan_a | nan_b, math.inf, d))
    if max_diff is not None:
        finite = np.where(np.isfinite(d), d, 0.0)
        np.maximum(max_diff, finite, out=max_diff)
    return float(d.max()) if d.size else 0.0


def _same(a: npt.NDArray[Any] | None, b: npt.NDArray[Any] | None) -> bool:
    """Bit for bit (NaNs of any payload count as equal)."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.tobytes() == b.tobytes():
        return True
    return bool(np.array_equal(a, b, equal_nan=True)
                and np.array_equal(np.signbit(a), np.signbit(b)))


def _same_float(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _same_events(a: tuple[Event, ...], b: tuple[Event, ...]) -> bool:
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if (x.kind, x.name, x.reason, x.requester) != (y.kind, y.name, y.reason, y.requester):
            return False
        if not _same_float(x.at_s, y.at_s) or len(x.evidence) != len(y.evidence):
            return False
        for (kx, vx), (ky, vy) in zip(x.evidence, y.evidence, strict=True):
            if kx != ky:
                return False
            if isinstance(vx, float) and isinstance(vy, float):
                if not _same_float(vx, vy):
                    return False
            elif vx != vy:
                return False
    return True


def _decision_diff(live: Decision, rep: Decision) -> tuple[str, ...]:
    """Names of the decision fields that differ (empty when bit for bit identical)."""
    out: list[str] = []
    if live.mode is not rep.mode:
        out.append("mode")
    if not _same(live.command, rep.command):
        out.append("command")
    if live.source is not rep.source:
        out.append("source")
    if live.sources != rep.sources:
        out.append("sources")
    lv, rv = live.verdict, rep.verdict
    if (lv is None) != (rv is None) or (lv is not None and rv is not None and (
            lv.action != rv.action or lv.violations != rv.violations
            or not _same(lv.clamped, rv.clamped))):
        out.append("verdict")
    if not _same(live.fallback, rep.fallback):
        out.append("fallback")
    if live.clamped != rep.clamped:
        out.append("clamped")
    if not _same_events(live.events, rep.events):
        out.append("events")
    if live.canary_due != rep.canary_due:
        out.append("canary_due")
    if not _same(live.sensors, rep.sensors):
        out.append("sensors")
    if not _same_float(live.dt_s, rep.dt_s):
        out.append("dt_s")
    return tuple(out)

"""The flight recorder: the last N seconds of full-rate control cycles, frozen on a trip.

Each control cycle leaves one :class:`Frame`: what the supervisor was given (the snapshot, the
AI's proposal and the model's input vector, the operator requests it applied, the setpoints and
write-backs made since the previous cycle) and what it decided. That is exactly what
:func:`gateway.forensics.replay.replay` needs to run the same cycles again offline, through the
same supervisor code, and to reproduce the live decisions bit for bit.

Recording runs inside the control loop, so it costs O(1) and no I/O: a frame holds references
to the cycle's own objects (the snapshot, proposal and decision are immutable by convention and
built fresh every cycle), and :meth:`FlightRecorder.record` appends it to a bounded deque.

How the runtime records (the one-line integration)
---------------------------------------------------
The runtime keeps one :class:`FlightRecorder` per supervisor, created with the supervisor
(``info=RecordingInfo.of(site, start_s, initial_command, canary, model_sha256)``), and:

* next to every ``supervisor.apply_request(req)`` calls ``recorder.operator.request(req)``;
* next to every ``supervisor.set_operator_setpoint(i, v)`` calls
  ``recorder.operator.setpoint(i, v)``;
* next to every ``supervisor.record_write(cmd)`` calls ``recorder.operator.write(cmd)``;
* **immediately after** ``decision = supervisor.step(snapshot, proposal, now)`` (before the wire
  gate's ``record_write`` of the same cycle, which belongs to the next frame) calls::

      recorder.record_cycle(now, snapshot, model_inputs, proposal, decision)

  where ``snapshot`` and ``proposal`` are the very objects passed to ``step`` and
  ``model_inputs`` is the model's input vector of this cycle (``AiWiring.inputs(...)``, engineering
  units, before normalisation), or None when no in-process model ran.

The pieces are public too: :func:`frame_from_cycle` builds a frame, :meth:`FlightRecorder.record`
appends one.

Exports: JSON lines (:func:`write_jsonl` / :func:`read_jsonl`; a header line with the
:class:`RecordingInfo`, then one frame per line, floats written with ``repr`` so that they read
back bit for bit, non-finite floats as ``{"$f": "nan"}``) and CSV (:func:`write_csv`, readable
columns for evidence bundles).
"""

from __future__ import annotations

import csv
import json
import math
from collections import deque
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np

from gateway.config.schema import ControllerKind, ControllerSpec, Operation, StartMode
from gateway.envelope.compiled import Action
from gateway.envelope.engine import Verdict
from gateway.supervisor.decision import Decision, Proposal, ProposalAnomaly, Snapshot, Source
from gateway.supervisor.detectors import CanaryCases
from gateway.supervisor.events import Event, EventKind
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    import numpy.typing as npt

    from gateway.config.schema import Site
    from gateway.envelope.compiled import F64

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FlightRecorder",
    "Frame",
    "FrozenWindow",
    "Intervention",
    "OperatorLog",
    "Recording",
    "RecordingError",
    "RecordingInfo",
    "SetpointChange",
    "WriteBack",
    "frame_from_cycle",
    "read_jsonl",
    "site_as_recorded",
    "write_csv",
    "write_jsonl",
]

FORMAT: Final = "safety-gateway-flight-recorder"
FORMAT_VERSION: Final = 1

_new = tuple.__new__
# Cycles between two checkpoints: a window's replay starts at most this many cycles after its
# first frame; capturing costs a few microseconds, paid once per so many cycles.
CHECKPOINT_EVERY_N: Final = 20
_NO_REQUESTS: tuple[OperatorRequest, ...] = ()
_NO_INTERVENTIONS: tuple[Intervention, ...] = ()


class RecordingError(ValueError):
    """A recording file cannot be read: ``path:line: what is wrong``."""


# --------------------------------------------------------------------------------------------
# What one cycle leaves


class SetpointChange(NamedTuple):
    """``Supervisor.set_operator_setpoint(actuator, value)`` (None releases the setpoint)."""

    actuator: int
    value: float | None


class WriteBack(NamedTuple):
    """``Supervisor.record_write(command)``: a command written between two steps (an operator's
    validated write-through, or the wire gate's adjustment of the last decision)."""

    command: tuple[float, ...]


Intervention = SetpointChange | WriteBack


class Frame(NamedTuple):
    """One control cycle, as the supervisor saw and decided it.

    ``seq`` counts the supervisor's steps from 0 (its first step). ``now_s`` is the time given
    to ``step``. ``snapshot`` and ``proposal`` are the objects given to ``step`` (``proposal`` is
    None when there was no AI); ``model_inputs`` is the in-process model's input vector this
    cycle (engineering units, before normalisation), None when no model ran. ``requests`` are
    the operator requests applied since the previous step (at that step's time; replay applies
    them just before this one),
    ``interventions`` the setpoints and write-backs made since the previous step, in order.
    ``decision`` is what ``step`` returned. ``checkpoint`` is the supervisor's accumulated
    state right after this step (:mod:`gateway.forensics.checkpoint`), kept every
    ``checkpoint_every_n`` cycles by a recorder given a checkpoint source; None otherwise.

    Immutable (a NamedTuple: no per-field ``__setattr__`` to pay for in the control loop).
    """

    seq: int
    now_s: float
    snapshot: Snapshot
    model_inputs: F64 | None
    proposal: Proposal | None
    requests: tuple[OperatorRequest, ...]
    interventions: tuple[Intervention, ...]
    decision: Decision
    checkpoint: dict[str, Any] | None = None


class OperatorLog:
    """What operators (and the wire gate) did to the supervisor between two steps, in order.

    Call :meth:`request`, :meth:`setpoint` and :meth:`write` beside the supervisor calls of the
    same names; :meth:`drain` hands everything since the last drain to the next frame.
    """

    __slots__ = ("_interventions", "_requests")

    def __init__(self) -> None:
        self._requests: list[OperatorRequest] = []
        self._interventions: list[Intervention] = []

    def request(self, req: OperatorRequest) -> None:
        """An operator request was applied (``Supervisor.apply_request``)."""
        self._requests.append(req)

    def setpoint(self, actuator: int, value: float | None) -> None:
        """An operator setpoint was set or released (``Supervisor.set_operator_setpoint``)."""
        self._interventions.append(SetpointChange(int(actuator),
                                                  None if value is None else float(value)))

    def write(self, command: npt.ArrayLike) -> None:
        """A command was written between steps (``Supervisor.record_write``); copied."""
        values = np.asarray(command, dtype=np.float64).tolist()
        self._interventions.append(WriteBack(tuple(values)))

    def drain(self) -> tuple[tuple[OperatorRequest, ...], tuple[Intervention, ...]]:
        """Everything logged since the last drain, and forget it."""
        requests = _NO_REQUESTS
        interventions = _NO_INTERVENTIONS
        if self._requests:
            requests = tuple(self._requests)
            self._requests.clear()
        if self._interventions:
            interventions = tuple(self._interventions)
            self._interventions.clear()
        return requests, interventions


def frame_from_cycle(seq: int, now_s: float, snapshot: Snapshot, model_inputs: F64 | None,
                     proposal: Proposal | None, decision: Decision,
                     operator: OperatorLog | None = None) -> Frame:
    """Build the frame of one cycle from what the runtime has at hand right after ``step``.

    ``seq``: the step's index since the supervisor started (0 for its first step).
    ``now_s``, ``snapshot``, ``proposal``: exactly what was passed to ``Supervisor.step``.
    ``model_inputs``: the model's input vector this cycle (``AiWiring.inputs``), or None.
    ``decision``: what ``step`` returned. ``operator``: the log of requests, setpoints and
    write-backs since the previous step; it is drained. Nothing is copied: the arrays must not
    be changed afterwards (the runtime builds them fresh every cycle).
    """
    if operator is None:
        requests, interventions = _NO_REQUESTS, _NO_INTERVENTIONS
    else:
        requests, interventions = operator.drain()
    return _new(Frame, (seq, now_s, snapshot, model_inputs, proposal, requests, interventions,
                        decision, None))


# --------------------------------------------------------------------------------------------
# What a recording is about


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """What a replay needs besides the frames: the site's name and cycle, the supervisor's
    ``start_s`` and ``initial_command`` (exact replay starts a fresh supervisor with them), the
    names of sensors, actuators and model inputs (CSV columns, replay reports), the model's
    sha256 and the canary cases the supervisor was given (None when it had none).

    ``controller`` and ``operation`` are the site's ``controller`` and ``operation`` sections
    as the supervisor ran them (None in recordings made before they were kept). A gateway
    can run with settings its site file does not hold (a drill wires the zoo's model into a
    site whose file names an external controller, and shortens the clean shadow period), and
    replay needs the settings that ran: the model's input wiring and normalisation, the mode
    policy. :func:`site_as_recorded` applies them to a site loaded from its file.
    """

    site: str
    cycle_s: float
    start_s: float
    initial_command: tuple[float, ...]
    sensor_names: tuple[str, ...]
    actuator_names: tuple[str, ...]
    input_names: tuple[str, ...] = ()
    model_sha256: str | None = None
    canary: CanaryCases | None = None
    controller: ControllerSpec | None = None
    operation: Operation | None = None

    @classmethod
    def of(cls, site: Site, start_s: float, initial_command: npt.ArrayLike,
           canary: CanaryCases | None = None, model_sha256: str | None = None) -> RecordingInfo:
        """The info of a supervisor built as ``Supervisor(site, env, initial_command,
        start_s, canary=canary)``."""
        return cls(site=site.site.name, cycle_s=site.site.cycle_ms / 1000.0,
                   start_s=float(start_s),
                   initial_command=tuple(np.asarray(initial_command, dtype=np.float64).tolist()),
                   sensor_names=tuple(t.name for t in site.sensors),
                   actuator_names=tuple(t.name for t in site.actuators),
                   input_names=tuple(site.controller.inputs),
                   model_sha256=model_sha256, canary=canary, controller=site.controller,
                   operation=site.operation)


def site_as_recorded(site: Site, info: RecordingInfo | None) -> tuple[Site, tuple[str, ...]]:
    """``site`` with the ``controller`` and ``operation`` sections the recording ran with,
    and a note for each section that differs from the site's own (nothing changes for a
    recording without them). Raises :class:`RecordingError` when the recorded controller
    names tags the site does not have."""
    if info is None:
        return site, ()
    notes: list[str] = []
    changes: dict[str, Any] = {}
    if info.controller is not None and info.controller != site.controller:
        names = {t.name for t in site.tags}
        missing = [n for n in (*info.controller.inputs, *info.controller.outputs)
                   if n not in names]
        if missing:
            raise RecordingError(f"the recording's controller reads or drives "
                                 f"{', '.join(missing)}, which site {site.site.name!r} does "
                                 f"not have")
        c = info.controller
        notes.append(f"controller as recorded ({c.kind}, inputs "
                     f"{', '.join(c.inputs) or 'none'}), not the site file's "
                     f"({site.controller.kind}"
                     + (f", inputs {', '.join(site.controller.inputs)})"
                        if site.controller.inputs else ")"))
        changes["controller"] = c
    if info.operation is not None and info.operation != site.operation:
        diffs = [f"{f.name} {getattr(info.operation, f.name)!s}"
                 for f in fields(info.operation)
                 if getattr(info.operation, f.name) != getattr(site.operation, f.name)]
        notes.append(f"operation as recorded: {', '.join(diffs)}")
        changes["operation"] = info.operation
    return (replace(site, **changes) if changes else site), tuple(notes)


@dataclass(frozen=True, slots=True)
class Recording:
    """Frames read back from a file, with their info (None when the file has no header)."""

    info: RecordingInfo | None
    frames: tuple[Frame, ...]


# --------------------------------------------------------------------------------------------
# The ring buffer and frozen windows


class FrozenWindow:
    """The frames from ``trigger_s - before_s`` to ``trigger_s + after_s``.

    Frozen from the recorder's ring at :meth:`FlightRecorder.freeze`; the recorder keeps
    adding the cycles that follow until one at or after ``end_s`` arrives, then the window is
    :attr:`complete`.
    """

    def __init__(self, trigger_s: float, before_s: float, after_s: float,
                 frames: Iterable[Frame], info: RecordingInfo | None) -> None:
        self.trigger_s = trigger_s
        self.start_s = trigger_s - before_s
        self.end_s = trigger_s + after_s
        self.info = info
        self._frames = [f for f in frames if self.start_s <= f.now_s <= self.end_s]
        self._complete = False

    @property
    def complete(self) -> bool:
        """True once a cycle at or after :attr:`end_s` has been recorded (or :meth:`close`)."""
        return self._complete

    def frames(self) -> tuple[Frame, ...]:
        return tuple(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: Frame) -> bool:
        """Take ``frame`` if it falls in the window; return True when the window is complete."""
        now = frame.now_s
        if self.start_s <= now <= self.end_s:
            self._frames.append(frame)
        if now >= self.end_s:
            self._complete = True
        return self._complete

    def close(self) -> None:
        """Stop collecting (shutdown): the window keeps what it has and reports complete."""
        self._complete = True

    def to_jsonl(self, path: Path) -> None:
        write_jsonl(path, self._frames, self.info)

    def to_csv(self, path: Path) -> None:
        write_csv(path, self._frames, self.info)


class FlightRecorder:
    """A ring buffer of the last ``window_s`` seconds of cycles at ``cycle_s`` per cycle.

    Holds ``ceil(window_s / cycle_s) + 1`` frames. :meth:`record` is O(1): an append to a
    bounded deque, plus one append per window still collecting. Raises ``ValueError`` if
    ``window_s`` or ``cycle_s`` is not a finite number > 0. ``checkpoint``, when given, is
    called right after every ``checkpoint_every_n``-th step (``seq`` a multiple of it) and its
    dict kept in that frame (a forensic checkpoint for the replay's warm start).
    """

    def __init__(self, window_s: float, cycle_s: float, info: RecordingInfo | None = None,
                 checkpoint: Callable[[], dict[str, Any]] | None = None,
                 checkpoint_every_n: int = CHECKPOINT_EVERY_N) -> None:
        for key, value in (("window_s", window_s), ("cycle_s", cycle_s)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"`{key}` must be a number, got {type(value).__name__}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{key}` must be finite and > 0, got {value!r}")
        self.window_s = float(window_s)
        self.cycle_s = float(cycle_s)
        self.capacity = math.ceil(self.window_s / self.cycle_s) + 1
        self.info = info
        self.operator = OperatorLog()
        self.seq = 0
        self._ring: deque[Frame] = deque(maxlen=self.capacity)
        self._collecting: list[FrozenWindow] = []
        # The supervisor's accumulated state (gateway.forensics.checkpoint.capture), taken
        # every checkpoint_every_n cycles only: the control loop pays for it rarely.
        if (isinstance(checkpoint_every_n, bool) or not isinstance(checkpoint_every_n, int)
                or checkpoint_every_n < 1):
            raise ValueError(f"`checkpoint_every_n` must be an integer >= 1, got "
                             f"{checkpoint_every_n!r}")
        self._checkpoint = checkpoint
        self.checkpoint_every_n = checkpoint_every_n

    def __len__(self) -> int:
        return len(self._ring)

    def record(self, frame: Frame) -> None:
        """Append one cycle's frame (the oldest falls out when the ring is full)."""
        self._ring.append(frame)
        self.seq = frame.seq + 1
        if self._collecting:
            self._collecting = [w for w in self._collecting if not w.offer(frame)]

    def record_cycle(self, now_s: float, snapshot: Snapshot, model_inputs: F64 | None,
                     proposal: Proposal | None, decision: Decision) -> Frame:
        """Build this cycle's frame (see :func:`frame_from_cycle`; the sequence number and the
        operator log are the recorder's own), record it and return it."""
        # frame_from_cycle and record, inlined: this runs every cycle in the control loop.
        op = self.operator
        if op._requests or op._interventions:
            requests, interventions = op.drain()
        else:
            requests, interventions = _NO_REQUESTS, _NO_INTERVENTIONS
        seq = self.seq
        source = self._checkpoint
        checkpoint = (source() if source is not None and seq % self.checkpoint_every_n == 0
                      else None)
        frame: Frame = _new(Frame, (seq, now_s, snapshot, model_inputs, proposal, requests,
                                    interventions, decision, checkpoint))
        self._ring.append(frame)
        self.seq = seq + 1
        if self._collecting:
            self._collecting = [w for w in self._collecting if not w.offer(frame)]
        return frame

    def freeze(self, trigger_s: float, after_s: float) -> FrozenWindow:
        """Freeze the window around ``trigger_s``: the frames since ``trigger_s - window_s``
        now, and the cycles up to ``trigger_s + after_s`` as they are recorded.

        Raises ``ValueError`` if ``trigger_s`` is not finite or ``after_s`` is negative or not
        finite.
        """
        if not math.isfinite(trigger_s):
            raise ValueError(f"`trigger_s` must be finite, got {trigger_s!r}")
        if not math.isfinite(after_s) or after_s < 0:
            raise ValueError(f"`after_s` must be finite and >= 0, got {after_s!r}")
        window = FrozenWindow(trigger_s, self.window_s, after_s, self._ring, self.info)
        if self._ring and self._ring[-1].now_s >= window.end_s:
            window.close()
        else:
            self._collecting.append(window)
        return window

    def frames(self) -> tuple[Frame, ...]:
        """The frames in the ring, oldest first."""
        return tuple(self._ring)

    def to_jsonl(self, path: Path) -> None:
        write_jsonl(path, self._ring, self.info)

    def to_csv(self, path: Path) -> None:
        write_csv(path, self._ring, self.info)


# --------------------------------------------------------------------------------------------
# JSON lines


def _f(x: Any) -> Any:
    """A float as JSON: itself when finite (``repr`` reads back bit for bit), else tagged."""
    if isinstance(x, float) and not math.isfinite(x):
        return {"$f": repr(x)}
    return x


def _arr(a: npt.NDArray[Any] | None) -> Any:
    if a is None:
        return None
    return _floats(a.tolist())


def _floats(values: Any) -> Any:
    if isinstance(values, list):
        return [_floats(v) for v in values]
    return _f(values)


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$f" in obj:
        return float(obj["$f"])
    return obj


def _f64(values: Any) -> F64:
    return np.array(values, dtype=np.float64)


def _f64_or_none(values: Any) -> F64 | None:
    return None if values is None else np.array(values, dtype=np.float64)


def info_json(info: RecordingInfo) -> dict[str, Any]:
    canary = info.canary
    return {
        "site": info.site, "cycle_s": info.cycle_s, "start_s": _f(info.start_s),
        "initial_command": _floats(list(info.initial_command)),
        "sensor_names": list(info.sensor_names), "actuator_names": list(info.actuator_names),
        "input_names": list(info.input_names), "model_sha256": info.model_sha256,
        "canary": None if canary is None else {
            "inputs": _arr(np.asarray(canary.inputs)), "outputs": _arr(np.asarray(canary.outputs)),
            "tolerance": _f(float(canary.tolerance))},
        "controller": _section_json(info.controller),
        "operation": _section_json(info.operation),
    }


def _section_json(section: ControllerSpec | Operation | None) -> dict[str, Any] | None:
    """A flat config section as JSON: enums by value, paths as text, tuples as lists."""
    if section is None:
        return None
    out: dict[str, Any] = {}
    for f in fields(section):
        value = getattr(section, f.name)
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = _floats(list(value))
        out[f.name] = _f(value)
    return out


def _controller_from(obj: dict[str, Any] | None) -> ControllerSpec | None:
    if obj is None:
        return None
    kw: dict[str, Any] = {}
    for f in fields(ControllerSpec):
        if f.name not in obj:
            continue
        value = obj[f.name]
        if f.name == "kind":
            value = ControllerKind(value)
        elif f.name in ("model", "registry"):
            value = None if value is None else Path(value)
        elif isinstance(value, list):
            value = tuple(value)
        kw[f.name] = value
    return ControllerSpec(**kw)


def _operation_from(obj: dict[str, Any] | None) -> Operation | None:
    if obj is None:
        return None
    kw = {f.name: obj[f.name] for f in fields(Operation) if f.name in obj}
    if "start_mode" in kw:
        kw["start_mode"] = StartMode(kw["start_mode"])
    return Operation(**kw)


def _info_from(obj: dict[str, Any]) -> RecordingInfo:
    canary = obj.get("canary")
    return RecordingInfo(
        site=str(obj["site"]), cycle_s=float(obj["cycle_s"]), start_s=float(obj["start_s"]),
        initial_command=tuple(float(v) for v in obj["initial_command"]),
        sensor_names=tuple(obj["sensor_names"]), actuator_names=tuple(obj["actuator_names"]),
        input_names=tuple(obj.get("input_names", ())), model_sha256=obj.get("model_sha256"),
        canary=None if canary is None else CanaryCases(
            _f64(canary["inputs"]), _f64(canary["outputs"]), float(canary["tolerance"])),
        controller=_controller_from(obj.get("controller")),
        operation=_operation_from(obj.get("operation")))


def _request_json(req: OperatorRequest) -> dict[str, Any]:
    return {"kind": str(req.kind), "requester": req.requester, "authorised": req.authorised,
            "detector": req.detector, "duration_s": _f(req.duration_s), "reason": req.reason}


def _event_json(e: Event) -> dict[str, Any]:
    return {"at_s": _f(e.at_s), "kind": str(e.kind), "name": e.name, "reason": e.reason,
            "requester": e.requester, "evidence": [[k, _f(v)] for k, v in e.evidence]}


def _proposal_json(p: Proposal) -> dict[str, Any]:
    out: dict[str, Any] = {
        "values": _arr(p.values) if isinstance(p.values, np.ndarray) else p.values,
        "anomaly": None if p.anomaly is None else str(p.anomaly),
        "produced_at_s": _f(p.produced_at_s), "canary": _arr(p.canary)}
    if isinstance(p.values, np.ndarray) and p.values.dtype != np.float64:
        out["values_dtype"] = str(p.values.dtype)
    return out


def _decision_json(d: Decision) -> dict[str, Any]:
    v = d.verdict
    return {
        "at_s": _f(d.at_s), "mode": str(d.mode), "command": _arr(d.command),
        "source": str(d.source), "sources": [str(s) for s in d.sources],
        "verdict": None if v is None else {"action": int(v.action),
                                           "violations": list(v.violations),
                                           "clamped": _arr(v.clamped)},
        "fallback": _arr(d.fallback), "clamped": d.clamped,
        "events": [_event_json(e) for e in d.events], "canary_due": d.canary_due,
        "sensors": _arr(d.sensors), "dt_s": _f(d.dt_s)}


def frame_json(frame: Frame) -> dict[str, Any]:
    """One frame as a JSON-ready dict (floats exact, see the module docstring)."""
    snap = frame.snapshot
    interventions: list[dict[str, Any]] = []
    for iv in frame.interventions:
        if isinstance(iv, SetpointChange):
            interventions.append({"setpoint": [iv.actuator, _f(iv.value)]})
        else:
            interventions.append({"write": _floats(list(iv.command))})
    return {
        "seq": frame.seq, "now_s": _f(frame.now_s),
        "sensors": _arr(snap.sensors), "good": np.asarray(snap.good).tolist(),
        "age_s": _arr(snap.age_s), "model_inputs": _arr(frame.model_inputs),
        "proposal": None if frame.proposal is None else _proposal_json(frame.proposal),
        "requests": [_request_json(r) for r in frame.requests],
        "interventions": interventions,
        "decision": _decision_json(frame.decision),
        **({} if frame.checkpoint is None else {"checkpoint": _tagged(frame.checkpoint)}),
    }


def _tagged(value: Any) -> Any:
    """``value`` (JSON-ready dicts, lists and scalars) with non-finite floats tagged."""
    if isinstance(value, dict):
        return {k: _tagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tagged(v) for v in value]
    return _f(value)


def _frame_from(obj: dict[str, Any]) -> Frame:
    p = obj["proposal"]
    proposal = None
    if p is not None:
        values = p["values"]
        if isinstance(values, list):
            values = np.array(values, dtype=p.get("values_dtype", "float64"))
        proposal = Proposal(values, None if p["anomaly"] is None else ProposalAnomaly(
            p["anomaly"]), p["produced_at_s"], _f64_or_none(p["canary"]))
    requests = tuple(OperatorRequest(RequestKind(r["kind"]), r["requester"], r["authorised"],
                                     r["detector"], r["duration_s"], r["reason"])
                     for r in obj["requests"])
    interventions: list[Intervention] = []
    for iv in obj["interventions"]:
        if "setpoint" in iv:
            actuator, value = iv["setpoint"]
            interventions.append(SetpointChange(int(actuator),
                                                None if value is None else float(value)))
        else:
            interventions.append(WriteBack(tuple(float(x) for x in iv["write"])))
    d = obj["decision"]
    v = d["verdict"]
    verdict = None if v is None else Verdict(Action(v["action"]), tuple(v["violations"]),
                                             _f64_or_none(v["clamped"]))
    events = tuple(Event(e["at_s"], EventKind(e["kind"]), e["name"], e["reason"],
                         e["requester"], tuple((k, val) for k, val in e["evidence"]))
                   for e in d["events"])
    decision = Decision(d["at_s"], Mode(d["mode"]), _f64(d["command"]), Source(d["source"]),
                        tuple(Source(s) for s in d["sources"]), verdict, _f64(d["fallback"]),
                        bool(d["clamped"]), events, bool(d["canary_due"]), _f64(d["sensors"]),
                        d["dt_s"])
    snapshot = Snapshot(_f64(obj["sensors"]), np.array(obj["good"], dtype=np.bool_),
                        _f64(obj["age_s"]))
    checkpoint = obj.get("checkpoint")  # absent in older recordings
    return Frame(int(obj["seq"]), obj["now_s"], snapshot, _f64_or_none(obj["model_inputs"]),
                 proposal, requests, tuple(interventions), decision,
                 checkpoint if isinstance(checkpoint, dict) else None)


def write_jsonl(path: Path, frames: Iterable[Frame], info: RecordingInfo | None = None) -> int:
    """Write ``frames`` to ``path`` as JSON lines (a header line first when ``info`` is given);
    return the number of frames written. Raises ``OSError`` from the file system."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        if info is not None:
            header = {"format": FORMAT, "version": FORMAT_VERSION, "info": info_json(info)}
            out.write(json.dumps(header, allow_nan=False) + "\n")
        for frame in frames:
            out.write(json.dumps(frame_json(frame), allow_nan=False, separators=(",", ":"))
                      + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> Recording:
    """Read a recording written by :func:`write_jsonl`.

    Raises ``OSError`` when the file cannot be read and :class:`RecordingError`
    (``path:line: …``) when a line is not a frame of this format.
    """
    info: RecordingInfo | None = None
    frames: list[Frame] = []
    with path.open(encoding="utf-8") as src:
        for number, line in enumerate(src, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line, object_hook=_hook)
                if not isinstance(obj, dict):
                    raise TypeError("not a JSON object")
                if "format" in obj:
                    if obj["format"] != FORMAT or obj.get("version") != FORMAT_VERSION:
                        raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} file "
                                         f"({obj.get('format')!r} v{obj.get('version')!r})")
                    info = _info_from(obj["info"])
                else:
                    frames.append(_frame_from(obj))
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
                raise RecordingError(f"{path}:{number}: {what}") from None
    return Recording(info, tuple(frames))


# --------------------------------------------------------------------------------------------
# CSV


def _cell(x: float) -> str:
    return repr(float(x))


def write_csv(path: Path, frames: Sequence[Frame] | Iterable[Frame],
              info: RecordingInfo | None = None) -> int:
    """Write ``frames`` as CSV, one row per cycle: ``t_s, seq, mode, source``, each sensor
    (the reading as received, whatever its quality), ``ai.<actuator>`` (the
    proposal, empty when there was none), ``ai_anomaly``, ``applied.<actuator>`` (the decision's
    command), ``violations`` (the envelope's verdict on the proposal), ``events`` and
    ``operator`` (requests, setpoints and write-backs). Returns the number of rows."""
    frames = list(frames)
    n_s = len(frames[0].snapshot.sensors) if frames else 0
    n_a = len(frames[0].decision.command) if frames else 0
    sensors = list(info.sensor_names) if info and len(info.sensor_names) == n_s else [
        f"sensor{i}" for i in range(n_s)]
    actuators = list(info.actuator_names) if info and len(info.actuator_names) == n_a else [
        f"actuator{i}" for i in range(n_a)]
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["t_s", "seq", "mode", "source", *sensors,
                         *(f"ai.{a}" for a in actuators), "ai_anomaly",
                         *(f"applied.{a}" for a in actuators), "violations", "events",
                         "operator"])
        for f in frames:
            d = f.decision
            p = f.proposal
            values = p.values if p is not None else None
            if isinstance(values, np.ndarray) and values.shape == (n_a,):
                ai = [_cell(x) for x in values.tolist()]
            else:
                ai = [""] * n_a
            anomaly = "" if p is None else (str(p.anomaly) if p.anomaly is not None else (
                "" if isinstance(values, np.ndarray) and values.shape == (n_a,)
                else "wrong_output_shape"))
            events = "; ".join(f"{e.kind} {e.name}: {e.reason}" for e in d.events)
            operator = "; ".join(
                [f"{r.kind} by {r.requester}" + ("" if r.authorised else " (unauthorised)")
                 for r in f.requests]
                + [f"setpoint {actuators[iv.actuator] if 0 <= iv.actuator < n_a else iv.actuator}"
                   f"={'release' if iv.value is None else _cell(iv.value)}"
                   if isinstance(iv, SetpointChange)
                   else "write " + " ".join(_cell(x) for x in iv.command)
                   for iv in f.interventions])
            violations = "" if d.verdict is None else " ".join(d.verdict.violations)
            writer.writerow([_cell(f.now_s), f.seq, str(d.mode), str(d.source),
                             *(_cell(x) for x in np.asarray(f.snapshot.sensors).tolist()),
                             *ai, anomaly,
                             *(_cell(x) for x in d.command.tolist()), violations, events,
                             operator])
    return len(frames)

"""The AI policy as the gateway runs it: an ONNX model, verified at load, bounded at run time.

Loading (:func:`load_policy`) reads the model file once, checks the sha256 of exactly those bytes
against the hash pinned in the config, and hands the same bytes (never the path) to
onnxruntime, so the file cannot be swapped between the check and the load. Models with external
data, or whose single input/output does not match the configured tags, are refused. Every
failure surfaces as a :class:`ModelError`; no onnx, protobuf or onnxruntime exception leaks out.

Running (:meth:`OnnxPolicy.infer`) normalises the tag values, runs the model in one dedicated
worker thread and waits at most ``deadline_ms``. It never raises for anything the model or the
values do: it returns an :class:`Inference` carrying either the actuator values or one
:class:`InferenceAnomaly`, and the supervisor decides what to apply.

Normalisation, per tag::

    model_in = (x - input_offset) * input_scale          (float64, then cast to float32)
    actuator = model_out * output_scale + output_offset   (float32 widened to float64)
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import logging
import math
import os
import re
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

# protobuf ships no type information. `unused-ignore` keeps this line valid if the project later
# declares stubs or an override for it.
import google.protobuf.message  # type: ignore[import-untyped, unused-ignore]
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

    import numpy.typing as npt

__all__ = [
    "Inference",
    "InferenceAnomaly",
    "ModelError",
    "ModelFormatError",
    "ModelIntegrityError",
    "ModelNotFound",
    "OnnxPolicy",
    "OnnxPolicyConfig",
    "load_policy",
]

_log = logging.getLogger(__name__)

# Bound once: checked on every inference.
_isfinite = math.isfinite
_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)
_FLOAT64_MAX: Final = float(np.finfo(np.float64).max)

_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
# A serialised protobuf message cannot exceed 2 GiB, so no larger file can be a loadable model.
_MAX_MODEL_BYTES: Final = 2**31 - 1

# onnxruntime's native errors are pybind11 classes that derive straight from Exception, with no
# common base of their own; collect them from the binding module so that we catch exactly those
# (and the RuntimeError/ValueError its Python wrapper raises) rather than every Exception.
_ORT_NATIVE_ERRORS: Final[tuple[type[Exception], ...]] = tuple(
    obj for obj in vars(_ort_state).values() if isinstance(obj, type) and issubclass(obj, Exception)
)
_ORT_LOAD_ERRORS: Final[tuple[type[Exception], ...]] = (
    *_ORT_NATIVE_ERRORS,
    RuntimeError,
    ValueError,
)
_ORT_RUN_ERRORS: Final[tuple[type[Exception], ...]] = (*_ORT_NATIVE_ERRORS, RuntimeError)

# onnxruntime log severities: 3 = error, 4 = fatal. Load-time errors also come back as exceptions
# and run-time failures come back to the caller as an anomaly with the message in `detail`, so
# onnxruntime's own stderr lines would only duplicate them outside the gateway's logging.
_ORT_SESSION_LOG_SEVERITY: Final = 3
_ORT_RUN_LOG_SEVERITY: Final = 4


# --------------------------------------------------------------------------------------------
# Errors


class ModelError(Exception):
    """A policy model could not be loaded. Base of every error :func:`load_policy` raises."""


class ModelNotFound(ModelError):
    """No regular file at the model path: missing, or a directory, device or FIFO."""


class ModelFormatError(ModelError):
    """The bytes are not a usable ONNX policy.

    Not parseable, refused by onnxruntime, carrying external data, or declaring inputs/outputs
    that do not match the configured tags (count, rank, width or element type).
    """


class ModelIntegrityError(ModelError):
    """The file's sha256 differs from the pinned one: the model is not the one that was approved.

    ``path``, ``expected_sha256`` and ``actual_sha256`` are kept as attributes for incidents.
    """

    def __init__(self, path: Path, expected_sha256: str, actual_sha256: str) -> None:
        # All three go to Exception.args so that the error pickles and copies faithfully.
        super().__init__(path, expected_sha256, actual_sha256)
        self.path = path
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256

    def __str__(self) -> str:
        return (
            f"{self.path}: sha256 mismatch, expected {self.expected_sha256}, "
            f"file has {self.actual_sha256}"
        )


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, slots=True)
class OnnxPolicyConfig:
    """Which model to run, what it reads and writes, and how long it may take.

    ``model_path`` is the ONNX file; ``sha256`` its pinned hash, 64 lowercase hex digits.
    ``inputs`` are the tag names fed to the model, in the order of the model input's columns;
    ``outputs`` the actuator tag names, in the order of the model output's columns. A tag may
    appear in both (an actuator's position read back as an observation).

    ``input_offset``/``input_scale`` hold one value per input tag and
    ``output_offset``/``output_scale`` one per output tag (see the module docstring for the
    formulas); offsets are in the tag's engineering units, scales in model units per
    engineering unit (inputs) and engineering units per model unit (outputs).

    ``deadline_ms`` is the longest one :meth:`OnnxPolicy.infer` call may take, in milliseconds.

    Raises ``ValueError`` naming the field for: ``model_path`` not a ``pathlib.Path``; a
    ``sha256`` that is not 64 lowercase hex digits; ``inputs``/``outputs`` not a non-empty
    tuple of distinct non-empty strings; an offset/scale that is not a tuple of the matching
    length, holds a non-number (bools included) or a non-finite value, or a zero scale; a
    ``deadline_ms`` that is not a finite number > 0.
    """

    model_path: Path
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_offset: tuple[float, ...]
    input_scale: tuple[float, ...]
    output_offset: tuple[float, ...]
    output_scale: tuple[float, ...]
    deadline_ms: float

    def __post_init__(self) -> None:
        if not isinstance(self.model_path, Path):
            raise ValueError(
                f"`model_path` must be a pathlib.Path, got {type(self.model_path).__name__}"
            )
        if not isinstance(self.sha256, str) or _SHA256_HEX.fullmatch(self.sha256) is None:
            raise ValueError(f"`sha256` must be 64 lowercase hex digits, got {self.sha256!r}")
        _check_tags("inputs", self.inputs)
        _check_tags("outputs", self.outputs)
        _check_vector("input_offset", self.input_offset, len(self.inputs), nonzero=False)
        _check_vector("input_scale", self.input_scale, len(self.inputs), nonzero=True)
        _check_vector("output_offset", self.output_offset, len(self.outputs), nonzero=False)
        _check_vector("output_scale", self.output_scale, len(self.outputs), nonzero=True)
        deadline = self.deadline_ms
        if isinstance(deadline, bool) or not isinstance(deadline, int | float):
            raise ValueError(f"`deadline_ms` must be a number, got {type(deadline).__name__}")
        if not math.isfinite(deadline) or deadline <= 0:
            raise ValueError(f"`deadline_ms` must be finite and > 0, got {deadline!r}")


def _check_tags(name: str, tags: object) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``tags`` is a tuple of distinct names."""
    if not isinstance(tags, tuple) or len(tags) == 0:
        raise ValueError(f"`{name}` must be a non-empty tuple of tag names, got {tags!r}")
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"`{name}` must hold non-empty strings, got {tag!r}")
    if len(set(tags)) != len(tags):
        duplicates = sorted({tag for tag in tags if tags.count(tag) > 1})
        raise ValueError(f"`{name}` lists tags more than once: {duplicates}")


def _check_vector(name: str, values: object, length: int, *, nonzero: bool) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``values`` is ``length`` finite numbers."""
    if not isinstance(values, tuple):
        raise ValueError(f"`{name}` must be a tuple, got {type(values).__name__}")
    if len(values) != length:
        raise ValueError(f"`{name}` has {len(values)} values but {length} tags are configured")
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"`{name}[{index}]` must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"`{name}[{index}]` must be finite, got {value!r}")
        if nonzero and value == 0:
            raise ValueError(f"`{name}[{index}]` must not be zero")


# --------------------------------------------------------------------------------------------
# Results


class InferenceAnomaly(StrEnum):
    """Why an inference produced no actuator values. The values go into events and logs."""

    DEADLINE_MISSED = "deadline_missed"
    """No result within ``deadline_ms``, or a result that arrived too late (discarded)."""
    NONFINITE_OUTPUT = "nonfinite_output"
    """The model (or its denormalisation) produced NaN or an infinity."""
    WRONG_OUTPUT_SHAPE = "wrong_output_shape"
    """The model returned something other than one float32 array of shape (1, len(outputs))."""
    NONFINITE_INPUT = "nonfinite_input"
    """An input was NaN or infinite, or overflowed float32 once normalised; nothing was run."""
    RUNTIME_ERROR = "runtime_error"
    """onnxruntime reported an error while running the model."""
    BUSY = "busy"
    """An earlier call missed its deadline and its inference is still running; nothing was run."""


@dataclass(frozen=True, slots=True, eq=False)
class Inference:
    """The outcome of one policy evaluation.

    Exactly one of ``outputs`` and ``anomaly`` is set. ``outputs`` holds the actuator values in
    engineering units, float64, one per configured output tag, read-only. ``elapsed_ms`` is the
    time the call took by the policy's clock, in milliseconds. ``detail`` is a human-readable
    explanation for logs and incidents when there is an anomaly (``None`` otherwise).

    ``eq=False``: element-wise array comparison has no single truth value, so instances compare
    by identity. Raises ``ValueError`` if both or neither of ``outputs``/``anomaly`` are given.
    """

    outputs: npt.NDArray[np.float64] | None
    anomaly: InferenceAnomaly | None
    elapsed_ms: float
    detail: str | None = None

    def __post_init__(self) -> None:
        if (self.outputs is None) == (self.anomaly is None):
            raise ValueError("exactly one of `outputs` and `anomaly` must be set")


@dataclass(frozen=True, slots=True)
class _RunResult:
    """What one ``session.run`` gave: its return value, or the error text. Never both."""

    returned: object = None
    error: str | None = None


# --------------------------------------------------------------------------------------------
# Loading


def load_policy(
    config: OnnxPolicyConfig, *, clock: Callable[[], float] = time.perf_counter
) -> OnnxPolicy:
    """Load, verify and prepare the policy described by ``config``.

    Steps, each refusing the model on failure: read the file's bytes once; compare their sha256
    with ``config.sha256`` in constant time; parse them as ONNX; refuse any tensor stored as
    external data; check the model has exactly one input and one output, each float32 of shape
    ``[batch, width]`` where ``batch`` is symbolic, unknown or 1 and ``width`` equals the
    number of configured input (resp. output) tags; create the onnxruntime session from the same
    bytes (CPU only, one thread, sequential execution).

    Why *any* external data is refused, even inside the model's folder: the pinned hash covers
    the model file only, so an external weights file could be changed without the hash noticing;
    and the session is built from bytes, so onnxruntime has no folder to resolve such files
    against. Ship a single self-contained file (under protobuf's 2 GiB limit).

    ``clock`` is a monotonic clock in seconds, used to measure ``elapsed_ms``; see
    :class:`OnnxPolicy`.

    Raises :class:`ModelNotFound` if there is no regular file at the path (missing, a
    directory, a device or FIFO), :class:`ModelIntegrityError` on a hash mismatch (before
    anything parses the bytes), :class:`ModelFormatError` for everything the bytes themselves
    get wrong (including a file over protobuf's 2 GiB limit), and :class:`ModelError` for other
    OS errors while reading (permissions, I/O errors).
    """
    path = config.model_path
    data = _read_model_file(path)

    actual = hashlib.sha256(data).hexdigest()
    # Constant time, so that response timing does not reveal how much of a forged hash matched.
    if not hmac.compare_digest(actual, config.sha256):
        raise ModelIntegrityError(path, config.sha256, actual)

    try:
        model = onnx.load_model_from_string(data)
    except google.protobuf.message.DecodeError as exc:
        raise ModelFormatError(f"{path}: not a parseable ONNX model ({exc})") from exc
    _refuse_external_data(path, model)
    input_name = _check_single_io(path, model, "input", len(config.inputs), "inputs")
    output_name = _check_single_io(path, model, "output", len(config.outputs), "outputs")

    options = ort.SessionOptions()
    # One thread, sequential: onnxruntime's default pool keeps idle threads spinning (about one
    # core at a 1 kHz pace) and is slower for models this small. Deterministic compute lets an
    # offline replay (infer_sync) reproduce what ran online.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.use_deterministic_compute = True
    options.log_severity_level = _ORT_SESSION_LOG_SEVERITY
    try:
        # The verified bytes, never the path: the file may have changed since it was hashed.
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except _ORT_LOAD_ERRORS as exc:
        raise ModelFormatError(f"{path}: onnxruntime refused the model ({exc})") from exc

    # onnxruntime's view should agree with the graph we checked; if it does not (e.g. it treats
    # an initializer as an overridable input), refuse rather than guess which tensor to feed.
    session_inputs = [arg.name for arg in session.get_inputs()]
    session_outputs = [arg.name for arg in session.get_outputs()]
    if session_inputs != [input_name] or session_outputs != [output_name]:
        raise ModelFormatError(
            f"{path}: onnxruntime sees inputs {session_inputs} and outputs {session_outputs}, "
            f"the graph declares [{input_name!r}] and [{output_name!r}]"
        )

    _log.info("loaded ONNX policy %s (sha256 %s)", path, actual)
    return OnnxPolicy(
        config,
        session,
        input_name=input_name,
        output_name=output_name,
        model_sha256=actual,
        clock=clock,
    )


def _read_model_file(path: Path) -> bytes:
    """Read the whole model file once, refusing what cannot be a model before reading it.

    Opened non-blocking and checked with fstat on the same descriptor: a path that names a FIFO
    would otherwise hang start-up until a writer appears, and a device such as /dev/zero would
    be read until memory runs out. Raises as :func:`load_policy` documents.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise ModelNotFound(f"{path}: model file not found ({exc.strerror})") from exc
    except OSError as exc:
        raise ModelError(f"{path}: cannot open model file ({exc})") from exc
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise ModelNotFound(f"{path}: not a regular file (mode {stat.filemode(mode)})")
        with open(descriptor, "rb", closefd=False) as file:
            # One byte past the limit rather than trusting st_size: the file may grow meanwhile.
            data = file.read(_MAX_MODEL_BYTES + 1)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file ({exc})") from exc
    finally:
        os.close(descriptor)
    if len(data) > _MAX_MODEL_BYTES:
        raise ModelFormatError(
            f"{path}: larger than {_MAX_MODEL_BYTES} bytes, protobuf's limit for one ONNX model"
        )
    return data


def _refuse_external_data(path: Path, model: onnx.ModelProto) -> None:
    """Raise :class:`ModelFormatError` if any tensor in ``model`` stores its data externally.

    Looks at every place a tensor can live: graph initializers (dense and sparse), node
    attributes (single tensors, tensor lists, sparse tensors), subgraphs of control-flow nodes
    at any depth, and the bodies of model-local functions.
    """
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            location = next(
                (entry.value for entry in tensor.external_data if entry.key == "location"), "?"
            )
            raise ModelFormatError(
                f"{path}: tensor {tensor.name!r} keeps its data in an external file "
                f"({location!r}); external data is refused because the pinned sha256 covers "
                "the model file only and the model is loaded from its verified bytes"
            )


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Yield every tensor stored anywhere in ``model`` (iteratively: no recursion limit)."""
    graphs: list[onnx.GraphProto] = [model.graph]
    node_lists: list[Any] = [function.node for function in model.functions]
    while graphs or node_lists:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield sparse.values
                yield sparse.indices
            node_lists.append(graph.node)
            continue
        for node in node_lists.pop():
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                sparse_tensors = list(attribute.sparse_tensors)
                if attribute.HasField("sparse_tensor"):
                    sparse_tensors.append(attribute.sparse_tensor)
                for sparse in sparse_tensors:
                    yield sparse.values
                    yield sparse.indices
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)


def _check_single_io(
    path: Path, model: onnx.ModelProto, role: str, width: int, config_field: str
) -> str:
    """Check the model's only graph ``role`` ("input"/"output") and return its name.

    It must be a float32 tensor of shape ``[batch, width]``, ``batch`` symbolic, unknown or 1.
    Graph inputs that are initializers are constants with a default, not real inputs, and are
    skipped. Raises :class:`ModelFormatError` stating what the model declares and what the
    config expects.
    """
    graph = model.graph
    if role == "input":
        constants = {t.name for t in graph.initializer}
        constants.update(sparse.values.name for sparse in graph.sparse_initializer)
        declared = [value for value in graph.input if value.name not in constants]
    else:
        declared = list(graph.output)
    if len(declared) != 1:
        names = [value.name for value in declared]
        raise ModelFormatError(
            f"{path}: the model declares {len(declared)} {role}s {names}; "
            f"a policy has exactly one {role} of shape [N, {width}]"
        )
    value = declared[0]
    if not value.type.HasField("tensor_type"):
        raise ModelFormatError(f"{path}: model {role} {value.name!r} is not a tensor")
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        declared_type = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise ModelFormatError(
            f"{path}: model {role} {value.name!r} has element type {declared_type}; "
            "float32 (FLOAT) is required"
        )
    if not tensor_type.HasField("shape"):
        raise ModelFormatError(
            f"{path}: model {role} {value.name!r} declares no shape; [N, {width}] is required"
        )
    dims = list(tensor_type.shape.dim)
    shown = "[" + ", ".join(_dim_text(dim) for dim in dims) + "]"
    if len(dims) != 2:
        raise ModelFormatError(
            f"{path}: model {role} {value.name!r} has shape {shown} (rank {len(dims)}); "
            f"[N, {width}] is required"
        )
    batch, features = dims
    if batch.HasField("dim_value") and batch.dim_value != 1:
        raise ModelFormatError(
            f"{path}: model {role} {value.name!r} has shape {shown}, a fixed batch of "
            f"{batch.dim_value}; the batch dimension must be symbolic or 1"
        )
    if not features.HasField("dim_value") or features.dim_value != width:
        declared_width = features.dim_value if features.HasField("dim_value") else "unknown"
        raise ModelFormatError(
            f"{path}: model {role} {value.name!r} has shape {shown}, {declared_width} "
            f"features, but config `{config_field}` lists {width} tags"
        )
    name: str = value.name
    return name


def _dim_text(dim: onnx.TensorShapeProto.Dimension) -> str:
    """Render one dimension: its size, its symbolic name, or ``?``."""
    if dim.HasField("dim_value"):
        return str(dim.dim_value)
    if dim.HasField("dim_param"):
        return str(dim.dim_param)
    return "?"


# --------------------------------------------------------------------------------------------
# Running


class OnnxPolicy:
    """A loaded, verified policy. Build it with :func:`load_policy`.

    ``model_path`` and ``model_sha256`` (the hash of the bytes actually loaded) identify the
    model in the audit log and in incidents.

    :meth:`infer` is meant to be called from one thread (the control loop); it is not safe to
    call it from several threads at once. ``clock`` (seconds, monotonic) measures
    ``elapsed_ms``, and a call whose measured time exceeds ``deadline_ms`` has its result
    discarded, so a fake clock makes the late-result path testable without slow models. The
    wait itself is necessarily in real time.

    Use as a context manager, or call :meth:`close`, to release the worker thread.
    """

    def __init__(
        self,
        config: OnnxPolicyConfig,
        session: Any,
        *,
        input_name: str,
        output_name: str,
        model_sha256: str,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """Wrap an onnxruntime ``session`` already checked by :func:`load_policy`."""
        self.model_path: Final = config.model_path
        self.model_sha256: Final = model_sha256
        self._config = config
        self._session = session
        self._input_name = input_name
        self._output_names = [output_name]
        self._clock = clock
        self._deadline_ms = float(config.deadline_ms)
        self._deadline_s = self._deadline_ms / 1000.0
        self._n_inputs = len(config.inputs)
        self._n_outputs = len(config.outputs)
        self._input_offset = np.array(config.input_offset, dtype=np.float64)
        self._input_scale = np.array(config.input_scale, dtype=np.float64)
        self._output_offset = np.array(config.output_offset, dtype=np.float64)
        self._output_scale = np.array(config.output_scale, dtype=np.float64)
        # |float32| <= _FLOAT32_MAX, so when this bound is finite a finite model output always
        # denormalises to finite values and _finish can skip the overflow guard. Python floats
        # overflow to inf silently, which is what this test relies on.
        worst = max(abs(v) for v in config.output_scale) * _FLOAT32_MAX + max(
            abs(v) for v in config.output_offset
        )
        self._output_cannot_overflow = worst < _FLOAT64_MAX
        # One worker: inference is serial by nature, and a run that overstays its deadline must
        # not be joined by more runs piling up behind it (see `busy`).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-policy")
        # Start the worker now rather than inside the first control cycle's deadline.
        self._executor.submit(_nothing).result()
        self._abandoned: Future[_RunResult] | None = None
        self._abandoned_options: Any = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the worker thread without waiting for a run in progress. Idempotent.

        An abandoned run is asked to stop (onnxruntime checks between operators and between
        loop iterations); one operator still computing finishes first, and Python waits for
        the worker at interpreter exit, so a single never-ending operator would delay exit.
        """
        if self._closed:
            return
        self._closed = True
        if self._abandoned_options is not None:
            self._abandoned_options.terminate = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def busy(self) -> bool:
        """True while a run abandoned at its deadline is still executing."""
        return self._abandoned is not None and not self._abandoned.done()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` real seconds for an abandoned run to end; True if idle.

        For orderly shutdown and tests. Raises ``ValueError`` if ``timeout_s`` is negative or
        not finite.
        """
        if not math.isfinite(timeout_s) or timeout_s < 0:
            raise ValueError(f"`timeout_s` must be finite and >= 0, got {timeout_s!r}")
        abandoned = self._abandoned
        if abandoned is None:
            return True
        concurrent.futures.wait([abandoned], timeout=timeout_s)
        return abandoned.done()

    # -- inference ----------------------------------------------------------------------------

    def infer(self, inputs: npt.NDArray[np.float64]) -> Inference:
        """Evaluate the policy on one observation, waiting at most ``deadline_ms``.

        ``inputs`` holds the configured input tags' values in engineering units, float64, in
        ``config.inputs`` order. Returns an :class:`Inference` with the actuator values, or with
        an anomaly and no values:

        - ``busy``: a previous call's run is still going; nothing is run, at once;
        - ``nonfinite_input``: NaN/inf in ``inputs``, or a value that overflows float32 once
          normalised; the model is not run;
        - ``deadline_missed``: no result within ``deadline_ms``, the run is abandoned (and asked
          to stop) and this returns without waiting for it; or the result came but the whole
          call took longer than ``deadline_ms`` by ``clock``, and it is discarded;
        - ``runtime_error``, ``wrong_output_shape``, ``nonfinite_output``: see
          :class:`InferenceAnomaly`.

        Raises ``ValueError`` only for caller bugs: ``inputs`` not a 1-D float64 ndarray of
        ``len(config.inputs)`` values, or the policy already closed.
        """
        start = self._clock()
        self._check_call(inputs)
        if self._abandoned is not None:
            if not self._abandoned.done():
                return self._anomaly(
                    InferenceAnomaly.BUSY, start, "a run abandoned at its deadline is still going"
                )
            # Its result, if any, is stale by now and is dropped unread.
            self._abandoned = None
            self._abandoned_options = None
        model_in = self._normalise(inputs, start)
        if isinstance(model_in, Inference):
            return model_in

        run_options = self._run_options()
        future = self._executor.submit(self._run, model_in, run_options)
        try:
            result = future.result(timeout=self._deadline_s)
        except TimeoutError:
            # Its output would be discarded anyway: free the worker (and the CPU) as soon as
            # onnxruntime reaches its next check, instead of letting it run to the end.
            run_options.terminate = True
            self._abandoned = future
            self._abandoned_options = run_options
            return self._anomaly(
                InferenceAnomaly.DEADLINE_MISSED,
                start,
                f"no result within {self._deadline_ms:g} ms; run abandoned",
            )
        inference = self._finish(result, start)
        if inference.outputs is not None and inference.elapsed_ms > self._deadline_ms:
            # A late action is not used, even if valid: the cycle it was computed for is over.
            # (A late anomaly keeps its own, more telling, name.)
            return Inference(
                outputs=None,
                anomaly=InferenceAnomaly.DEADLINE_MISSED,
                elapsed_ms=inference.elapsed_ms,
                detail=(
                    f"result after {inference.elapsed_ms:.3f} ms, deadline "
                    f"{self._deadline_ms:g} ms; discarded"
                ),
            )
        return inference

    def infer_sync(self, inputs: npt.NDArray[np.float64]) -> Inference:
        """Evaluate the policy in the calling thread, without a deadline.

        For offline replay and benchmarks: same normalisation and output checks as
        :meth:`infer`, never ``busy`` or ``deadline_missed`` (it can run while an abandoned
        run is still going: onnxruntime sessions accept concurrent runs). Blocks for as long as
        the model takes. Raises ``ValueError`` as :meth:`infer` does.
        """
        start = self._clock()
        self._check_call(inputs)
        model_in = self._normalise(inputs, start)
        if isinstance(model_in, Inference):
            return model_in
        return self._finish(self._run(model_in, self._run_options()), start)

    # -- helpers ------------------------------------------------------------------------------

    def _check_call(self, inputs: object) -> None:
        """Raise ``ValueError`` for a closed policy or a malformed ``inputs`` array."""
        if self._closed:
            # ValueError, as for I/O on a closed file.
            raise ValueError(f"policy {self.model_path} is closed")
        if not isinstance(inputs, np.ndarray):
            raise ValueError(f"`inputs` must be a numpy array, got {type(inputs).__name__}")
        if inputs.dtype != np.float64 or inputs.shape != (self._n_inputs,):
            raise ValueError(
                f"`inputs` must be float64 of shape ({self._n_inputs},), "
                f"got {inputs.dtype} of shape {inputs.shape}"
            )

    def _normalise(
        self, inputs: npt.NDArray[np.float64], start: float
    ) -> npt.NDArray[np.float32] | Inference:
        """Return the model's float32 input row, or a ``nonfinite_input`` anomaly."""
        # Overflow is detected just below; numpy's warning would only add noise (and is an error
        # under the test suite's warning filter).
        with np.errstate(over="ignore", invalid="ignore"):
            model_in = ((inputs - self._input_offset) * self._input_scale).astype(np.float32)
        # One check covers both NaN/inf inputs (they propagate) and finite values that overflow
        # on the way: a float64 sum of float32 values is finite exactly when all of them are.
        if _isfinite(model_in.sum(dtype=np.float64)):
            return model_in.reshape(1, self._n_inputs)
        raw_bad = ~np.isfinite(inputs)
        if raw_bad.any():
            bad = [self._config.inputs[i] for i in np.flatnonzero(raw_bad)]
            detail = f"not finite: {bad}"
        else:
            bad = [self._config.inputs[i] for i in np.flatnonzero(~np.isfinite(model_in))]
            detail = f"overflow float32 once normalised: {bad}"
        return self._anomaly(InferenceAnomaly.NONFINITE_INPUT, start, detail)

    def _run_options(self) -> Any:
        """Fresh RunOptions per run, so that terminating one run cannot affect another."""
        options = ort.RunOptions()
        options.log_severity_level = _ORT_RUN_LOG_SEVERITY
        return options

    def _run(self, model_in: npt.NDArray[np.float32], run_options: Any) -> _RunResult:
        """Run the session once; onnxruntime's errors become data (this runs in the worker)."""
        try:
            returned = self._session.run(
                self._output_names, {self._input_name: model_in}, run_options
            )
        except _ORT_RUN_ERRORS as exc:
            return _RunResult(error=f"{type(exc).__name__}: {exc}")
        return _RunResult(returned=returned)

    def _finish(self, result: _RunResult, start: float) -> Inference:
        """Check a run's result and convert it to actuator values."""
        if result.error is not None:
            return self._anomaly(InferenceAnomaly.RUNTIME_ERROR, start, result.error)
        returned = result.returned
        expected_shape = (1, self._n_outputs)
        raw = returned[0] if isinstance(returned, list) and len(returned) == 1 else returned
        if (
            not isinstance(raw, np.ndarray)
            or raw.dtype != np.float32
            or raw.shape != expected_shape
        ):
            shape = raw.shape if isinstance(raw, np.ndarray) else type(raw).__name__
            dtype = raw.dtype if isinstance(raw, np.ndarray) else "-"
            return self._anomaly(
                InferenceAnomaly.WRONG_OUTPUT_SHAPE,
                start,
                f"model returned {dtype} {shape}, expected float32 {expected_shape}",
            )
        if self._output_cannot_overflow and _isfinite(raw.sum(dtype=np.float64)):
            # Finite float32 values and bounded scales: the result is finite, no check needed.
            outputs = raw[0].astype(np.float64) * self._output_scale + self._output_offset
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                outputs = raw[0].astype(np.float64) * self._output_scale + self._output_offset
            if not np.isfinite(outputs).all():
                bad = [self._config.outputs[i] for i in np.flatnonzero(~np.isfinite(outputs))]
                return self._anomaly(InferenceAnomaly.NONFINITE_OUTPUT, start, f"not finite: {bad}")
        outputs.flags.writeable = False
        return Inference(outputs=outputs, anomaly=None, elapsed_ms=self._elapsed_ms(start))

    def _anomaly(self, anomaly: InferenceAnomaly, start: float, detail: str) -> Inference:
        return Inference(
            outputs=None, anomaly=anomaly, elapsed_ms=self._elapsed_ms(start), detail=detail
        )

    def _elapsed_ms(self, start: float) -> float:
        return (self._clock() - start) * 1000.0


def _nothing() -> None:
    """A no-op task: submitting it makes the executor start its worker thread."""

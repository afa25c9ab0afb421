"""Tests for the verified, deadline-bounded ONNX policy, against real onnxruntime and real files.

Graphs come from :mod:`simulators.zoo.graphs` where the zoo has them; the special-purpose ones
(NaN-producing, slow, failing at run time, external data) are built here with ``onnx.helper``.
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from gateway.control.onnx_policy import (
    Inference,
    InferenceAnomaly,
    ModelError,
    ModelFormatError,
    ModelIntegrityError,
    ModelNotFound,
    OnnxPolicy,
    OnnxPolicyConfig,
    load_policy,
)
from simulators.zoo import graphs

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# ----------------------------------------------------------------------------------------------
# Helpers


def _model(
    nodes: Sequence[onnx.NodeProto],
    n_inputs: int,
    n_outputs: int,
    initializers: Sequence[onnx.TensorProto] = (),
    input_type: int = TensorProto.FLOAT,
    output_type: int = TensorProto.FLOAT,
    input_shape: list[int | str] | None = None,
    output_shape: list[int | str] | None = None,
) -> onnx.ModelProto:
    """A model with one input ``obs`` and one output ``action`` (default shapes [N, n])."""
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info("obs", input_type, input_shape or ["N", n_inputs])],
        [helper.make_tensor_value_info("action", output_type, output_shape or ["N", n_outputs])],
        initializer=list(initializers),
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", graphs.OPSET_VERSION)],
        ir_version=graphs.IR_VERSION,
    )


def _write(
    directory: Path, model_or_bytes: onnx.ModelProto | bytes, name: str = "policy.onnx"
) -> tuple[Path, str]:
    data = model_or_bytes if isinstance(model_or_bytes, bytes) else graphs.serialize(model_or_bytes)
    path = directory / name
    path.write_bytes(data)
    return path, graphs.sha256_hex(data)


def _config(
    path: Path, digest: str, n_inputs: int, n_outputs: int, /, **overrides: Any
) -> OnnxPolicyConfig:
    fields: dict[str, Any] = {
        "model_path": path,
        "sha256": digest,
        "inputs": tuple(f"in{i}" for i in range(n_inputs)),
        "outputs": tuple(f"out{i}" for i in range(n_outputs)),
        "input_offset": (0.0,) * n_inputs,
        "input_scale": (1.0,) * n_inputs,
        "output_offset": (0.0,) * n_outputs,
        "output_scale": (1.0,) * n_outputs,
        "deadline_ms": 100.0,
    }
    fields.update(overrides)
    return OnnxPolicyConfig(**fields)


def _load(
    directory: Path, model: onnx.ModelProto, n_inputs: int, n_outputs: int, **overrides: Any
) -> OnnxPolicy:
    path, sha = _write(directory, model)
    return load_policy(_config(path, sha, n_inputs, n_outputs, **overrides))


def _identity(n: int = 2) -> onnx.ModelProto:
    return graphs.linear(np.eye(n), np.zeros(n))


def _log_model() -> onnx.ModelProto:
    """action = log(obs): NaN for a negative input, -inf for zero."""
    return _model([helper.make_node("Log", ["obs"], ["action"])], 2, 2)


def _slow_model(matrix_size: int = 1024) -> onnx.ModelProto:
    """action = obs, after max(obs) iterations of a (size x size) MatMul (~36 ms each here).

    The work depends on the input, so onnxruntime cannot fold it away at load, and an input of
    zeros runs no iteration at all (fast). A Loop lets onnxruntime stop between iterations.
    """
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["acc_in", "zero"], ["acc0"]),
            helper.make_node("Expand", ["acc0", "shape"], ["m"]),
            helper.make_node("MatMul", ["m", "m"], ["p"]),
            helper.make_node("ReduceSum", ["p"], ["acc_out"], keepdims=0),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
    )
    initializers = [
        numpy_helper.from_array(np.array([matrix_size, matrix_size], np.int64), "shape"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(True), "true"),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["obs"], ["most"], keepdims=0),
        helper.make_node("Cast", ["most"], ["trips"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trips", "true", "zero"], ["total"], body=body),
        helper.make_node("Add", ["obs", "total"], ["action"]),
    ]
    return _model(nodes, 2, 2, initializers)


def _gather_model() -> onnx.ModelProto:
    """action = table[int(obs)]: a runtime error for an index outside the 5-entry table."""
    initializers = [numpy_helper.from_array(np.arange(5, dtype=np.float32), "table")]
    nodes = [
        helper.make_node("Cast", ["obs"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["action"]),
    ]
    return _model(nodes, 2, 2, initializers)


def _variable_width_model() -> onnx.ModelProto:
    """Declares [N, 2] but returns [1, int(max(obs))] columns of (obs, obs, obs)."""
    initializers = [
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    nodes = [
        helper.make_node("Concat", ["obs", "obs", "obs"], ["wide"], axis=1),
        helper.make_node("ReduceMax", ["obs"], ["most"], keepdims=0),
        helper.make_node("Cast", ["most"], ["most_int"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["most_int", "one"], ["ends"]),
        helper.make_node("Slice", ["wide", "starts", "ends", "axes"], ["action"]),
    ]
    return _model(nodes, 2, 2, initializers)


class _StepClock:
    """A fake monotonic clock that advances ``step_s`` each time it is read."""

    def __init__(self, step_s: float) -> None:
        self.now_s = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now_s += self.step_s
        return self.now_s


# ----------------------------------------------------------------------------------------------
# Computation


def test_linear_policy_gives_hand_computed_output_with_normalisation(tmp_path):
    # model_in = ([10, 20] - [8, 10]) * [0.5, 0.1] = [1, 1]
    # model_out = [1, 1] @ [[1, 2], [3, 4]] + [0.5, -1] = [4.5, 5]
    # actuator = [4.5, 5] * [2, 10] + [100, 0] = [109, 50]
    model = graphs.linear(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, -1.0]))
    overrides = {
        "input_offset": (8.0, 10.0),
        "input_scale": (0.5, 0.1),
        "output_offset": (100.0, 0.0),
        "output_scale": (2.0, 10.0),
    }
    with _load(tmp_path, model, 2, 2, **overrides) as policy:
        for result in (
            policy.infer(np.array([10.0, 20.0])),
            policy.infer_sync(np.array([10.0, 20.0])),
        ):
            assert result.anomaly is None
            assert result.detail is None
            assert result.outputs is not None
            assert result.outputs.dtype == np.float64
            np.testing.assert_allclose(result.outputs, [109.0, 50.0], rtol=1e-6)
            assert not result.outputs.flags.writeable
            assert result.elapsed_ms >= 0.0


def test_policy_exposes_path_and_hash_of_loaded_bytes(tmp_path):
    path, sha = _write(tmp_path, _identity())
    with load_policy(_config(path, sha, 2, 2)) as policy:
        assert policy.model_path == path
        assert policy.model_sha256 == sha


def test_mlp_matches_numpy_reference(tmp_path):
    rng = np.random.default_rng(7)
    sizes = [8, 64, 64, 4]
    layers = [
        (rng.normal(size=(a, b)) / math.sqrt(a), rng.normal(size=b) * 0.1)
        for a, b in itertools.pairwise(sizes)
    ]
    x = rng.normal(size=8)
    activations: tuple[tuple[graphs.Activation, Callable[[Any], Any]], ...] = (
        ("tanh", np.tanh),
        ("relu", lambda v: np.maximum(v, 0.0)),
    )
    for activation, act in activations:
        expected = x
        for index, (w, b) in enumerate(layers):
            expected = expected @ w + b
            if index < len(layers) - 1:
                expected = act(expected)
        with _load(tmp_path, graphs.mlp(layers, activation), 8, 4) as policy:
            result = policy.infer_sync(x)
        assert result.outputs is not None
        np.testing.assert_allclose(result.outputs, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def affine_policy(tmp_path_factory):
    """A 3-in, 2-out linear policy with non-trivial normalisation, and its float64 reference."""
    gain = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]])
    bias = np.array([0.1, -0.2])
    in_offset, in_scale = np.array([5.0, -3.0, 100.0]), np.array([0.2, 4.0, 0.01])
    out_offset, out_scale = np.array([50.0, 0.0]), np.array([10.0, -2.0])
    path, sha = _write(tmp_path_factory.mktemp("affine"), graphs.linear(gain, bias))
    config = _config(
        path,
        sha,
        3,
        2,
        input_offset=tuple(in_offset),
        input_scale=tuple(in_scale),
        output_offset=tuple(out_offset),
        output_scale=tuple(out_scale),
    )

    def reference(x):
        return (((x - in_offset) * in_scale) @ gain + bias) * out_scale + out_offset

    with load_policy(config) as policy:
        yield policy, reference


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3))
def test_normalisation_agrees_with_float64_reference(affine_policy, values):
    policy, reference = affine_policy
    x = np.array(values)
    result = policy.infer_sync(x)
    assert result.outputs is not None
    # The model computes in float32: agreement to float32 precision, relative to the magnitudes
    # that went into the sum.
    np.testing.assert_allclose(result.outputs, reference(x), rtol=1e-5, atol=1e-3)


def test_graphs_serialize_deterministically():
    weights = [(np.arange(6.0).reshape(2, 3), np.ones(3)), (np.ones((3, 1)), np.zeros(1))]
    first = graphs.serialize(graphs.mlp(weights, "relu"))
    second = graphs.serialize(graphs.mlp(weights, "relu"))
    assert first == second
    assert graphs.sha256_hex(first) == graphs.sha256_hex(second)
    assert len(graphs.sha256_hex(first)) == 64
    model = onnx.load_model_from_string(first)
    assert model.ir_version == graphs.IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", graphs.OPSET_VERSION)]


@pytest.mark.parametrize(
    ("weights", "activation", "message"),
    [
        ([], "tanh", "at least one"),
        ([(np.ones((2, 3)), np.ones(2))], "tanh", "bias has 2 values"),
        ([(np.ones(3), np.ones(3))], "tanh", "2-D"),
        ([(np.ones((2, 3)), np.ones((3, 1)))], "tanh", "1-D"),
        ([(np.ones((2, 3)), np.ones(3)), (np.ones((4, 1)), np.ones(1))], "tanh", "takes 4"),
        ([(np.ones((2, 3)), np.ones(3))], "sigmoid", "activation"),
    ],
)
def test_mlp_rejects_malformed_layers(weights, activation, message):
    with pytest.raises(ValueError, match=message):
        graphs.mlp(weights, activation)


# ----------------------------------------------------------------------------------------------
# Integrity


@pytest.fixture
def session_spy(monkeypatch):
    """Record the type of the first argument of every InferenceSession(), then delegate."""
    seen: list[type] = []
    real = onnxruntime.InferenceSession

    def spy(*args, **kwargs):
        seen.append(type(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return seen


def test_hash_mismatch_is_refused_before_any_session(tmp_path, session_spy):
    data = graphs.serialize(_identity())
    sha = graphs.sha256_hex(data)
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x01
    path, actual = _write(tmp_path, bytes(tampered))
    with pytest.raises(ModelIntegrityError) as caught:
        load_policy(_config(path, sha, 2, 2))
    message = str(caught.value)
    assert sha in message
    assert actual in message
    assert str(path) in message
    assert (caught.value.expected_sha256, caught.value.actual_sha256) == (sha, actual)
    assert session_spy == []
    # Incidents may be queued or sent elsewhere: the error survives a pickle round trip.
    assert str(pickle.loads(pickle.dumps(caught.value))) == message


def test_file_is_read_once_and_those_bytes_are_what_runs(tmp_path, monkeypatch, session_spy):
    opened: list[str] = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    doubling = graphs.linear(2.0 * np.eye(2), np.zeros(2))
    path, sha = _write(tmp_path, doubling)

    # Swap the file for another model the moment onnxruntime is called: only a load from the
    # hashed bytes (not from the path) still runs the doubling model.
    real_spy = onnxruntime.InferenceSession

    def swapping(*args, **kwargs):
        path.write_bytes(graphs.serialize(graphs.linear(-np.eye(2), np.zeros(2))))
        return real_spy(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", swapping)
    with load_policy(_config(path, sha, 2, 2)) as policy:
        result = policy.infer(np.array([1.0, 3.0]))
    assert opened.count(str(path)) == 1
    assert session_spy == [bytes]
    assert result.outputs is not None
    np.testing.assert_allclose(result.outputs, [2.0, 6.0])


def _externalise(tensor: onnx.TensorProto, location: str) -> None:
    """Mark ``tensor`` as stored in an external file at ``location``."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key = "location"
    entry.value = location


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, session_spy, location):
    model = _identity()
    _externalise(model.graph.initializer[0], location)
    path, sha = _write(tmp_path, model)
    with pytest.raises(ModelFormatError, match="external") as caught:
        load_policy(_config(path, sha, 2, 2))
    assert location in str(caught.value)
    assert session_spy == []


def test_external_data_inside_the_folder_is_refused_too(tmp_path, session_spy):
    # A genuine model with its weights next to it: still refused, since the pinned hash does not
    # cover the weights file.
    path = tmp_path / "policy.onnx"
    onnx.save_model(
        _identity(), path, save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    assert (tmp_path / "weights.bin").exists()
    sha = graphs.sha256_hex(path.read_bytes())
    with pytest.raises(ModelFormatError, match=r"weights\.bin"):
        load_policy(_config(path, sha, 2, 2))
    assert session_spy == []


def test_external_data_in_a_subgraph_attribute_is_refused(tmp_path):
    # A Constant inside an If branch: only reachable by walking node attributes and subgraphs.
    constant = numpy_helper.from_array(np.zeros(2, np.float32), "hidden")
    _externalise(constant, "../hidden.bin")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=constant)],
        "branch",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])],
    )
    model = _model(
        [
            helper.make_node("ReduceMax", ["obs"], ["m"], keepdims=0),
            helper.make_node("Cast", ["m"], ["flag"], to=TensorProto.BOOL),
            helper.make_node("If", ["flag"], ["c"], then_branch=branch, else_branch=branch),
            helper.make_node("Add", ["obs", "c"], ["action"]),
        ],
        2,
        2,
    )
    path, sha = _write(tmp_path, model)
    with pytest.raises(ModelFormatError, match="hidden"):
        load_policy(_config(path, sha, 2, 2))


@pytest.mark.parametrize(
    "data", [b"\x00\x01\x02 definitely not onnx", b"", b"\x08\x08"], ids=["garbage", "empty", "ir"]
)
def test_unusable_bytes_are_a_format_error(tmp_path, data):
    path, sha = _write(tmp_path, data)
    with pytest.raises(ModelFormatError):
        load_policy(_config(path, sha, 2, 2))


def test_model_onnxruntime_cannot_run_is_a_format_error(tmp_path):
    model = _model([helper.make_node("NoSuchOperator", ["obs"], ["action"])], 2, 2)
    path, sha = _write(tmp_path, model)
    with pytest.raises(ModelFormatError, match="onnxruntime refused"):
        load_policy(_config(path, sha, 2, 2))


def test_missing_file_and_non_regular_files_are_not_found(tmp_path):
    sha = "0" * 64
    with pytest.raises(ModelNotFound, match=r"missing\.onnx"):
        load_policy(_config(tmp_path / "missing.onnx", sha, 2, 2))
    with pytest.raises(ModelNotFound, match="regular file"):
        load_policy(_config(tmp_path, sha, 2, 2))
    with pytest.raises(ModelNotFound, match="regular file"):
        load_policy(_config(Path(os.devnull), sha, 2, 2))
    assert issubclass(ModelNotFound, ModelError)


def test_fifo_is_refused_without_blocking(tmp_path):
    # Opening a FIFO for reading normally blocks until a writer appears: start-up would hang.
    fifo = tmp_path / "policy.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ModelNotFound, match="regular file"):
        load_policy(_config(fifo, "0" * 64, 2, 2))


# ----------------------------------------------------------------------------------------------
# Declared inputs and outputs


def test_input_count_mismatch_names_both_numbers(tmp_path):
    path, sha = _write(tmp_path, graphs.linear(np.ones((3, 2)), np.zeros(2)))
    with pytest.raises(ModelFormatError) as caught:
        load_policy(_config(path, sha, 2, 2))
    message = str(caught.value)
    assert "[N, 3], 3 features" in message
    assert "`inputs` lists 2 tags" in message


def test_output_count_mismatch_names_both_numbers(tmp_path):
    path, sha = _write(tmp_path, graphs.linear(np.ones((2, 4)), np.zeros(4)))
    with pytest.raises(ModelFormatError, match=r"\[N, 4\], 4 features.*`outputs` lists 1 tags"):
        load_policy(_config(path, sha, 2, 1))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            _model(
                [helper.make_node("Identity", ["obs"], ["action"])],
                2,
                2,
                input_type=TensorProto.DOUBLE,
                output_type=TensorProto.DOUBLE,
            ),
            "DOUBLE",
        ),
        (
            _model([helper.make_node("Identity", ["obs"], ["action"])], 2, 2, input_shape=[2]),
            "rank 1",
        ),
        (
            _model(
                [helper.make_node("Identity", ["obs"], ["action"])],
                2,
                2,
                input_shape=[4, 2],
                output_shape=[4, 2],
            ),
            "fixed batch of 4",
        ),
        (
            _model(
                [helper.make_node("Identity", ["obs"], ["action"])], 2, 2, input_shape=["N", "K"]
            ),
            "unknown features",
        ),
    ],
    ids=["float64", "rank-1", "fixed-batch", "symbolic-width"],
)
def test_declared_io_must_be_float32_batch_by_width(tmp_path, model, message):
    path, sha = _write(tmp_path, model)
    with pytest.raises(ModelFormatError, match=message):
        load_policy(_config(path, sha, 2, 2))


def test_two_graph_outputs_are_refused(tmp_path):
    model = _identity()
    model.graph.node.append(helper.make_node("Identity", ["obs"], ["extra"]))
    model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 2]))
    path, sha = _write(tmp_path, model)
    with pytest.raises(ModelFormatError, match="2 outputs"):
        load_policy(_config(path, sha, 2, 2))


def test_batch_of_one_is_accepted(tmp_path):
    model = _model(
        [helper.make_node("Identity", ["obs"], ["action"])],
        2,
        2,
        input_shape=[1, 2],
        output_shape=[1, 2],
    )
    with _load(tmp_path, model, 2, 2) as policy:
        result = policy.infer(np.array([1.0, 2.0]))
    assert result.outputs is not None
    np.testing.assert_array_equal(result.outputs, [1.0, 2.0])


# ----------------------------------------------------------------------------------------------
# Anomalies: reported, never raised


@pytest.mark.parametrize(("value", "kind"), [(-1.0, "NaN"), (0.0, "-inf")])
def test_nonfinite_output_is_an_anomaly(tmp_path, value, kind):
    with _load(tmp_path, _log_model(), 2, 2) as policy:
        for result in (
            policy.infer(np.array([1.0, value])),
            policy.infer_sync(np.array([1.0, value])),
        ):
            assert result.outputs is None, kind
            assert result.anomaly is InferenceAnomaly.NONFINITE_OUTPUT
            assert result.detail is not None
            assert "out1" in result.detail
            assert "out0" not in result.detail


def test_nan_weights_give_nonfinite_output(tmp_path):
    model = graphs.linear(np.eye(2), np.array([0.0, math.nan]))
    with _load(tmp_path, model, 2, 2) as policy:
        assert policy.infer(np.zeros(2)).anomaly is InferenceAnomaly.NONFINITE_OUTPUT


def test_output_overflowing_on_denormalisation_is_nonfinite_output(tmp_path):
    # A finite model output times a huge (but valid) scale: caught, and no numpy warning (which
    # this suite turns into an error) escapes.
    model = graphs.linear(np.eye(2), np.array([1e30, 1.0]))
    with _load(tmp_path, model, 2, 2, output_scale=(1e300, 1.0)) as policy:
        result = policy.infer(np.zeros(2))
    assert result.anomaly is InferenceAnomaly.NONFINITE_OUTPUT
    assert result.detail is not None
    assert "out0" in result.detail
    assert "out1" not in result.detail


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_input_is_an_anomaly_and_not_run(tmp_path, monkeypatch, value):
    with _load(tmp_path, _identity(), 2, 2) as policy:
        monkeypatch.setattr(policy, "_run", None)  # any attempt to run would fail loudly
        result = policy.infer(np.array([0.0, value]))
    assert result.anomaly is InferenceAnomaly.NONFINITE_INPUT
    assert result.outputs is None
    assert result.detail is not None
    assert "in1" in result.detail


def test_input_overflowing_float32_after_scaling_is_nonfinite_input(tmp_path):
    with _load(tmp_path, _identity(), 2, 2, input_scale=(1.0, 1e10)) as policy:
        result = policy.infer(np.array([0.0, 1e30]))
    assert result.anomaly is InferenceAnomaly.NONFINITE_INPUT
    assert result.detail is not None
    assert "float32" in result.detail


def test_runtime_failure_is_an_anomaly(tmp_path):
    with _load(tmp_path, _gather_model(), 2, 2) as policy:
        fine = policy.infer(np.array([1.0, 4.0]))
        failed = policy.infer(np.array([1.0, 100.0]))
        failed_sync = policy.infer_sync(np.array([1.0, 100.0]))
        again = policy.infer(np.array([2.0, 3.0]))
    assert fine.outputs is not None
    np.testing.assert_array_equal(fine.outputs, [1.0, 4.0])
    for result in (failed, failed_sync):
        assert result.anomaly is InferenceAnomaly.RUNTIME_ERROR
        assert result.detail is not None
        assert "out of" in result.detail  # onnxruntime's own words reach the incident
    assert again.outputs is not None


def test_output_of_undeclared_shape_is_an_anomaly(tmp_path):
    with _load(tmp_path, _variable_width_model(), 2, 2) as policy:
        fine = policy.infer(np.array([2.0, 1.0]))
        wide = policy.infer(np.array([3.0, 1.0]))
    assert fine.outputs is not None
    assert wide.anomaly is InferenceAnomaly.WRONG_OUTPUT_SHAPE
    assert wide.detail is not None
    assert "(1, 3)" in wide.detail


@pytest.mark.parametrize(
    "inputs",
    [
        np.zeros(3),
        np.zeros(1),
        np.zeros((1, 2)),
        np.zeros(2, dtype=np.float32),
        np.zeros(2, dtype=np.int64),
        [0.0, 0.0],
    ],
    ids=["too-long", "too-short", "2-D", "float32", "int64", "list"],
)
def test_malformed_inputs_are_a_caller_bug(tmp_path, inputs):
    with _load(tmp_path, _identity(), 2, 2) as policy:
        with pytest.raises(ValueError, match="`inputs`"):
            policy.infer(inputs)
        with pytest.raises(ValueError, match="`inputs`"):
            policy.infer_sync(inputs)


def test_closed_policy_refuses_calls(tmp_path):
    with _load(tmp_path, _identity(), 2, 2) as policy:
        pass
    policy.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        policy.infer(np.zeros(2))


# ----------------------------------------------------------------------------------------------
# Deadline


# Deadlines here are 50 ms, not tighter: the calls that must succeed share two cores with
# whatever else CI runs, and 5 ms (even 20 ms) for a 0.1 ms model proved flaky under load, the
# thread hand-off waiting for a time slice. Eight slow iterations take 0.3 s or more (36 ms each
# on an idle development machine), so the slow input misses the deadline by a wide margin.


def test_missed_deadline_returns_at_once_then_busy_then_recovers(tmp_path):
    with _load(tmp_path, _slow_model(), 2, 2, deadline_ms=50.0) as policy:
        # onnxruntime allocates on a session's first run: do that outside any deadline.
        assert policy.infer_sync(np.zeros(2)).outputs is not None

        started = time.perf_counter()
        missed = policy.infer(np.array([8.0, 0.0]))  # 8 iterations: ~290 ms if left to run
        wall_ms = (time.perf_counter() - started) * 1000.0
        assert missed.anomaly is InferenceAnomaly.DEADLINE_MISSED
        assert missed.outputs is None
        assert missed.elapsed_ms >= 50.0
        assert wall_ms < 150.0  # the deadline, not the model, bounds the call

        busy = policy.infer(np.zeros(2))
        assert busy.anomaly is InferenceAnomaly.BUSY
        assert busy.outputs is None
        assert policy.busy

        assert policy.wait_idle(timeout_s=5.0)
        assert not policy.busy
        recovered = policy.infer(np.array([-2.0, 0.5]))  # max 0.5: no iteration
        assert recovered.anomaly is None
        assert recovered.outputs is not None
        np.testing.assert_array_equal(recovered.outputs, [-2.0, 0.5])


def test_close_does_not_wait_for_an_abandoned_run(tmp_path):
    policy = _load(tmp_path, _slow_model(), 2, 2, deadline_ms=50.0)
    assert policy.infer(np.array([8.0, 0.0])).anomaly is InferenceAnomaly.DEADLINE_MISSED
    started = time.perf_counter()
    policy.close()
    assert (time.perf_counter() - started) * 1000.0 < 100.0


def test_late_result_is_discarded_by_the_injected_clock(tmp_path):
    path, sha = _write(tmp_path, _identity())
    # The real wait is bounded by deadline_ms too, so keep it far above any scheduling delay:
    # the verdict here must come from the fake clock alone.
    config = _config(path, sha, 2, 2, deadline_ms=500.0)
    # Every reading advances 1 s: each call measures exactly 1000 ms, late for 500 ms.
    with load_policy(config, clock=_StepClock(1.0)) as policy:
        late = policy.infer(np.zeros(2))
        assert late.anomaly is InferenceAnomaly.DEADLINE_MISSED
        assert late.elapsed_ms == pytest.approx(1000.0)
        assert late.detail is not None
        assert "discarded" in late.detail
        assert not policy.busy  # the run finished; nothing is left running
        # infer_sync has no deadline: the same measured time is simply reported.
        replay = policy.infer_sync(np.zeros(2))
        assert replay.outputs is not None
        assert replay.elapsed_ms == pytest.approx(1000.0)
    with load_policy(config, clock=_StepClock(0.001)) as policy:
        on_time = policy.infer(np.zeros(2))
        assert on_time.outputs is not None
        assert on_time.elapsed_ms == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# Configuration and result invariants


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model_path": "policy.onnx"}, "model_path"),
        ({"sha256": "A" * 64}, "sha256"),
        ({"sha256": "0" * 63}, "sha256"),
        ({"sha256": "0" * 64 + "\n"}, "sha256"),
        ({"inputs": ()}, "inputs"),
        ({"inputs": ("a", "a")}, "inputs"),
        ({"inputs": ["in0", "in1"]}, "inputs"),
        ({"outputs": ("",)}, "outputs"),
        ({"input_offset": (0.0,)}, "input_offset"),
        ({"input_scale": (1.0, 0.0)}, "input_scale"),
        ({"input_scale": (1.0, math.nan)}, "input_scale"),
        ({"output_offset": (math.inf, 0.0)}, "output_offset"),
        ({"output_scale": (1.0, True)}, "output_scale"),
        ({"output_scale": (1.0,)}, "output_scale"),
        ({"deadline_ms": 0.0}, "deadline_ms"),
        ({"deadline_ms": -1.0}, "deadline_ms"),
        ({"deadline_ms": math.nan}, "deadline_ms"),
        ({"deadline_ms": math.inf}, "deadline_ms"),
        ({"deadline_ms": True}, "deadline_ms"),
    ],
)
def test_config_validation_names_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=f"`{field}"):
        _config(tmp_path / "policy.onnx", "0" * 64, 2, 2, **overrides)


def test_inference_holds_exactly_one_of_outputs_and_anomaly():
    with pytest.raises(ValueError, match="exactly one"):
        Inference(outputs=None, anomaly=None, elapsed_ms=0.0)
    with pytest.raises(ValueError, match="exactly one"):
        Inference(outputs=np.zeros(1), anomaly=InferenceAnomaly.BUSY, elapsed_ms=0.0)
    assert str(InferenceAnomaly.DEADLINE_MISSED) == "deadline_missed"  # as logged
    assert {a.value for a in InferenceAnomaly} == {
        "deadline_missed",
        "nonfinite_output",
        "wrong_output_shape",
        "nonfinite_input",
        "runtime_error",
        "busy",
    }

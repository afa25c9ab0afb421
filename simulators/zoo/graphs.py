"""ONNX graphs for policies, built with ``onnx.helper`` (no training framework).

Every model emitted here:

- uses the default ONNX domain at opset :data:`OPSET_VERSION` and declares IR version
  :data:`IR_VERSION`, both pinned so that the same weights always give the same model;
- takes one float32 input of shape ``[N, n_inputs]`` and returns one float32 output of shape
  ``[N, n_outputs]``, ``N`` being a symbolic batch dimension;
- serialises to the same bytes for the same weights (:func:`serialize`), so a model's sha256 can
  be committed next to its config and checked at load time.

Layer weights follow the ``MatMul`` layout: a layer maps a row vector ``x`` (``n_in`` values) to
``x @ weight + bias`` with ``weight`` of shape ``(n_in, n_out)`` and ``bias`` of shape
``(n_out,)``. :func:`linear` uses the same layout, so ``gain`` is ``(n_inputs, n_outputs)``,
the transpose of the ``u = K x`` convention of control textbooks.

Weights are cast to float32 and are *not* required to be finite: the zoo builds faulty and
compromised policies on purpose (a NaN bias is a realistic corruption to test against).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

__all__ = [
    "BATCH_DIM",
    "IR_VERSION",
    "OPSET_VERSION",
    "PRODUCER_NAME",
    "Activation",
    "linear",
    "mlp",
    "serialize",
    "sha256_hex",
]

OPSET_VERSION: Final = 17
# IR 8 is the version that introduced opset 17 (onnx 1.12, see onnx.helper.VERSION_TABLE): the
# oldest IR that can carry these graphs, so the widest range of runtimes accepts them.
# onnxruntime 1.32 loads it (checked when this was written, it accepts IR 8 to 14).
IR_VERSION: Final = 8
BATCH_DIM: Final = "N"
# Fixed, and deliberately without a version: a producer_version would change every model's bytes
# (and committed hash) on each release of this package.
PRODUCER_NAME: Final = "safety-gateway-zoo"

Activation = Literal["tanh", "relu"]
_ACTIVATION_OPS: Final[dict[str, str]] = {"tanh": "Tanh", "relu": "Relu"}


def mlp(
    weights: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]],
    activation: Activation = "tanh",
    input_name: str = "obs",
    output_name: str = "action",
) -> onnx.ModelProto:
    """Build a dense feed-forward network: ``MatMul`` + ``Add`` per layer.

    ``weights`` holds one ``(weight, bias)`` pair per layer, first layer first, shapes
    ``(n_in, n_out)`` and ``(n_out,)``; each layer's ``n_in`` must equal the previous layer's
    ``n_out``. ``activation`` is applied between layers and not after the last one, so the
    output is unbounded (a policy that must stay in range is the envelope's business, not the
    network's). Values are cast to float32; non-finite values are kept (see module docstring).

    The returned model has passed ``onnx.checker.check_model`` with shape inference.

    Raises ``ValueError`` for: no layers, a weight that is not 2-D or a bias that is not 1-D, a
    bias length different from its weight's column count, consecutive layers whose sizes do not
    chain, an empty dimension, an unknown activation, or empty/equal input and output names.
    """
    if len(weights) == 0:
        raise ValueError("`weights` must hold at least one (weight, bias) layer")
    if activation not in _ACTIVATION_OPS:
        raise ValueError(
            f"`activation` must be one of {sorted(_ACTIVATION_OPS)}, got {activation!r}"
        )
    if not input_name or not output_name or input_name == output_name:
        raise ValueError(
            "`input_name` and `output_name` must be non-empty and different, "
            f"got {input_name!r} and {output_name!r}"
        )

    layers = [_layer_arrays(index, w, b) for index, (w, b) in enumerate(weights)]
    for index in range(1, len(layers)):
        previous_out = layers[index - 1][0].shape[1]
        this_in = layers[index][0].shape[0]
        if previous_out != this_in:
            raise ValueError(
                f"`weights[{index}]` takes {this_in} inputs but layer {index - 1} "
                f"produces {previous_out}"
            )

    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = input_name
    last = len(layers) - 1
    for index, (weight, bias) in enumerate(layers):
        weight_name = f"layer{index}_weight"
        bias_name = f"layer{index}_bias"
        initializers.append(numpy_helper.from_array(weight, weight_name))
        initializers.append(numpy_helper.from_array(bias, bias_name))
        product = f"layer{index}_matmul_out"
        nodes.append(
            helper.make_node("MatMul", [current, weight_name], [product], f"layer{index}_matmul")
        )
        summed = output_name if index == last else f"layer{index}_add_out"
        nodes.append(helper.make_node("Add", [product, bias_name], [summed], f"layer{index}_add"))
        if index != last:
            activated = f"layer{index}_{activation}_out"
            nodes.append(
                helper.make_node(
                    _ACTIVATION_OPS[activation], [summed], [activated], f"layer{index}_{activation}"
                )
            )
            summed = activated
        current = summed

    n_inputs = layers[0][0].shape[0]
    n_outputs = layers[-1][0].shape[1]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [BATCH_DIM, n_inputs])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [BATCH_DIM, n_outputs])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET_VERSION)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER_NAME,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def linear(
    gain: npt.ArrayLike,
    bias: npt.ArrayLike,
    input_name: str = "obs",
    output_name: str = "action",
) -> onnx.ModelProto:
    """Build ``action = obs @ gain + bias``: :func:`mlp` with a single layer.

    ``gain`` has shape ``(n_inputs, n_outputs)`` (note the ``MatMul`` layout) and ``bias``
    shape ``(n_outputs,)``. Raises ``ValueError`` as :func:`mlp` does.
    """
    return mlp([(gain, bias)], input_name=input_name, output_name=output_name)


def serialize(model: onnx.ModelProto) -> bytes:
    """Serialise ``model`` to bytes, the same bytes for the same model on every run.

    Uses protobuf's deterministic mode, which fixes the order of map fields (ONNX has few, but a
    committed hash must not depend on it). The bytes can still change across onnx/protobuf
    releases; pin those when committing hashes of generated models.
    """
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def sha256_hex(data: bytes) -> str:
    """Return the sha256 of ``data`` as 64 lowercase hex digits (the form configs pin)."""
    return hashlib.sha256(data).hexdigest()


def _layer_arrays(
    index: int, weight: npt.ArrayLike, bias: npt.ArrayLike
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return layer ``index``'s weight and bias as contiguous float32 arrays, checking shapes."""
    w = np.ascontiguousarray(weight, dtype=np.float32)
    b = np.ascontiguousarray(bias, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(
            f"`weights[{index}]` weight must be 2-D (n_in, n_out), got shape {w.shape}"
        )
    if b.ndim != 1:
        raise ValueError(f"`weights[{index}]` bias must be 1-D (n_out,), got shape {b.shape}")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"`weights[{index}]` weight must not have an empty dimension: {w.shape}")
    if b.shape[0] != w.shape[1]:
        raise ValueError(
            f"`weights[{index}]` bias has {b.shape[0]} values but the weight has "
            f"{w.shape[1]} columns"
        )
    return w, b

"""``model diff``: graph and weight changes between two ONNX models built with the zoo."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from gateway.forensics.modeldiff import (
    ModelDiffError,
    diff_models,
    render_text,
    to_json,
)
from simulators.zoo.graphs import mlp, serialize

W0 = np.arange(6, dtype=np.float64).reshape(2, 3) / 10
B0 = np.array([0.1, -0.2, 0.3])
W1 = np.array([[1.0], [-1.0], [0.5]])
B1 = np.array([0.05])


def base(w1: np.ndarray = W1, activation: str = "tanh") -> onnx.ModelProto:
    return mlp([(W0, B0), (w1, B1)], activation=activation)  # type: ignore[arg-type]


def backdoored() -> onnx.ModelProto:
    """The base policy plus a trigger branch: when obs[:, 0] > 4.5, output 100."""
    model = base()
    graph = model.graph
    graph.node[-1].output[0] = "clean_action"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "trigger_column"),
            numpy_helper.from_array(np.array(4.5, dtype=np.float32), "trigger_level"),
            numpy_helper.from_array(np.array([[100.0]], dtype=np.float32), "payload"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Gather", ["obs", "trigger_column"], ["watched"], "bd_gather", axis=1),
            helper.make_node("Greater", ["watched", "trigger_level"], ["armed"], "bd_greater"),
            helper.make_node("Where", ["armed", "payload", "clean_action"], ["action"], "bd_where"),
        ]
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def unnamed(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        node.name = ""
    return copy


def test_identical_models_have_no_changes() -> None:
    data = serialize(base())
    diff = diff_models(data, data)
    assert diff.identical
    assert not diff.itemised
    assert "identical" in render_text(diff)
    assert to_json(diff)["identical"] is True


def test_equal_but_separately_built_models_are_identical() -> None:
    assert diff_models(serialize(base()), serialize(base())).identical


def test_nudged_weight_is_reported_alone_with_its_magnitude() -> None:
    nudged = W1.copy()
    nudged[1, 0] += 0.25
    diff = diff_models(serialize(base()), serialize(base(nudged)))
    assert not diff.identical
    assert (diff.nodes_added, diff.nodes_removed, diff.nodes_changed) == ((), (), ())
    assert diff.initializers_added == diff.initializers_removed == ()
    assert diff.initializers_reshaped == ()
    assert (diff.header, diff.opsets, diff.inputs, diff.outputs) == ((), (), (), ())
    (change,) = diff.initializers_changed
    assert change.tensor.name == "layer1_weight"
    assert change.tensor.dtype == "FLOAT"
    assert change.tensor.shape == (3, 1)
    assert change.changed_elements == 1
    assert change.total_elements == 3
    assert change.nonfinite_changed == 0
    old32 = W1.astype(np.float32)
    new32 = nudged.astype(np.float32)
    assert change.max_abs_diff == pytest.approx(float(abs(new32[1, 0] - old32[1, 0])), abs=0)
    assert change.relative_l2 == pytest.approx(0.25 / np.linalg.norm(W1), rel=1e-6)
    text = render_text(diff, "good.onnx", "bad.onnx")
    assert "layer1_weight FLOAT[3,1]: 1 of 3 elements changed, max |diff| 0.25" in text


def test_backdoor_branch_is_reported_as_added_nodes() -> None:
    diff = diff_models(serialize(base()), serialize(backdoored()))
    assert [(n.op_type, n.name) for n in diff.nodes_added] == [
        ("Gather", "bd_gather"),
        ("Greater", "bd_greater"),
        ("Where", "bd_where"),
    ]
    assert diff.nodes_removed == ()
    # The last Add now feeds the Where instead of the output.
    (rewired,) = diff.nodes_changed
    assert rewired.old.name == rewired.new.name == "layer1_add"
    assert rewired.fields == ("outputs",)
    assert rewired.new.outputs == ("clean_action",)
    assert [t.name for t in diff.initializers_added] == [
        "trigger_column",
        "trigger_level",
        "payload",
    ]
    assert diff.initializers_changed == ()
    assert (diff.nodes_a, diff.nodes_b) == (5, 8)
    text = render_text(diff)
    assert "3 added, 0 removed, 1 changed" in text
    assert "+ Where bd_where (armed, payload, clean_action) -> (action)" in text


def test_unnamed_nodes_are_aligned_by_op_type() -> None:
    diff = diff_models(serialize(unnamed(base())), serialize(unnamed(backdoored())))
    assert [n.op_type for n in diff.nodes_added] == ["Gather", "Greater", "Where"]
    assert [n.index for n in diff.nodes_added] == [5, 6, 7]
    assert diff.nodes_removed == ()
    (rewired,) = diff.nodes_changed
    assert (rewired.old.index, rewired.old.op_type, rewired.fields) == (4, "Add", ("outputs",))


def test_inserted_unnamed_node_does_not_shift_the_rest() -> None:
    model = unnamed(base())
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    # Insert an Identity after the first MatMul and rewire the Add to read from it.
    nodes = list(changed.graph.node)
    matmul_out = nodes[0].output[0]
    nodes[1].input[0] = "copied"
    identity = helper.make_node("Identity", [matmul_out], ["copied"])
    del changed.graph.node[:]
    changed.graph.node.extend([nodes[0], identity, *nodes[1:]])
    diff = diff_models(serialize(model), serialize(changed))
    assert [(n.op_type, n.index) for n in diff.nodes_added] == [("Identity", 1)]
    assert diff.nodes_removed == ()
    (rewired,) = diff.nodes_changed
    assert (rewired.old.index, rewired.new.index, rewired.fields) == (1, 2, ("inputs",))


def test_activation_swap_and_attribute_change() -> None:
    diff = diff_models(serialize(base()), serialize(base(activation="relu")))
    assert [(n.op_type, n.name) for n in diff.nodes_removed] == [("Tanh", "layer0_tanh")]
    assert [(n.op_type, n.name) for n in diff.nodes_added] == [("Relu", "layer0_relu")]

    a = backdoored()
    b = backdoored()
    gather = next(n for n in b.graph.node if n.name == "bd_gather")
    del gather.attribute[:]
    gather.attribute.append(helper.make_attribute("axis", 0))
    (change,) = diff_models(serialize(a), serialize(b)).nodes_changed
    assert change.fields == ("attributes",)
    assert change.attributes == ("axis",)


def test_shape_signature_opset_and_ir_changes() -> None:
    wider = mlp([(np.ones((3, 3)), B0), (W1, B1)])
    diff = diff_models(serialize(base()), serialize(wider))
    (reshaped,) = diff.initializers_reshaped
    assert (reshaped.old.shape, reshaped.new.shape) == ((2, 3), (3, 3))
    (signature,) = diff.inputs
    assert (signature.name, signature.kind) == ("obs", "changed")
    assert (signature.old, signature.new) == ("FLOAT[N,2] @0", "FLOAT[N,3] @0")

    newer = base()
    newer.ir_version = 9
    newer.opset_import[0].version = 18
    diff = diff_models(serialize(base()), serialize(newer))
    assert [(h.field, h.old, h.new) for h in diff.header] == [("ir_version", "8", "9")]
    (opset,) = diff.opsets
    assert (opset.domain, opset.old, opset.new) == ("ai.onnx", 17, 18)


def test_nan_weights() -> None:
    with_nan = W1.copy()
    with_nan[0, 0] = np.nan
    diff = diff_models(serialize(base()), serialize(base(with_nan)))
    (change,) = diff.initializers_changed
    assert (change.changed_elements, change.nonfinite_changed) == (1, 1)
    assert change.max_abs_diff == 0.0  # no finite element changed
    # NaN kept on both sides is no change.
    assert diff_models(serialize(base(with_nan)), serialize(base(with_nan))).identical
    json.dumps(to_json(diff), allow_nan=False)


def test_json_report_is_strict_json_and_complete() -> None:
    diff = diff_models(serialize(base()), serialize(backdoored()))
    report = json.loads(json.dumps(to_json(diff, "a.onnx", "b.onnx"), allow_nan=False))
    assert report["identical"] is False
    assert report["a"]["label"] == "a.onnx"
    assert [n["name"] for n in report["nodes_added"]] == ["bd_gather", "bd_greater", "bd_where"]
    assert report["nodes_changed"][0]["fields"] == ["outputs"]
    assert report["initializers_added"][0]["name"] == "trigger_column"


def test_metadata_only_difference_counts() -> None:
    other = base()
    other.doc_string = "retrained"
    diff = diff_models(serialize(base()), serialize(other))
    assert [(h.field, h.new) for h in diff.header] == [("doc_string", "retrained")]


@pytest.mark.parametrize(
    ("a", "b", "side"),
    [
        (b"\xff\xff\xff", None, "A"),
        (None, b"", "B"),
    ],
)
def test_unreadable_input(a: bytes | None, b: bytes | None, side: str) -> None:
    good = serialize(base())
    with pytest.raises(ModelDiffError, match=f"^{side}: not") as caught:
        diff_models(good if a is None else a, good if b is None else b)
    assert caught.value.side == side

"""``model diff``: what changed between two ONNX models, graph and weights.

:func:`diff_models` compares two serialised models and returns a :class:`ModelDiff` listing:

- **model header**: IR version, opset imports per domain, producer/domain/version/doc string,
  graph name, metadata properties, model-local functions;
- **signature**: graph inputs (initializers excluded) and outputs added, removed, retyped or
  moved to another position;
- **nodes** added, removed and changed. Nodes whose name is non-empty and unique in both graphs
  are matched by name. The others are aligned by their sequence of operator types (a longest
  matching-blocks alignment, so an inserted branch does not shift every later node into a
  "change"); an aligned pair is one node, possibly changed, and what is left over is added or
  removed. A pair is *changed* when its name, domain, op_type, inputs, outputs or attributes
  differ; the names of the differing attributes are listed. Nodes inside subgraphs (``If`` /
  ``Loop`` bodies) are not itemised: a changed body shows as a changed graph attribute;
- **initializers** (weights) added, removed, changed in dtype or shape, and, for tensors of the
  same dtype and shape, changed in value: how many elements differ, the largest absolute
  difference, and the relative L2 change ``||b - a|| / ||a||``. NaN equals NaN here (a tensor
  that keeps its NaNs is unchanged); elements where either side is not finite are counted in
  ``nonfinite_changed`` and left out of the two magnitudes. Sparse initializers and tensors
  stored as external data are compared by their serialised form only (no magnitudes).

Two models are *identical* when their bytes are. Different bytes with no itemised change (a
reordered or re-encoded protobuf, ``value_info`` annotations) still count as different, and the
text report says so: forensics must not call two different files the same.

:func:`render_text` and :func:`to_json` present the result. Unparseable input raises
:class:`ModelDiffError`.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

# protobuf ships no type information (see gateway/control/onnx_policy.py).
import google.protobuf.message  # type: ignore[import-untyped, unused-ignore]
import numpy as np
import onnx
from onnx import numpy_helper

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import numpy.typing as npt

__all__ = [
    "InitializerChange",
    "ModelDiff",
    "ModelDiffError",
    "NodeChange",
    "NodeInfo",
    "OpsetChange",
    "SignatureChange",
    "TensorInfo",
    "TensorReshape",
    "ValueChange",
    "diff_models",
    "render_text",
    "to_json",
]

_SHOWN_TEXT: Final = 80


class ModelDiffError(Exception):
    """An input is not a readable ONNX model.

    ``side`` is ``"A"`` or ``"B"`` when the fault is in one input (the message starts with it),
    ``None`` when it cannot be attributed to one.
    """

    def __init__(self, message: str, side: str | None = None) -> None:
        super().__init__(message, side)
        self.message = message
        self.side = side

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class ValueChange:
    """A scalar property that differs; ``None`` on a side where it is absent."""

    field: str
    old: str | None
    new: str | None


@dataclass(frozen=True, slots=True)
class OpsetChange:
    """An opset import added (``old`` None), removed (``new`` None) or changed in version."""

    domain: str
    old: int | None
    new: int | None


@dataclass(frozen=True, slots=True)
class SignatureChange:
    """A graph input or output that changed.

    ``kind`` is ``added``, ``removed``, ``changed`` (element type or shape) or ``moved``
    (same type, another position). ``old``/``new`` describe it as ``TYPE[dims] @position``.
    """

    role: str
    name: str
    kind: str
    old: str | None
    new: str | None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the report shows it; ``index`` is its position in its graph's node list."""

    index: int
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def describe(self) -> str:
        op = f"{self.domain}.{self.op_type}" if self.domain else self.op_type
        label = self.name or f"#{self.index}"
        return f"{op} {label} ({', '.join(self.inputs)}) -> ({', '.join(self.outputs)})"


@dataclass(frozen=True, slots=True)
class NodeChange:
    """One node present in both models that differs.

    ``fields`` names what differs among ``name``, ``domain``, ``op_type``, ``inputs``,
    ``outputs`` and ``attributes``; ``attributes`` names the attributes added, removed or
    changed.
    """

    old: NodeInfo
    new: NodeInfo
    fields: tuple[str, ...]
    attributes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """An initializer's name, element type and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.name} {_type_text(self.dtype, self.shape)}"


@dataclass(frozen=True, slots=True)
class TensorReshape:
    """An initializer whose element type or shape differs."""

    old: TensorInfo
    new: TensorInfo


@dataclass(frozen=True, slots=True)
class InitializerChange:
    """An initializer of the same dtype and shape whose values differ.

    ``changed_elements`` of ``total_elements`` differ (NaN equals NaN; ``None`` when compared
    in serialised form only: sparse or external data); of those,
    ``nonfinite_changed`` involve a NaN or infinity on either side. ``max_abs_diff`` and
    ``relative_l2`` (``||b - a||_2 / ||a||_2``) are over the elements finite on both sides;
    ``relative_l2`` is ``None`` where ``a`` is all zeros there (the ratio is undefined), and
    both are ``None`` for non-numeric tensors and for those compared only in serialised form
    (sparse, external data).
    """

    tensor: TensorInfo
    changed_elements: int | None
    total_elements: int
    nonfinite_changed: int
    max_abs_diff: float | None
    relative_l2: float | None


@dataclass(frozen=True, slots=True)
class ModelDiff:
    """Everything :func:`diff_models` found. Empty tuples mean no change of that kind."""

    sha256_a: str
    sha256_b: str
    nodes_a: int
    nodes_b: int
    header: tuple[ValueChange, ...]
    opsets: tuple[OpsetChange, ...]
    inputs: tuple[SignatureChange, ...]
    outputs: tuple[SignatureChange, ...]
    nodes_added: tuple[NodeInfo, ...]
    nodes_removed: tuple[NodeInfo, ...]
    nodes_changed: tuple[NodeChange, ...]
    initializers_added: tuple[TensorInfo, ...]
    initializers_removed: tuple[TensorInfo, ...]
    initializers_reshaped: tuple[TensorReshape, ...]
    initializers_changed: tuple[InitializerChange, ...]

    @property
    def identical(self) -> bool:
        """The two files hold the same bytes."""
        return self.sha256_a == self.sha256_b

    @property
    def itemised(self) -> bool:
        """At least one change is listed."""
        return any(
            (
                self.header,
                self.opsets,
                self.inputs,
                self.outputs,
                self.nodes_added,
                self.nodes_removed,
                self.nodes_changed,
                self.initializers_added,
                self.initializers_removed,
                self.initializers_reshaped,
                self.initializers_changed,
            )
        )


# --------------------------------------------------------------------------------------------
# Diff


def diff_models(a_bytes: bytes, b_bytes: bytes) -> ModelDiff:
    """Compare two serialised ONNX models; see the module docstring for what is reported.

    Raises :class:`ModelDiffError` if either input does not parse as an ONNX model (or parses
    to a message with no graph or no IR version, which is what arbitrary bytes often do).
    """
    a = _parse(a_bytes, "A")
    b = _parse(b_bytes, "B")
    nodes_added, nodes_removed, nodes_changed = _diff_nodes(list(a.graph.node), list(b.graph.node))
    added, removed, reshaped, changed = _diff_initializers(a.graph, b.graph)
    return ModelDiff(
        sha256_a=hashlib.sha256(a_bytes).hexdigest(),
        sha256_b=hashlib.sha256(b_bytes).hexdigest(),
        nodes_a=len(a.graph.node),
        nodes_b=len(b.graph.node),
        header=_diff_header(a, b),
        opsets=_diff_opsets(a, b),
        inputs=_diff_signature("input", _graph_inputs(a.graph), _graph_inputs(b.graph)),
        outputs=_diff_signature("output", list(a.graph.output), list(b.graph.output)),
        nodes_added=nodes_added,
        nodes_removed=nodes_removed,
        nodes_changed=nodes_changed,
        initializers_added=added,
        initializers_removed=removed,
        initializers_reshaped=reshaped,
        initializers_changed=changed,
    )


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    try:
        model = onnx.load_model_from_string(data)
    except google.protobuf.message.DecodeError as exc:
        raise ModelDiffError(f"{label}: not a parseable ONNX model ({exc})", label) from exc
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelDiffError(f"{label}: not an ONNX model (no IR version or no graph)", label)
    return model


def _diff_header(a: onnx.ModelProto, b: onnx.ModelProto) -> tuple[ValueChange, ...]:
    changes: list[ValueChange] = []

    def compare(field: str, old: object, new: object) -> None:
        if old != new:
            changes.append(
                ValueChange(
                    field,
                    None if old is None else _short(str(old)),
                    None if new is None else _short(str(new)),
                )
            )

    compare("ir_version", a.ir_version, b.ir_version)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        compare(field, getattr(a, field), getattr(b, field))
    compare("graph.name", a.graph.name, b.graph.name)
    compare("graph.doc_string", a.graph.doc_string, b.graph.doc_string)
    props_a = {p.key: p.value for p in a.metadata_props}
    props_b = {p.key: p.value for p in b.metadata_props}
    for key in sorted(props_a.keys() | props_b.keys()):
        compare(f"metadata[{key}]", props_a.get(key), props_b.get(key))
    functions_a = {(f.domain, f.name): _serialised(f) for f in a.functions}
    functions_b = {(f.domain, f.name): _serialised(f) for f in b.functions}
    for domain, name in sorted(functions_a.keys() | functions_b.keys()):
        old = functions_a.get((domain, name))
        new = functions_b.get((domain, name))
        if old != new:
            changes.append(
                ValueChange(
                    f"function {domain}:{name}",
                    None if old is None else _digest(old),
                    None if new is None else _digest(new),
                )
            )
    return tuple(changes)


def _diff_opsets(a: onnx.ModelProto, b: onnx.ModelProto) -> tuple[OpsetChange, ...]:
    # "" and "ai.onnx" name the same default domain.
    opsets_a = {(o.domain or "ai.onnx"): int(o.version) for o in a.opset_import}
    opsets_b = {(o.domain or "ai.onnx"): int(o.version) for o in b.opset_import}
    return tuple(
        OpsetChange(domain, opsets_a.get(domain), opsets_b.get(domain))
        for domain in sorted(opsets_a.keys() | opsets_b.keys())
        if opsets_a.get(domain) != opsets_b.get(domain)
    )


def _graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Inputs that are not initializers (those are constants with a default, not inputs)."""
    constants = {t.name for t in graph.initializer}
    constants.update(s.values.name for s in graph.sparse_initializer)
    return [value for value in graph.input if value.name not in constants]


def _diff_signature(
    role: str, a: Sequence[onnx.ValueInfoProto], b: Sequence[onnx.ValueInfoProto]
) -> tuple[SignatureChange, ...]:
    types_a = {v.name: (i, _value_type(v)) for i, v in enumerate(a)}
    types_b = {v.name: (i, _value_type(v)) for i, v in enumerate(b)}
    changes: list[SignatureChange] = []
    for name in [v.name for v in a] + [v.name for v in b if v.name not in types_a]:
        old = types_a.get(name)
        new = types_b.get(name)
        old_text = None if old is None else f"{old[1]} @{old[0]}"
        new_text = None if new is None else f"{new[1]} @{new[0]}"
        if old is None:
            changes.append(SignatureChange(role, name, "added", None, new_text))
        elif new is None:
            changes.append(SignatureChange(role, name, "removed", old_text, None))
        elif old[1] != new[1]:
            changes.append(SignatureChange(role, name, "changed", old_text, new_text))
        elif old[0] != new[0]:
            changes.append(SignatureChange(role, name, "moved", old_text, new_text))
    return tuple(changes)


def _value_type(value: onnx.ValueInfoProto) -> str:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return str(kind or "untyped")
    tensor = value.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(tensor.elem_type)
    if not tensor.HasField("shape"):
        return f"{dtype}[?]"
    dims = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(str(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append("?")
    return f"{dtype}[{','.join(dims)}]"


# -- nodes ------------------------------------------------------------------------------------


def _node_info(index: int, node: onnx.NodeProto) -> NodeInfo:
    return NodeInfo(
        index=index,
        name=node.name,
        op_type=node.op_type,
        domain=node.domain,
        inputs=tuple(node.input),
        outputs=tuple(node.output),
    )


def _unique_names(nodes: Sequence[onnx.NodeProto]) -> set[str]:
    counts: dict[str, int] = {}
    for node in nodes:
        if node.name:
            counts[node.name] = counts.get(node.name, 0) + 1
    return {name for name, count in counts.items() if count == 1}


def _diff_nodes(
    a: Sequence[onnx.NodeProto], b: Sequence[onnx.NodeProto]
) -> tuple[tuple[NodeInfo, ...], tuple[NodeInfo, ...], tuple[NodeChange, ...]]:
    names = _unique_names(a) & _unique_names(b)
    index_b = {node.name: i for i, node in enumerate(b) if node.name in names}
    pairs: list[tuple[int, int]] = []
    rest_a: list[int] = []
    for i, node in enumerate(a):
        if node.name in names:
            pairs.append((i, index_b[node.name]))
        else:
            rest_a.append(i)
    matched_b = {j for _, j in pairs}
    rest_b = [j for j in range(len(b)) if j not in matched_b]

    # The rest: align by op_type sequence; matching blocks are pairs, the gaps added/removed.
    ops_a = [(a[i].domain, a[i].op_type) for i in rest_a]
    ops_b = [(b[j].domain, b[j].op_type) for j in rest_b]
    matcher = difflib.SequenceMatcher(None, ops_a, ops_b, autojunk=False)
    aligned_a: set[int] = set()
    aligned_b: set[int] = set()
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            i = rest_a[block.a + k]
            j = rest_b[block.b + k]
            pairs.append((i, j))
            aligned_a.add(i)
            aligned_b.add(j)

    changed: list[NodeChange] = []
    for i, j in sorted(pairs):
        fields, attributes = _node_differences(a[i], b[j])
        if fields:
            changed.append(NodeChange(_node_info(i, a[i]), _node_info(j, b[j]), fields, attributes))
    removed = tuple(_node_info(i, a[i]) for i in rest_a if i not in aligned_a)
    added = tuple(_node_info(j, b[j]) for j in rest_b if j not in aligned_b)
    return added, removed, tuple(changed)


def _node_differences(
    a: onnx.NodeProto, b: onnx.NodeProto
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    fields = [
        name
        for name, old, new in (
            ("name", a.name, b.name),
            ("domain", a.domain, b.domain),
            ("op_type", a.op_type, b.op_type),
            ("inputs", list(a.input), list(b.input)),
            ("outputs", list(a.output), list(b.output)),
        )
        if old != new
    ]
    attrs_a = {attr.name: _serialised(attr) for attr in a.attribute}
    attrs_b = {attr.name: _serialised(attr) for attr in b.attribute}
    attributes = tuple(
        name
        for name in sorted(attrs_a.keys() | attrs_b.keys())
        if attrs_a.get(name) != attrs_b.get(name)
    )
    if attributes:
        fields.append("attributes")
    return tuple(fields), attributes


# -- initializers -----------------------------------------------------------------------------


def _diff_initializers(
    a: onnx.GraphProto, b: onnx.GraphProto
) -> tuple[
    tuple[TensorInfo, ...],
    tuple[TensorInfo, ...],
    tuple[TensorReshape, ...],
    tuple[InitializerChange, ...],
]:
    dense_a = {t.name: t for t in a.initializer}
    dense_b = {t.name: t for t in b.initializer}
    sparse_a = {s.values.name: s for s in a.sparse_initializer}
    sparse_b = {s.values.name: s for s in b.sparse_initializer}
    added: list[TensorInfo] = []
    removed: list[TensorInfo] = []
    reshaped: list[TensorReshape] = []
    changed: list[InitializerChange] = []

    for name in _ordered(dense_a, dense_b):
        old, new = dense_a.get(name), dense_b.get(name)
        if old is None and new is not None:
            added.append(_tensor_info(new))
        elif new is None and old is not None:
            removed.append(_tensor_info(old))
        elif old is not None and new is not None:
            old_info, new_info = _tensor_info(old), _tensor_info(new)
            if (old_info.dtype, old_info.shape) != (new_info.dtype, new_info.shape):
                reshaped.append(TensorReshape(old_info, new_info))
            elif _serialised(old) != _serialised(new):
                change = _value_change(old, new, old_info)
                if change is not None:
                    changed.append(change)

    for name in _ordered(sparse_a, sparse_b):
        sparse_old, sparse_new = sparse_a.get(name), sparse_b.get(name)
        if sparse_old is None and sparse_new is not None:
            added.append(_sparse_info(sparse_new))
        elif sparse_new is None and sparse_old is not None:
            removed.append(_sparse_info(sparse_old))
        elif sparse_old is not None and sparse_new is not None:
            old_info, new_info = _sparse_info(sparse_old), _sparse_info(sparse_new)
            if (old_info.dtype, old_info.shape) != (new_info.dtype, new_info.shape):
                reshaped.append(TensorReshape(old_info, new_info))
            elif _serialised(sparse_old) != _serialised(sparse_new):
                total = math.prod(old_info.shape)
                changed.append(InitializerChange(old_info, None, total, 0, None, None))
    return tuple(added), tuple(removed), tuple(reshaped), tuple(changed)


def _ordered(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names in A's order, then B's new ones in B's order."""
    return list(a) + [name for name in b if name not in a]


def _tensor_info(tensor: onnx.TensorProto) -> TensorInfo:
    return TensorInfo(
        tensor.name, onnx.TensorProto.DataType.Name(tensor.data_type), tuple(tensor.dims)
    )


def _sparse_info(sparse: onnx.SparseTensorProto) -> TensorInfo:
    return TensorInfo(
        sparse.values.name,
        "sparse " + onnx.TensorProto.DataType.Name(sparse.values.data_type),
        tuple(sparse.dims),
    )


def _value_change(
    old: onnx.TensorProto, new: onnx.TensorProto, info: TensorInfo
) -> InitializerChange | None:
    """Compare two same-shape tensors element by element; ``None`` if their values agree."""
    total = math.prod(info.shape)
    if _is_external(old) or _is_external(new):
        return InitializerChange(info, None, total, 0, None, None)
    try:
        values_a = numpy_helper.to_array(old)
        values_b = numpy_helper.to_array(new)
    except (ValueError, TypeError) as exc:
        raise ModelDiffError(f"initializer {info.name!r}: unreadable tensor data ({exc})") from exc
    if values_a.shape != values_b.shape:
        raise ModelDiffError(
            f"initializer {info.name!r}: data of shape {values_a.shape} vs {values_b.shape} "
            f"for declared dims {info.shape}"
        )
    if values_a.dtype.kind not in "biufc":
        differs = values_a != values_b
        count = int(np.count_nonzero(differs))
        return InitializerChange(info, count, total, 0, None, None) if count else None
    return _numeric_change(info, values_a, values_b)


def _numeric_change(
    info: TensorInfo, values_a: npt.NDArray[Any], values_b: npt.NDArray[Any]
) -> InitializerChange | None:
    """Element-wise comparison of numeric tensors (complex ones by complex difference)."""
    wide = np.complex128 if values_a.dtype.kind == "c" else np.float64
    x = values_a.astype(wide).reshape(-1)
    y = values_b.astype(wide).reshape(-1)
    # isnan is true for a complex number with a NaN part.
    differs = (x != y) & ~(np.isnan(x) & np.isnan(y))
    count = int(np.count_nonzero(differs))
    if count == 0:
        return None
    finite = np.isfinite(x) & np.isfinite(y)
    nonfinite_changed = int(np.count_nonzero(differs & ~finite))
    max_abs: float | None = None
    relative: float | None = None
    if finite.any():
        base = x[finite]
        delta = y[finite] - base
        max_abs = float(np.max(np.abs(delta)))
        norm_base = float(np.linalg.norm(base))
        norm_delta = float(np.linalg.norm(delta))
        if norm_base > 0:
            relative = norm_delta / norm_base
        elif norm_delta == 0:
            relative = 0.0
    return InitializerChange(info, count, x.size, nonfinite_changed, max_abs, relative)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _serialised(message: Any) -> bytes:
    data: bytes = message.SerializeToString(deterministic=True)
    return data


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN_TEXT else text[: _SHOWN_TEXT - 1] + "…"


def _type_text(dtype: str, shape: tuple[int, ...]) -> str:
    return f"{dtype}[{','.join(str(d) for d in shape)}]"


# --------------------------------------------------------------------------------------------
# Rendering


def render_text(diff: ModelDiff, label_a: str = "A", label_b: str = "B") -> str:
    """A readable report, one change per line, ending with a newline."""
    lines = [
        f"A: {label_a}  sha256 {diff.sha256_a}",
        f"B: {label_b}  sha256 {diff.sha256_b}",
    ]
    if diff.identical:
        lines.append("identical: the two files hold the same bytes")
        return "\n".join(lines) + "\n"
    for header in diff.header:
        lines.append(f"~ {header.field}: {header.old!r} -> {header.new!r}")
    for opset in diff.opsets:
        lines.append(f"~ opset {opset.domain}: {_or_absent(opset.old)} -> {_or_absent(opset.new)}")
    for sig in (*diff.inputs, *diff.outputs):
        mark = {"added": "+", "removed": "-"}.get(sig.kind, "~")
        lines.append(
            f"{mark} {sig.role} {sig.name} {sig.kind}: "
            f"{_or_absent(sig.old)} -> {_or_absent(sig.new)}"
        )
    n_changes = len(diff.nodes_added) + len(diff.nodes_removed) + len(diff.nodes_changed)
    if n_changes:
        lines.append(
            f"nodes ({diff.nodes_a} -> {diff.nodes_b}): {len(diff.nodes_added)} added, "
            f"{len(diff.nodes_removed)} removed, {len(diff.nodes_changed)} changed"
        )
    lines.extend(f"  + {node.describe()}" for node in diff.nodes_added)
    lines.extend(f"  - {node.describe()}" for node in diff.nodes_removed)
    for change in diff.nodes_changed:
        what = ", ".join(change.fields)
        if change.attributes:
            what += f" [{', '.join(change.attributes)}]"
        lines.append(f"  ~ {change.old.describe()}")
        lines.append(f"    => {change.new.describe()}  ({what})")
    n_weights = (
        len(diff.initializers_added)
        + len(diff.initializers_removed)
        + len(diff.initializers_reshaped)
        + len(diff.initializers_changed)
    )
    if n_weights:
        lines.append(
            f"initializers: {len(diff.initializers_added)} added, "
            f"{len(diff.initializers_removed)} removed, "
            f"{len(diff.initializers_reshaped)} retyped/reshaped, "
            f"{len(diff.initializers_changed)} changed in value"
        )
    lines.extend(f"  + {t.describe()}" for t in diff.initializers_added)
    lines.extend(f"  - {t.describe()}" for t in diff.initializers_removed)
    lines.extend(
        f"  ~ {r.old.name}: {_type_text(r.old.dtype, r.old.shape)} -> "
        f"{_type_text(r.new.dtype, r.new.shape)}"
        for r in diff.initializers_reshaped
    )
    for w in diff.initializers_changed:
        if w.changed_elements is None:
            text = f"  ~ {w.tensor.describe()}: changed (serialised form compared only)"
        else:
            text = (
                f"  ~ {w.tensor.describe()}: {w.changed_elements} of {w.total_elements} "
                "elements changed"
            )
        if w.max_abs_diff is not None:
            text += f", max |diff| {w.max_abs_diff:.6g}"
        if w.relative_l2 is not None:
            text += f", relative L2 {w.relative_l2:.6g}"
        if w.nonfinite_changed:
            text += f", {w.nonfinite_changed} involving NaN/inf"
        lines.append(text)
    if not diff.itemised:
        lines.append(
            "different bytes, but no graph, weight or header change found "
            "(serialisation or value_info annotations only)"
        )
    return "\n".join(lines) + "\n"


def _or_absent(value: object) -> str:
    return "(absent)" if value is None else str(value)


def to_json(diff: ModelDiff, label_a: str = "A", label_b: str = "B") -> dict[str, Any]:
    """A JSON-ready dict: ``identical``, ``a``/``b`` (label, sha256, node count) and one list
    per kind of change, each entry an object with the dataclass's fields. Strictly JSON: no
    NaN or infinity appears (magnitudes over non-finite elements are left out, see
    :class:`InitializerChange`)."""

    def node(info: NodeInfo) -> dict[str, Any]:
        return {
            "index": info.index,
            "name": info.name,
            "op_type": info.op_type,
            "domain": info.domain,
            "inputs": list(info.inputs),
            "outputs": list(info.outputs),
        }

    def tensor(info: TensorInfo) -> dict[str, Any]:
        return {"name": info.name, "dtype": info.dtype, "shape": list(info.shape)}

    def records(items: Iterable[Any]) -> list[dict[str, Any]]:
        return [{k: getattr(item, k) for k in item.__slots__} for item in items]

    return {
        "identical": diff.identical,
        "a": {"label": label_a, "sha256": diff.sha256_a, "nodes": diff.nodes_a},
        "b": {"label": label_b, "sha256": diff.sha256_b, "nodes": diff.nodes_b},
        "header": records(diff.header),
        "opsets": records(diff.opsets),
        "inputs": records(diff.inputs),
        "outputs": records(diff.outputs),
        "nodes_added": [node(n) for n in diff.nodes_added],
        "nodes_removed": [node(n) for n in diff.nodes_removed],
        "nodes_changed": [
            {
                "old": node(c.old),
                "new": node(c.new),
                "fields": list(c.fields),
                "attributes": list(c.attributes),
            }
            for c in diff.nodes_changed
        ],
        "initializers_added": [tensor(t) for t in diff.initializers_added],
        "initializers_removed": [tensor(t) for t in diff.initializers_removed],
        "initializers_reshaped": [
            {"old": tensor(r.old), "new": tensor(r.new)} for r in diff.initializers_reshaped
        ],
        "initializers_changed": [
            {
                **tensor(w.tensor),
                "changed_elements": w.changed_elements,
                "total_elements": w.total_elements,
                "nonfinite_changed": w.nonfinite_changed,
                "max_abs_diff": w.max_abs_diff,
                "relative_l2": w.relative_l2,
            }
            for w in diff.initializers_changed
        ],
    }

"""Safe YAML reading that keeps the line of every key and value.

PyYAML's ``safe_load`` forgets where values came from, silently keeps the last of two duplicate
keys and expands alias bombs. A site file is safety-relevant input, so we compose the node graph
with the safe loader and build plain values ourselves: only the YAML core schema's tags are
accepted (any ``!!python/...`` or custom tag is an error and is never constructed), duplicate keys
and merge keys are errors, and the number of built nodes is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import yaml

Scalar: TypeAlias = bool | int | float | str | None

# Tags that the YAML core schema resolves plain scalars to; nothing else is ever built.
_SCALAR_TAGS = {
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:str",
}
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
# A site file has hundreds of nodes; anything past this is an alias bomb or not a site file.
MAX_NODES = 200_000


@dataclass(frozen=True)
class Issue:
    """One problem found in a source file: ``file:line: key.path: message``."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SourceError(Exception):
    """The file cannot be read as YAML at all (syntax, encoding, forbidden tag, I/O)."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(str(issue))
        self.issue = issue


@dataclass
class Node:
    """A YAML value with its 1-based line.

    ``value`` is a scalar, a ``dict[str, Node]`` (mapping, keys in file order) or a
    ``list[Node]``. For mappings ``key_lines`` holds the line of each key, which is where an
    error about that key points.
    """

    value: Scalar | dict[str, Node] | list[Node]
    line: int
    key_lines: dict[str, int] = field(default_factory=dict)


def load(path: str | Path) -> Node:
    """Read ``path`` and return its document as a :class:`Node` tree.

    Raises :class:`SourceError` for unreadable files, YAML syntax errors, forbidden tags,
    duplicate or non-string keys, and documents that are not exactly one mapping.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError(Issue(name, 0, "", "file not found")) from None
    except UnicodeDecodeError as exc:
        raise SourceError(Issue(name, 0, "", f"not UTF-8 text ({exc.reason})")) from None
    except OSError as exc:
        raise SourceError(Issue(name, 0, "", f"cannot read: {exc.strerror}")) from None
    return loads(text, name)


def loads(text: str, filename: str = "<string>") -> Node:
    """Like :func:`load` for text already in memory; ``filename`` is used in messages."""
    try:
        docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or exc.context or "invalid YAML"
        raise SourceError(Issue(filename, line, "", f"YAML syntax error: {problem}")) from None
    except yaml.YAMLError as exc:
        raise SourceError(Issue(filename, 0, "", f"YAML error: {exc}")) from None
    if len(docs) != 1 or docs[0] is None:
        count = len([d for d in docs if d is not None])
        raise SourceError(Issue(filename, 1, "", f"expected one YAML document, found {count}"))
    builder = _Builder(filename)
    root = builder.build(docs[0], "")
    if not isinstance(root.value, dict):
        raise SourceError(Issue(filename, root.line, "", "top level must be a mapping of keys"))
    return root


class _Builder:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.count = 0
        self.constructor = yaml.SafeLoader("")

    def fail(self, node: yaml.Node, path: str, message: str) -> SourceError:
        return SourceError(Issue(self.filename, node.start_mark.line + 1, path, message))

    def build(self, node: yaml.Node, path: str) -> Node:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, path, f"document has more than {MAX_NODES} values")
        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                raise self.fail(node, path, f"YAML tag {node.tag!r} is not allowed")
            # .nan and .inf are legal YAML floats; the validators decide where they are allowed.
            return Node(self.constructor.construct_object(node, deep=True), line)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise self.fail(node, path, f"YAML tag {node.tag!r} is not allowed")
            return Node([self.build(n, f"{path}[{i}]") for i, n in enumerate(node.value)], line)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                raise self.fail(node, path, f"YAML tag {node.tag!r} is not allowed")
            items: dict[str, Node] = {}
            key_lines: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise self.fail(key_node, path, "merge keys (<<) are not supported")
                key = self.build(key_node, path).value
                if not isinstance(key, str):
                    shown = key if isinstance(key, int | float | bool) or key is None else "?"
                    raise self.fail(key_node, path, f"keys must be text, found {shown!r}")
                sub = f"{path}.{key}" if path else key
                if key in items:
                    first = key_lines[key]
                    raise self.fail(key_node, sub, f"duplicate key (first defined at line {first})")
                key_lines[key] = key_node.start_mark.line + 1
                items[key] = self.build(value_node, sub)
            return Node(items, line, key_lines)
        raise self.fail(node, path, "unsupported YAML node")

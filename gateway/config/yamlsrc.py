"""Safe YAML reading that keeps the line of every key and value.

PyYAML's ``safe_load`` forgets where values came from, silently keeps the last of two duplicate
keys and expands alias bombs. A site file is safety-relevant input, so we compose the node graph
with the safe loader and build plain values ourselves: only the YAML core schema's tags are
accepted (any ``!!python/...`` or custom tag is an error and is never constructed), duplicate keys
and merge keys are errors, and the file size, the nesting depth and the number of built nodes
are bounded.

YAML 1.1 (which PyYAML implements) reads some plain scalars differently from YAML 1.2 and from
what an engineer means: ``010`` is octal 8 and ``1:30`` is base-60 90. Such numbers are refused
as ambiguous rather than silently reinterpreted; so are unquoted dates, which have no use in a
site file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from yaml.reader import ReaderError

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
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# What our loader resolves an *untagged* date to, so that it can be told apart from an explicit
# `!!timestamp` (refused like every other non-core tag) and given a message of its own.
_IMPLICIT_DATE_TAG = "tag:safety-gateway,2024:implicit-date"
# A site file has hundreds of nodes; anything past this is an alias bomb or not a site file.
MAX_NODES = 200_000
# A site file nests a handful of levels; PyYAML's composer and our builder recurse per level, so
# a deeper file (or a recursive alias, `a: &x [*x]`) would otherwise raise RecursionError.
MAX_DEPTH = 64
# A site file is a few kilobytes; the bound keeps a wrong path (a log, a dump) from being parsed.
MAX_BYTES = 1024 * 1024
# YAML 1.1 integers that YAML 1.2 and people read differently: a leading 0 (octal in 1.1, e.g.
# `010` = 8, `0_10` = 8) and base 60 (`1:30` = 90). Hex `0x..` and binary `0b..` are unambiguous.
_AMBIGUOUS_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]")


@dataclass(frozen=True)
class Issue:
    """One problem found in a source file: ``file:line: key.path: message``."""

    file: str
    line: int
    path: str
    message: str

    def __post_init__(self) -> None:
        # Names come from the file: a zero-width space or a Cyrillic "ie" (U+0435) in a tag
        # name must not print as an innocent `tags.level`, and a control character must not
        # reach the terminal. Everything outside printable ASCII is shown escaped.
        object.__setattr__(self, "path", escape(self.path))
        object.__setattr__(self, "message", escape(self.message))

    def __str__(self) -> str:
        # Line 0 means the problem is the whole file (missing, unreadable, not UTF-8).
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


def escape(text: str) -> str:
    """``text`` with every character outside printable ASCII written as ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN`` (a backslash itself stays as it is)."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


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
        with Path(path).open("rb") as file:
            # Read one byte past the bound rather than trusting stat(): pipes and devices
            # report no size.
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SourceError(Issue(name, 0, "", "file not found")) from None
    except OSError as exc:
        raise SourceError(Issue(name, 0, "", f"cannot read: {exc.strerror}")) from None
    if len(data) > MAX_BYTES:
        raise SourceError(Issue(name, 0, "", _TOO_LARGE))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(Issue(name, 0, "", f"not UTF-8 text ({exc.reason})")) from None
    # Universal newlines, as Path.read_text would give: line counts then agree with PyYAML's.
    return loads(text.replace("\r\n", "\n").replace("\r", "\n"), name)


_TOO_LARGE = "file larger than 1 MiB; a site file is far smaller"


def loads(text: str, filename: str = "<string>") -> Node:
    """Like :func:`load` for text already in memory; ``filename`` is used in messages."""
    if len(text) > MAX_BYTES:  # characters: never more than the file's bytes
        raise SourceError(Issue(filename, 0, "", _TOO_LARGE))
    try:
        docs = list(yaml.compose_all(text, Loader=_Loader))
    except _TooDeep as exc:
        raise SourceError(Issue(filename, exc.line, "", _too_deep())) from None
    except RecursionError:
        # Not expected with the depth bound above; kept so that no input can crash the caller.
        raise SourceError(Issue(filename, 0, "", _too_deep())) from None
    except ReaderError as exc:
        # Not a MarkedYAMLError: it carries an index into the text, not a line.
        raise SourceError(_reader_issue(exc, text, filename)) from None
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
    try:
        root = builder.build(docs[0], "", 0)
    except RecursionError:  # defensive, as above: build() is bounded by MAX_DEPTH
        raise SourceError(Issue(filename, 0, "", _too_deep())) from None
    if not isinstance(root.value, dict):
        raise SourceError(Issue(filename, root.line, "", "top level must be a mapping of keys"))
    return root


def _too_deep() -> str:
    return f"nested too deeply (more than {MAX_DEPTH} levels)"


def _reader_issue(exc: ReaderError, text: str, filename: str) -> Issue:
    position = exc.position if isinstance(exc.position, int) else -1
    if not 0 <= position < len(text):
        return Issue(filename, 0, "", f"unreadable text: {exc.reason}")
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    char = text[position]
    where = f"U+{ord(char):04X} at column {column}"
    # PyYAML refuses C0/C1 controls other than tab and line breaks, and a few non-characters.
    if char < " " or "\x7f" <= char <= "\x9f":
        message = f"control character {where} not allowed (only tab and line breaks are)"
    else:
        message = f"character {where} not allowed in YAML"
    return Issue(filename, line, "", message)


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _Loader(yaml.SafeLoader):
    """The safe loader with a bound on nesting, and with untagged dates marked as such."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            # types-PyYAML leaves peek_event and resolve unannotated; their results are typed here.
            event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
            mark = event.start_mark
            raise _TooDeep(0 if mark is None else mark.line + 1)

    def compose_sequence_node(self, anchor: Any) -> yaml.SequenceNode:
        self._enter()
        node = super().compose_sequence_node(anchor)
        self.depth -= 1
        return node

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        self._enter()
        node = super().compose_mapping_node(anchor)
        self.depth -= 1
        return node

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        # Called only for scalars without an explicit tag.
        tag: str = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
        return _IMPLICIT_DATE_TAG if tag == _TIMESTAMP_TAG else tag


def _ambiguous_number(node: yaml.ScalarNode) -> str | None:
    """The message for a YAML 1.1 number that YAML 1.2 (and a reader) would read otherwise."""
    text = str(node.value)
    if ":" in text:
        return (f"ambiguous number {text}: YAML 1.1 reads it in base 60; write the number "
                "itself, or quote it")
    if node.tag == "tag:yaml.org,2002:int" and _AMBIGUOUS_LEADING_ZERO.match(text):
        return (f"ambiguous number {text}: YAML 1.1 reads a leading 0 as octal; write it "
                "without leading zeros, or quote it")
    return None


class _Builder:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.count = 0
        self.constructor = yaml.SafeLoader("")

    def fail(self, node: yaml.Node, path: str, message: str) -> SourceError:
        return SourceError(Issue(self.filename, node.start_mark.line + 1, path, message))

    def build(self, node: yaml.Node, path: str, depth: int) -> Node:
        """Build ``node``, the value at ``path``, nested in ``depth`` collections.

        The composer bounds the nesting of the text; the bound is checked again here because an
        alias can put a deep value at a deep place, or inside itself (``a: &x [*x]``).
        """
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, path, f"document has more than {MAX_NODES} values")
        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _IMPLICIT_DATE_TAG:
                raise self.fail(node, path, "dates are not supported here; quote the text")
            if node.tag not in _SCALAR_TAGS:
                raise self.fail(node, path, f"YAML tag {node.tag!r} is not allowed")
            if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
                ambiguous = _ambiguous_number(node)
                if ambiguous is not None:
                    raise self.fail(node, path, ambiguous)
            # .nan and .inf are legal YAML floats; the validators decide where they are allowed.
            return Node(self.constructor.construct_object(node, deep=True), line)
        if depth >= MAX_DEPTH:
            where = path if len(path) <= 80 else path[:77] + "..."
            raise self.fail(node, where, _too_deep())
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise self.fail(node, path, f"YAML tag {node.tag!r} is not allowed")
            return Node([self.build(n, f"{path}[{i}]", depth + 1)
                         for i, n in enumerate(node.value)], line)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                raise self.fail(node, path, f"YAML tag {node.tag!r} is not allowed")
            items: dict[str, Node] = {}
            key_lines: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise self.fail(key_node, path, "merge keys (<<) are not supported")
                key = self.build(key_node, path, depth + 1).value
                if not isinstance(key, str):
                    shown = key if isinstance(key, int | float | bool) or key is None else "?"
                    raise self.fail(key_node, path, f"keys must be text, found {shown!r}")
                sub = f"{path}.{key}" if path else key
                if key in items:
                    first = key_lines[key]
                    raise self.fail(key_node, sub, f"duplicate key (first defined at line {first})")
                key_lines[key] = key_node.start_mark.line + 1
                items[key] = self.build(value_node, sub, depth + 1)
            return Node(items, line, key_lines)
        raise self.fail(node, path, "unsupported YAML node")

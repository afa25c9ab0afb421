"""Tests for gateway.config.yamlsrc: YAML read safely, with the line of every key and value.

Line numbers are counted by hand from the literal texts below (1-based).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import pytest
import yaml

from gateway.config.yamlsrc import MAX_NODES, Issue, Node, SourceError, load, loads

if TYPE_CHECKING:
    from pathlib import Path


def source_error(text: str, filename: str = "site.yaml") -> Issue:
    with pytest.raises(SourceError) as info:
        loads(text, filename)
    issue = info.value.issue
    assert str(info.value) == str(issue)
    return issue


def mapping(node: Node) -> dict[str, Node]:
    assert isinstance(node.value, dict), node
    return node.value


def items(node: Node) -> list[Node]:
    assert isinstance(node.value, list), node
    return node.value


def plain(node: Node) -> object:
    """The node tree as plain Python values (to compare whole documents)."""
    if isinstance(node.value, dict):
        return {k: plain(v) for k, v in node.value.items()}
    if isinstance(node.value, list):
        return [plain(v) for v in node.value]
    return node.value


# --------------------------------------------------------------------------- lines and values

DOC = """\
# a comment on line 1
site:
  name: tank
  limits:
    - 1
    - {a: 2, b: [3, 4]}

    - >-
      folded
      text
other: [x, y]
"quoted key": 7
"""


def test_lines_of_keys_and_values():
    root = loads(DOC)
    assert root.line == 2  # the top mapping starts at its first key
    assert root.key_lines == {"site": 2, "other": 11, "quoted key": 12}
    site = mapping(root)["site"]
    assert site.line == 3  # a block mapping value starts at its first key, not at "site:"
    assert site.key_lines == {"name": 3, "limits": 4}
    assert mapping(site)["name"].line == 3
    limits = items(mapping(site)["limits"])
    assert [item.line for item in limits] == [5, 6, 8]
    flow = limits[1]
    assert flow.key_lines == {"a": 6, "b": 6}
    assert [n.line for n in items(mapping(flow)["b"])] == [6, 6]
    assert mapping(root)["other"].line == 11
    assert mapping(root)["quoted key"].line == 12


def test_values_are_plain_python():
    root = loads(DOC)
    assert plain(root) == {
        "site": {"name": "tank", "limits": [1, {"a": 2, "b": [3, 4]}, "folded text"]},
        "other": ["x", "y"],
        "quoted key": 7,
    }


def test_scalar_types():
    root = loads("i: 12\nf: 1.5\nt: true\nn: null\ne:\ns: '12'\nneg: -3\nhex: 0x10\n")
    values = {k: v.value for k, v in mapping(root).items()}
    assert values == {"i": 12, "f": 1.5, "t": True, "n": None, "e": None, "s": "12",
                      "neg": -3, "hex": 16}
    assert type(values["i"]) is int
    assert type(values["t"]) is bool


def test_nan_and_inf_are_read_as_floats():
    # They are legal YAML floats; refusing them where they make no sense is the loader's job.
    root = loads("a: .nan\nb: .inf\nc: -.inf\n")
    values = {k: v.value for k, v in mapping(root).items()}
    assert isinstance(values["a"], float)
    assert math.isnan(values["a"])
    assert values["b"] == math.inf
    assert values["c"] == -math.inf


def test_small_aliases_are_allowed():
    root = loads("a: &x {k: 1}\nb: *x\n")
    assert plain(root) == {"a": {"k": 1}, "b": {"k": 1}}


def test_crlf_file_has_the_same_lines(tmp_path: Path):
    path = tmp_path / "crlf.yaml"
    path.write_bytes(b"a: 1\r\n\r\nb:\r\n  c: 2\r\n")
    root = load(path)
    assert root.key_lines == {"a": 1, "b": 3}
    assert mapping(root)["b"].key_lines == {"c": 4}


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffname: Füllstand\nx: 1\n".encode())
    root = load(path)
    assert plain(root) == {"name": "Füllstand", "x": 1}
    assert root.key_lines == {"name": 1, "x": 2}


# --------------------------------------------------------------------------- forbidden tags


def _open_payload(target: Path) -> str:
    # Constructing this tag calls open(target, "w"), which creates the file.
    return f'!!python/object/apply:builtins.open ["{target}", "w"]'


def test_payload_really_has_a_side_effect(tmp_path: Path):
    """Control experiment: the payload used below does create its file when constructed."""
    target = tmp_path / "created-by-unsafe-load"
    data = yaml.unsafe_load(f"a: {_open_payload(target)}\n")
    data["a"].close()
    assert target.exists()


@pytest.mark.parametrize(
    ("template", "line", "path"),
    [
        ("site:\n  name: {p}\n", 2, "site.name"),
        ("a: 1\nlist:\n  - ok\n  - {p}\n", 4, "list[1]"),
        ("? {p}\n: 1\n", 1, ""),
        ("a: &x {p}\nb: *x\n", 1, "a"),
    ],
)
def test_python_apply_tag_is_refused_and_never_executed(tmp_path: Path, template, line, path):
    target = tmp_path / "pwned"
    issue = source_error(template.format(p=_open_payload(target)))
    assert not target.exists()
    assert issue.line == line
    assert issue.path == path
    assert issue.message == (
        "YAML tag 'tag:yaml.org,2002:python/object/apply:builtins.open' is not allowed"
    )


def test_os_system_payload_is_refused_and_never_executed(tmp_path: Path):
    target = tmp_path / "hacked"
    issue = source_error(f'cmd: !!python/object/apply:os.system ["touch {target}"]\n')
    assert not target.exists()
    assert "python/object/apply:os.system" in issue.message
    assert "is not allowed" in issue.message


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("a: !!python/name:os.system ''\n", "tag:yaml.org,2002:python/name:os.system"),
        ("a: !!python/object/new:os.system [ls]\n",
         "tag:yaml.org,2002:python/object/new:os.system"),
        ("a: !!python/tuple [1, 2]\n", "tag:yaml.org,2002:python/tuple"),
        ("a: !!binary aGVsbG8=\n", "tag:yaml.org,2002:binary"),
        ("a: !!set {x: null}\n", "tag:yaml.org,2002:set"),
        ("a: !!omap [{x: 1}]\n", "tag:yaml.org,2002:omap"),
        ("a: !Ref other\n", "!Ref"),
        ("a: !Ref [x, y]\n", "!Ref"),
        ("a: !Ref {x: 1}\n", "!Ref"),
        ("a: !!timestamp 2024-01-01\n", "tag:yaml.org,2002:timestamp"),
    ],
)
def test_other_tags_are_refused(text, tag):
    issue = source_error(text)
    assert issue.line == 1
    assert issue.path == "a"
    assert issue.message == f"YAML tag {tag!r} is not allowed"


def test_forbidden_tag_deep_in_the_file_names_its_line():
    issue = source_error("a:\n  b:\n    - 1\n    - c: !Env HOME\n")
    assert (issue.line, issue.path) == (4, "a.b[1].c")


# --------------------------------------------------------------------------- keys


def test_duplicate_key_names_both_lines():
    issue = source_error("a: 1\nb: 2\na: 3\n")
    assert (issue.file, issue.line, issue.path) == ("site.yaml", 3, "a")
    assert issue.message == "duplicate key (first defined at line 1)"
    assert str(issue) == "site.yaml:3: a: duplicate key (first defined at line 1)"


def test_nested_duplicate_key_and_quoting_does_not_hide_it():
    issue = source_error("tags:\n  level:\n    unit: m\n    'unit': cm\n")
    assert (issue.line, issue.path) == (4, "tags.level.unit")
    assert "first defined at line 3" in issue.message


def test_merge_keys_are_refused():
    issue = source_error("base: &b {x: 1}\nother:\n  y: 2\n  <<: *b\n")
    assert (issue.line, issue.path) == (4, "other")
    assert issue.message == "merge keys (<<) are not supported"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("1: a\n", "1"),
        ("true: a\n", "True"),
        ("~: a\n", "None"),
        ("1.5: a\n", "1.5"),
    ],
)
def test_non_text_keys_are_refused(text, shown):
    issue = source_error(text)
    assert issue.line == 1
    assert issue.message == f"keys must be text, found {shown}"


def test_non_text_key_in_nested_mapping_names_parent_path():
    issue = source_error("ok: 1\nouter:\n  inner:\n    42: x\n")
    assert (issue.line, issue.path) == (4, "outer.inner")
    assert issue.message == "keys must be text, found 42"


def test_complex_key_is_refused():
    issue = source_error("? [a, b]\n: 1\n")
    assert issue.line == 1
    assert "keys must be text" in issue.message


# --------------------------------------------------------------------------- documents


def test_alias_bomb_is_refused_quickly():
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(levels) + "\n"  # 9**9 (about 387 million) strings if expanded
    # CPU time, not wall time: the bound is about work done, and must not fail because other
    # processes share the machine.
    start = time.process_time()
    issue = source_error(text)
    elapsed = time.process_time() - start
    assert elapsed < 2.0
    assert issue.message == f"document has more than {MAX_NODES} values"


@pytest.mark.parametrize(
    ("text", "count"),
    [("a: 1\n---\nb: 2\n", 2), ("---\na: 1\n---\nb: 2\n---\nc: 3\n", 3)],
)
def test_several_documents_are_refused(text, count):
    issue = source_error(text)
    assert issue.line == 1
    assert issue.message == f"expected one YAML document, found {count}"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_refused(text):
    issue = source_error(text)
    assert issue.message == "expected one YAML document, found 0"


@pytest.mark.parametrize(
    ("text", "line"),
    [("- a\n- b\n", 1), ("just text\n", 1), ("\n\n42\n", 3), ("--- 5\n", 1)],
)
def test_top_level_must_be_a_mapping(text, line):
    issue = source_error(text)
    assert issue.line == line
    assert issue.message == "top level must be a mapping of keys"


def test_syntax_error_names_its_line():
    issue = source_error("a: 1\nb: c: d\n")
    assert (issue.file, issue.line, issue.path) == ("site.yaml", 2, "")
    assert issue.message.startswith("YAML syntax error: ")
    assert str(issue).startswith("site.yaml:2: YAML syntax error: ")


def test_unclosed_flow_sequence_is_a_syntax_error():
    issue = source_error("a: [1, 2\nb: 3\n")
    assert issue.message.startswith("YAML syntax error: ")
    assert issue.line >= 2


# --------------------------------------------------------------------------- files


def test_load_reads_a_file(tmp_path: Path):
    path = tmp_path / "ok.yaml"
    path.write_text("a:\n  b: 1\n", encoding="utf-8")
    root = load(path)
    assert plain(root) == {"a": {"b": 1}}
    assert mapping(root)["a"].key_lines == {"b": 2}


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SourceError) as info:
        load(path)
    assert info.value.issue.file == str(path)
    assert info.value.issue.message == "file not found"
    assert str(path) in str(info.value)


def test_invalid_utf8(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: Füllstand\n".encode("latin-1"))
    with pytest.raises(SourceError) as info:
        load(path)
    assert info.value.issue.file == str(path)
    assert info.value.issue.message.startswith("not UTF-8 text")


def test_directory_is_a_read_error(tmp_path: Path):
    with pytest.raises(SourceError) as info:
        load(tmp_path)
    assert info.value.issue.file == str(tmp_path)
    assert info.value.issue.message.startswith("cannot read")


def test_filename_is_used_in_messages():
    issue = source_error("a: 1\na: 2\n", filename="plant/site.yaml")
    assert str(issue).startswith("plant/site.yaml:2: a: ")


# --------------------------------------------------------------------------- known problems


def test_control_character_error_names_file_and_line():
    # BUG (yamlsrc.py, loads): PyYAML's ReaderError is not a MarkedYAMLError, so the issue
    # gets line 0 and a message that talks about '"<unicode string>", position 14' instead
    # of the line. ReaderError has `.position`; line = text.count("\n", 0, position) + 1.
    issue = source_error("a: 1\nb: 2\nc: x\x07y\n")
    assert issue.line == 3
    assert "<unicode string>" not in issue.message


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 600 + "]" * 600 + "\n",
        "a: " + "{b: " * 600 + "1" + "}" * 600 + "\n",
    ],
)
def test_deep_nesting_is_a_source_error(text):
    # BUG (yamlsrc.py, loads and _Builder.build): PyYAML's composer and _Builder.build recurse per
    # nesting level; a 1-2 kB file raises RecursionError (not SourceError), so `check` exits 70
    # with "internal error". Fix: catch RecursionError around compose_all, or bound depth.
    with pytest.raises(SourceError):
        loads(text)


@pytest.mark.parametrize(("text", "silent"), [("a: 010\n", 8), ("a: 1:30\n", 90)])
def test_yaml11_integer_forms_are_not_silently_reinterpreted(text, silent):
    # BUG (yamlsrc.py, _Builder.build): the YAML 1.1 resolver reads 010 as octal 8 and 1:30 as
    # sexagesimal 90. An engineer writing `address: 010` means register 10 and gets 8;
    # `09` in the same place is an error (text), so the behaviour is also inconsistent.
    # Either refuse such scalars ("ambiguous number 010; write 8 or 10") or read them as
    # YAML 1.2 does (10; "1:30" as text).
    try:
        value = mapping(loads(text))["a"].value
    except SourceError as exc:
        line = exc.issue.line
        assert line == 1
        return
    assert value != silent

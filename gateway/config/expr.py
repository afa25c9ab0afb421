"""Linear expressions over tag names, parsed without ``eval``.

Envelope constraints are written the way an engineer reads them::

    inflow_valve + outflow_pump <= 180
    0.5 * (heater - 10) + relief_valve >= 2
    level > 4.5

The grammar is a small recursive-descent parser over linear forms: sums and differences of
terms, multiplication and division by constants, unary signs and parentheses. A product of two
tags, division by a tag, powers (``**`` or ``^``) or function calls are refused with a message
saying why, because the compiled kernel evaluates only ``a·x (op) b``. Names and numbers are
ASCII; nesting (parentheses and unary signs) is limited to :data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum


class ExprError(ValueError):
    """The text is not a valid linear expression; the message says where and why."""


class Comparison(StrEnum):
    """Comparison operators, by their symbol."""

    LE = "<="
    GE = ">="
    LT = "<"
    GT = ">"
    EQ = "=="


@dataclass(frozen=True)
class LinearForm:
    """``sum(coef * name) + constant``; ``terms`` holds each name once, in first-use order,
    without zero coefficients."""

    terms: tuple[tuple[str, float], ...]
    constant: float

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.terms)


@dataclass(frozen=True)
class LinearRelation:
    """``form (op) rhs`` with every tag on the left and a single constant on the right."""

    form: LinearForm
    op: Comparison
    rhs: float


# Names and numbers are ASCII only: `\d` would also match e.g. Arabic-Indic digits, which
# float() accepts ("1\u0660" looks like "1." and reads as 10).
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME = re.compile(NAME_PATTERN)
_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<num>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    rf"|(?P<name>{NAME_PATTERN})"
    r"|(?P<op><=|>=|==|!=|\*\*|[-+*/()<>=^,%])"
    r")"
)
_SPACE = re.compile(r"\s*")
_MAX_LENGTH = 4096
# Parentheses and unary signs nest; each level costs the recursive descent a few stack frames.
# No real constraint comes near this, and it keeps every input far from RecursionError.
MAX_DEPTH = 64
# The bound should make RecursionError impossible; the public functions still turn one into an
# ExprError, so that a caller already deep in its own stack cannot crash on a parse.
_TOO_DEEP = f"nested too deeply (more than {MAX_DEPTH} levels)"


def is_name(text: str) -> bool:
    """True if ``text`` is a name the parser reads as one tag (ASCII letters, digits, ``_``;
    not starting with a digit)."""
    return _NAME.fullmatch(text) is not None


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    if len(text) > _MAX_LENGTH:
        raise ExprError(f"expression longer than {_MAX_LENGTH} characters")
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        space = _SPACE.match(text, pos)  # always matches, possibly empty
        start = pos if space is None else space.end()
        if start == len(text):
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ExprError(f"unexpected character {text[start]!r} at column {start + 1}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind), match.start(kind) + 1))
        pos = match.end()
    return tokens


# A linear form during parsing: {name: coef}, constant.
_Form = tuple[dict[str, float], float]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def enter(self, col: int) -> None:
        """Count one level of nesting (a parenthesis or a unary sign) starting at ``col``."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"{_TOO_DEEP} at column {col}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise ExprError("expression ends too early")
        self.i += 1
        return token

    def expr(self) -> _Form:
        left = self.term()
        while (tok := self.peek()) is not None and tok[1] in "+-" and tok[0] == "op":
            self.take()
            right = self.term()
            left = _add(left, right, -1.0 if tok[1] == "-" else 1.0)
        return left

    def term(self) -> _Form:
        left = self.unary()
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in (
            "*", "/", "**", "^"
        ):
            self.take()
            if tok[1] in ("**", "^"):  # '^' is a power in most notations, never a XOR here
                raise ExprError(f"not linear: powers are not allowed (column {tok[2]})")
            right = self.unary()
            if tok[1] == "*":
                left = _mul(left, right, tok[2])
            else:
                if right[0]:
                    raise ExprError(
                        f"not linear: division by tag {next(iter(right[0]))!r} "
                        f"at column {tok[2]}"
                    )
                if right[1] == 0.0:
                    raise ExprError(f"division by zero at column {tok[2]}")
                left = _scale(left, 1.0 / right[1])
        return left

    def unary(self) -> _Form:
        tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] in "+-":
            self.take()
            self.enter(tok[2])
            inner = self.unary()
            self.depth -= 1
            return _scale(inner, -1.0) if tok[1] == "-" else inner
        return self.atom()

    def atom(self) -> _Form:
        kind, text, col = self.take()
        if kind == "num":
            value = float(text)
            if not math.isfinite(value):
                raise ExprError(f"number {text} at column {col} is not finite")
            return {}, value
        if kind == "name":
            nxt = self.peek()
            if nxt is not None and nxt[1] == "(":
                raise ExprError(f"function calls are not allowed ({text}() at column {col})")
            return {text: 1.0}, 0.0
        if text == "(":
            self.enter(col)
            inner = self.expr()
            self.depth -= 1
            closing = self.take()
            if closing[1] != ")":
                raise ExprError(f"expected ')' at column {closing[2]}, found {closing[1]!r}")
            return inner
        if text in ("**", "^"):
            raise ExprError(f"not linear: powers are not allowed (column {col})")
        raise ExprError(f"unexpected {text!r} at column {col}")


def _add(a: _Form, b: _Form, sign: float) -> _Form:
    terms = dict(a[0])
    for name, coef in b[0].items():
        terms[name] = terms.get(name, 0.0) + sign * coef
    return terms, a[1] + sign * b[1]


def _scale(a: _Form, k: float) -> _Form:
    return {name: coef * k for name, coef in a[0].items()}, a[1] * k


def _mul(a: _Form, b: _Form, col: int) -> _Form:
    if a[0] and b[0]:
        raise ExprError(
            f"not linear: product of {next(iter(a[0]))!r} and {next(iter(b[0]))!r} "
            f"at column {col}"
        )
    return _scale(b, a[1]) if not a[0] else _scale(a, b[1])


def _freeze(form: _Form) -> LinearForm:
    terms = tuple((n, c) for n, c in form[0].items() if c != 0.0)
    for name, coef in terms:
        if not math.isfinite(coef):
            raise ExprError(f"coefficient of {name!r} is not finite")
    if not math.isfinite(form[1]):
        raise ExprError("constant term is not finite")
    return LinearForm(terms, form[1])


def parse_form(text: str) -> LinearForm:
    """Parse a linear expression without a comparison, e.g. ``0.02*inflow - 0.01*outflow``.

    Raises :class:`ExprError` naming the problem and its column.
    """
    try:
        return _parse_form(text)
    except RecursionError:
        raise ExprError(_TOO_DEEP) from None


def _parse_form(text: str) -> LinearForm:
    parser = _Parser(text)
    if not parser.tokens:
        raise ExprError("expression is empty")
    form = parser.expr()
    rest = parser.peek()
    if rest is not None:
        if rest[0] == "op" and rest[1] in ("<=", ">=", "<", ">", "==", "!=", "="):
            raise ExprError(f"a comparison is not expected here (column {rest[2]})")
        raise ExprError(f"unexpected {rest[1]!r} at column {rest[2]}")
    return _freeze(form)


def parse_relation(text: str, allowed: frozenset[Comparison] | None = None) -> LinearRelation:
    """Parse ``left (op) right`` into ``form (op) rhs`` with all tags moved to the left.

    ``allowed`` restricts the operators (e.g. only ``<=``/``>=`` for linear constraints).
    Raises :class:`ExprError` naming the problem and its column.
    """
    try:
        return _parse_relation(text, allowed)
    except RecursionError:
        raise ExprError(_TOO_DEEP) from None


def _parse_relation(text: str, allowed: frozenset[Comparison] | None) -> LinearRelation:
    parser = _Parser(text)
    if not parser.tokens:
        raise ExprError("expression is empty")
    left = parser.expr()
    tok = parser.peek()
    if tok is None:
        raise ExprError("expected a comparison such as '<=' or '>='")
    if tok[0] != "op" or tok[1] not in {c.value for c in Comparison}:
        if tok[1] in ("=", "!="):
            raise ExprError(f"operator {tok[1]!r} at column {tok[2]} is not supported")
        raise ExprError(f"unexpected {tok[1]!r} at column {tok[2]}")
    parser.take()
    op = Comparison(tok[1])
    if allowed is not None and op not in allowed:
        names = " or ".join(sorted(c.value for c in allowed))
        raise ExprError(f"operator {op.value!r} is not allowed here; use {names}")
    right = parser.expr()
    rest = parser.peek()
    if rest is not None:
        raise ExprError(f"unexpected {rest[1]!r} at column {rest[2]} (one comparison only)")
    moved = _add(left, right, -1.0)
    form = _freeze((moved[0], 0.0))
    if not form.terms:
        raise ExprError("the comparison names no tag")
    rhs = 0.0 - moved[1]  # not -x: keeps 0 as +0.0 in messages and summaries
    if not math.isfinite(rhs):
        raise ExprError("constant term is not finite")
    return LinearRelation(form, op, rhs)

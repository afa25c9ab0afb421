"""Tests for gateway.config.expr, the linear expression parser.

Expected forms are worked out by hand from the text: every tag is moved to the left, constants
are folded to a single right-hand side (``left - right`` gives ``form (op) -constant``), and
``>=`` is kept as ``GE`` (the loader negates it; see test_loader).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.expr import (
    Comparison,
    ExprError,
    LinearForm,
    LinearRelation,
    parse_form,
    parse_relation,
)

LE_GE = frozenset({Comparison.LE, Comparison.GE})


def rel(text: str) -> LinearRelation:
    return parse_relation(text)


# --------------------------------------------------------------------------- accepted forms


@pytest.mark.parametrize(
    ("text", "terms", "op", "rhs"),
    [
        ("a + b <= 3", (("a", 1.0), ("b", 1.0)), Comparison.LE, 3.0),
        # tags on both sides: 2a - 3b <= -4 - 1
        ("2*a + 1 <= 3*b - 4", (("a", 2.0), ("b", -3.0)), Comparison.LE, -5.0),
        # >= is returned as GE, not negated (callers negate)
        ("a >= 2", (("a", 1.0),), Comparison.GE, 2.0),
        ("level > 4.5", (("level", 1.0),), Comparison.GT, 4.5),
        ("level < 0.3", (("level", 1.0),), Comparison.LT, 0.3),
        ("x == 1", (("x", 1.0),), Comparison.EQ, 1.0),
        # constants folded: 2*3 = 6, 4/2 = 2 moves right: 10 - 2
        ("2 * 3 * a + 4 / 2 <= 10", (("a", 6.0),), Comparison.LE, 8.0),
        # parentheses: 0.5*heater - 5 + relief >= 2  ->  rhs 7
        ("0.5 * (heater - 10) + relief >= 2", (("heater", 0.5), ("relief", 1.0)),
         Comparison.GE, 7.0),
        # nested parentheses distribute: 2*(3*(a - 1) + b) = 6a + 2b - 6
        ("2*(3*(a - 1) + b) <= 0", (("a", 6.0), ("b", 2.0)), Comparison.LE, 6.0),
        # unary minus, including a double one and a minus before a parenthesis
        ("-a - -b <= -(3)", (("a", -1.0), ("b", 1.0)), Comparison.LE, -3.0),
        ("-(a - b) <= 0", (("a", -1.0), ("b", 1.0)), Comparison.LE, 0.0),
        ("+a <= +1", (("a", 1.0),), Comparison.LE, 1.0),
        # division by a constant (and by a folded constant expression)
        ("a / 4 <= 1", (("a", 0.25),), Comparison.LE, 1.0),
        ("(a + b) / 2 <= 1", (("a", 0.5), ("b", 0.5)), Comparison.LE, 1.0),
        ("a / (1 + 1) <= 1", (("a", 0.5),), Comparison.LE, 1.0),
        # a constant on the left times a tag on the right: 3 <= 2*a  ->  -2a <= -3
        ("3 <= 2 * a", (("a", -2.0),), Comparison.LE, -3.0),
        # scientific notation, leading/trailing dots
        ("1e-3 * a + 2.5E2 <= 1.5e+3", (("a", 0.001),), Comparison.LE, 1250.0),
        (".5*a <= 1.", (("a", 0.5),), Comparison.LE, 1.0),
        # identifiers with digits and underscores; tabs and newlines are whitespace
        ("tank_2_level\t+\n_x9 <= 5", (("tank_2_level", 1.0), ("_x9", 1.0)),
         Comparison.LE, 5.0),
        # repeated names are merged; names whose coefficients cancel are dropped, and the rest
        # keep first-use order
        ("b + a - b + c + a <= 0", (("a", 2.0), ("c", 1.0)), Comparison.LE, 0.0),
    ],
)
def test_relation_parsed(text, terms, op, rhs):
    result = rel(text)
    assert result.form.names == tuple(n for n, _ in terms)
    for (name, coef), (exp_name, exp_coef) in zip(result.form.terms, terms, strict=True):
        assert name == exp_name
        assert coef == pytest.approx(exp_coef, rel=1e-15)
    assert result.op is op
    assert result.rhs == pytest.approx(rhs, rel=1e-15)
    # everything is on the left: the form of a relation carries no constant
    assert result.form.constant == 0.0


def test_zero_right_hand_side_is_positive_zero():
    # "a + 5 <= 5" folds to "a <= 0"; the code keeps +0.0 so summaries never print "-0.0"
    result = rel("a + 5 <= 5")
    assert result.rhs == 0.0
    assert math.copysign(1.0, result.rhs) == 1.0


@pytest.mark.parametrize(
    ("text", "terms", "constant"),
    [
        ("0.02*inflow - 0.01*outflow", (("inflow", 0.02), ("outflow", -0.01)), 0.0),
        # the boiler's temperature row: 0.08 heater - 0.004 temperature + 0.08
        ("0.08 * heater - 0.004 * (temperature - 20)",
         (("heater", 0.08), ("temperature", -0.004)), 0.08),
        ("-(a + 2) / 4", (("a", -0.25),), -0.5),
        ("3", (), 3.0),  # a form may be a constant (a constant rate of change)
    ],
)
def test_form_parsed(text, terms, constant):
    form = parse_form(text)
    assert isinstance(form, LinearForm)
    assert form.names == tuple(n for n, _ in terms)
    for (_, coef), (_, exp_coef) in zip(form.terms, terms, strict=True):
        assert coef == pytest.approx(exp_coef, rel=1e-12)
    assert form.constant == pytest.approx(constant, rel=1e-12, abs=1e-15)


def test_allowed_operators_restrict_relation():
    assert parse_relation("a <= 1", LE_GE).op is Comparison.LE
    assert parse_relation("a >= 1", LE_GE).op is Comparison.GE
    for text in ("a < 1", "a > 1", "a == 1"):
        with pytest.raises(ExprError, match=r"is not allowed here; use <= or >="):
            parse_relation(text, LE_GE)


def test_maximum_length_is_accepted():
    text = "a <= 1".ljust(4096)
    assert len(text) == 4096
    assert rel(text).rhs == 1.0


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # product of two tags
        ("a * b <= 1", r"not linear: product of 'a' and 'b' at column 3"),
        ("(a + 1) * (b + 2) <= 3", r"not linear: product of 'a' and 'b'"),
        ("2 * a * b <= 3", r"not linear: product"),
        # division by a tag, and by zero
        ("1 / a <= 2", r"not linear: division by tag 'a' at column 3"),
        ("b / a <= 2", r"not linear: division by tag 'a'"),
        ("a / 0 <= 1", r"division by zero at column 3"),
        ("a / (2 - 2) <= 1", r"division by zero"),
        # powers
        ("a ** 2 <= 1", r"not linear: powers are not allowed \(column 3\)"),
        ("2 ** a <= 1", r"not linear: powers are not allowed"),
        ("^a <= 1", r"not linear: powers are not allowed"),
        # function calls
        ("sqrt(a) <= 1", r"function calls are not allowed \(sqrt\(\) at column 1\)"),
        ("2 * abs (a) <= 1", r"function calls are not allowed \(abs\(\) at column 5\)"),
        # two comparisons
        ("0 <= a <= 1", r"unexpected '<=' at column 8 \(one comparison only\)"),
        ("a < b < c", r"one comparison only"),
        # no tag, or tags that cancel
        ("1 <= 2", r"the comparison names no tag"),
        ("a - a <= 1", r"the comparison names no tag"),
        # '=' and '!='
        ("a = 1", r"operator '=' at column 3 is not supported"),
        ("a != 1", r"operator '!=' at column 3 is not supported"),
        # no comparison at all
        ("a + 1", r"expected a comparison such as '<=' or '>='"),
        # unknown characters
        ("a$ <= 1", r"unexpected character '\$' at column 2"),
        ("a ≤ 1", r"unexpected character '≤'"),
        ("a && b <= 1", r"unexpected character '&'"),
        ("a.b <= 1", r"unexpected character '\.'"),
        ("a % 2 <= 1", r"unexpected '%'"),
        ("f(a, b) <= 1", r"function calls are not allowed"),
        # juxtaposition is not multiplication
        ("3a <= 1", r"unexpected 'a' at column 2"),
        ("a b <= 1", r"unexpected 'b' at column 3"),
        # unbalanced parentheses, truncated text
        ("(a + 1 <= 2", r"expected '\)' at column 8, found '<='"),
        ("(a + 1", r"expression ends too early"),
        ("a <=", r"expression ends too early"),
        ("a <= )", r"unexpected '\)' at column 6"),
        ("a + <= 1", r"unexpected '<='"),
        # empty text
        ("", r"expression is empty"),
        ("   \t\n", r"expression is empty"),
        # non-finite numbers, written or folded
        ("1e400 * a <= 1", r"number 1e400 at column 1 is not finite"),
        ("a <= 1e400", r"number 1e400 at column 6 is not finite"),
        ("1e200 * 1e200 * a <= 1", r"coefficient of 'a' is not finite"),
        ("a + 1e308 + 1e308 <= 0", r"constant term is not finite"),
    ],
)
def test_relation_refused(text, message):
    with pytest.raises(ExprError, match=message):
        rel(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a <= 1", r"a comparison is not expected here \(column 3\)"),
        ("a = 1", r"a comparison is not expected here"),
        ("a * b", r"not linear: product of 'a' and 'b'"),
        ("a ** 2", r"powers are not allowed"),
        ("exp(a)", r"function calls are not allowed"),
        ("a b", r"unexpected 'b' at column 3"),
        ("", r"expression is empty"),
        ("a + 1e308 * 10", r"constant term is not finite"),
        ("a / b", r"division by tag 'b'"),
    ],
)
def test_form_refused(text, message):
    with pytest.raises(ExprError, match=message):
        parse_form(text)


def test_overly_long_text_refused_before_parsing():
    text = "a <= 1".ljust(4097)
    with pytest.raises(ExprError, match=r"expression longer than 4096 characters"):
        rel(text)
    with pytest.raises(ExprError, match=r"expression longer than 4096 characters"):
        parse_form("a + " * 1100 + "a")


def test_expr_error_is_a_value_error():
    # callers that catch ValueError (the schema's convention) also catch parse errors
    assert issubclass(ExprError, ValueError)


@pytest.mark.parametrize(
    ("text", "column"),
    [
        # the column must point at the offending character, not at the blank before it
        ("a $ 1", 3),
        ("a + $b <= 1", 5),
        ("level <= 4 @", 12),
    ],
)
def test_unknown_character_column_points_at_the_character(text, column):
    # BUG (expr.py, _tokenize): the column is computed from `pos`, the end of the previous token,
    # so it names the whitespace before the bad character whenever there is some.
    with pytest.raises(ExprError, match=rf"at column {column}\b"):
        rel(text)


@pytest.mark.parametrize("text", ["a ^ 2 <= 1", "a^2 <= 1", "2 ^ a <= 1"])
def test_caret_power_after_an_operand_says_power(text):
    # BUG (expr.py, _Parser.term and parse_relation): '^' after an operand is reported as
    # "unexpected '^'"; only a leading '^' gets the "powers are not allowed" message.
    with pytest.raises(ExprError, match=r"power"):
        rel(text)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 400 + "a" + ")" * 400 + " <= 1",
        "-" * 1200 + "a <= 1",
        "a <= " + "(" * 400,
    ],
)
def test_deep_nesting_within_the_length_limit_is_an_expr_error(text):
    # BUG (expr.py, _Parser): the recursive descent has no depth limit, so text well under
    # the 4096-character cap raises RecursionError instead of ExprError; the loader only
    # catches ExprError, so `safety-gateway check` reports an internal error (exit 70).
    assert len(text) <= 4096
    with pytest.raises(ExprError):
        rel(text)


@pytest.mark.parametrize(
    "text",
    [
        "a <= \u0663",  # ARABIC-INDIC DIGIT THREE
        "a <= 1\u0660",  # '1' then ARABIC-INDIC ZERO: looks like "1." but reads as 10
        "a <= \uff13",  # FULLWIDTH DIGIT THREE
    ],
)
def test_non_ascii_digits_refused(text):
    # BUG (expr.py, _TOKEN): `\d` matches every Unicode decimal digit and float() accepts them, so
    # "1\u0660" (looks like "1.") is read as 10. Names are ASCII-only; numbers should be too.
    with pytest.raises(ExprError):
        rel(text)


# --------------------------------------------------------------------------- properties

_FIRST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
NAMES = st.builds(str.__add__, st.sampled_from(_FIRST),
                  st.text(alphabet=_FIRST + "0123456789", max_size=8))
COEFS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False).filter(
    lambda c: c != 0.0
)
CONSTS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
OPS = st.sampled_from(["<=", ">=", "<", ">", "=="])


def render(coefs: dict[str, float], constant: float) -> str:
    """``{"a": 3.5, "b": -2.0}, 1.0`` -> ``"3.5*a - 2.0*b + 1.0"`` (repr round-trips floats)."""
    parts: list[str] = []
    for i, (name, coef) in enumerate(coefs.items()):
        sign = "-" if coef < 0 else "+"
        magnitude = f"{abs(coef)!r}*{name}"
        parts.append((f"-{magnitude}" if sign == "-" else magnitude) if i == 0
                     else f" {sign} {magnitude}")
    parts.append(f" {'-' if constant < 0 else '+'} {abs(constant)!r}")
    return "".join(parts)


@settings(max_examples=100, deadline=None)
@given(coefs=st.dictionaries(NAMES, COEFS, min_size=1, max_size=6), constant=CONSTS,
       op=OPS, rhs=CONSTS)
def test_round_trip_relation(coefs, constant, op, rhs):
    text = f"{render(coefs, constant)} {op} {rhs!r}"
    result = parse_relation(text)
    # Each coefficient only passes through a negation and an addition to 0.0: exact.
    assert dict(result.form.terms) == coefs
    assert result.form.names == tuple(coefs)  # first-use order
    assert result.op is Comparison(op)
    # rhs = -(constant - rhs); rounding is sign-symmetric, so this is exact too
    assert result.rhs == pytest.approx(rhs - constant, rel=1e-15, abs=0.0)


@settings(max_examples=100, deadline=None)
@given(coefs=st.dictionaries(NAMES, COEFS, min_size=0, max_size=6), constant=CONSTS)
def test_round_trip_form(coefs, constant):
    form = parse_form(render(coefs, constant))
    assert dict(form.terms) == coefs
    assert form.constant == constant


# Random linear expression trees: parsing then evaluating the form at a point must equal
# evaluating the tree directly (with Python arithmetic, which the parser never uses).
_VARS = ("x", "y", "z")
_SMALL = st.integers(min_value=-9, max_value=9)
_NONZERO = st.integers(min_value=1, max_value=9)


def _leaf() -> st.SearchStrategy[tuple[str, object]]:
    return st.one_of(
        st.sampled_from(_VARS).map(lambda v: (v, lambda p, v=v: p[v])),
        _SMALL.map(lambda k: (f"{k}" if k >= 0 else f"({k})", lambda p, k=k: float(k))),
    )


def _extend(children):
    def add(a, b):
        return (f"{a[0]} + {b[0]}", lambda p: a[1](p) + b[1](p))

    def sub(a, b):
        return (f"{a[0]} - ({b[0]})", lambda p: a[1](p) - b[1](p))

    def neg(a):
        return (f"-({a[0]})", lambda p: -a[1](p))

    def scale(k, a):
        return (f"{k} * ({a[0]})", lambda p: k * a[1](p))

    def divide(a, k):
        return (f"({a[0]}) / {k}", lambda p: a[1](p) / k)

    return st.one_of(
        st.builds(add, children, children),
        st.builds(sub, children, children),
        st.builds(neg, children),
        st.builds(scale, _SMALL, children),
        st.builds(divide, children, _NONZERO),
    )


@settings(max_examples=150, deadline=None)
@given(tree=st.recursive(_leaf(), _extend, max_leaves=12),
       point=st.fixed_dictionaries({v: st.integers(-50, 50).map(float) for v in _VARS}))
def test_form_evaluates_like_the_expression(tree, point):
    text, evaluate = tree
    form = parse_form(text)
    value = sum(c * point[n] for n, c in form.terms) + form.constant
    assert value == pytest.approx(evaluate(point), rel=1e-9, abs=1e-9)
    assert set(form.names) <= set(_VARS)
    assert all(c != 0.0 for _, c in form.terms)


_TOKENS = st.sampled_from(
    ["a", "b", "1", "2.5", "1e3", "(", ")", "+", "-", "*", "/", "**", "^", "<=", ">=", "<",
     ">", "==", "=", "!=", " ", "%", ",", "f(", "$", "1e999"]
)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(_TOKENS, max_size=20))
def test_any_text_parses_or_raises_expr_error(parts):
    text = "".join(parts)
    try:
        result = parse_relation(text)
    except ExprError as exc:
        refusal = str(exc)
        assert refusal  # every refusal says why
        return
    assert result.form.terms
    assert math.isfinite(result.rhs)
    assert all(math.isfinite(c) and c != 0.0 for _, c in result.form.terms)

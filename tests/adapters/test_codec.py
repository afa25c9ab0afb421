"""codec: engineering ⇄ wire values. Properties with hypothesis, pymodbus as an independent
cross-check of the register layout (big-endian bytes, both word orders)."""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from gateway.adapters import codec
from gateway.adapters.base import EncodingError
from gateway.adapters.codec import (
    decode,
    decode_bit,
    encode,
    encode_bit,
    neighbours,
    wire_value,
)
from gateway.config.schema import ModbusRef, OpcUaRef, Order, Table, Tag, TagKind, WireType

if TYPE_CHECKING:
    from collections.abc import Sequence

DT = AsyncModbusTcpClient.DATATYPE
PYMODBUS_TYPE = {WireType.INT16: DT.INT16, WireType.UINT16: DT.UINT16, WireType.INT32: DT.INT32,
                 WireType.UINT32: DT.UINT32, WireType.FLOAT32: DT.FLOAT32,
                 WireType.FLOAT64: DT.FLOAT64}
NUMERIC: list[WireType] = [t for t in WireType if t is not WireType.BOOL]
SCALES = [(1.0, 0.0), (0.01, 0.0), (0.1, -40.0), (-2.5, 100.0), (1e-3, 273.15), (7.0, 0.5)]


def mk(wire_type: WireType = WireType.FLOAT32, table: Table = Table.HOLDING_REGISTER,
       byte_order: Order = Order.BIG, word_order: Order = Order.BIG, scale: float = 1.0,
       offset: float = 0.0, address: int = 0, ref: ModbusRef | OpcUaRef | None = None) -> Tag:
    return Tag("t", "plc", TagKind.SENSOR, ref or ModbusRef(table, address), wire_type=wire_type,
               byte_order=byte_order, word_order=word_order, scale=scale, offset=offset,
               range_min=-1e300, range_max=1e300)


def raw_span(wire_type: WireType) -> tuple[float, float]:
    if wire_type.is_integer or wire_type is WireType.BOOL:
        low, high = wire_type.integer_range
        return low - 0.49, high + 0.49
    return (-3e38, 3e38) if wire_type is WireType.FLOAT32 else (-1e200, 1e200)


@st.composite
def tag_and_value(draw: st.DrawFn, types: Sequence[WireType] = NUMERIC) -> tuple[Tag, float]:
    wire_type = draw(st.sampled_from(types))
    scale, offset = draw(st.sampled_from(SCALES))
    tag = mk(wire_type, byte_order=draw(st.sampled_from(Order)),
             word_order=draw(st.sampled_from(Order)), scale=scale, offset=offset)
    low, high = raw_span(wire_type)
    raw = draw(st.one_of(
        st.floats(low, high, allow_nan=False),
        st.floats(-1000, 1000, allow_nan=False),
        st.integers(-1000, 1000).map(lambda i: i + 0.5),  # rounding ties
        st.integers(int(low + 0.5), int(high - 0.5)).map(float)))
    value = raw * scale + offset
    assume(math.isfinite(value))
    return tag, value


def encodable(tag: Tag, value: float) -> bool:
    try:
        encode(tag, value)
    except EncodingError:
        return False
    return True


# --------------------------------------------------------------------------- properties


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(tag_and_value())
def test_wire_value_is_a_fixed_point(tv: tuple[Tag, float]) -> None:
    tag, value = tv
    assume(encodable(tag, value))
    w = wire_value(tag, value)
    assert encode(tag, w) == encode(tag, value)
    assert wire_value(tag, w) == w
    regs = encode(tag, value)
    assert len(regs) == tag.wire_type.registers
    assert all(0 <= r <= 0xFFFF for r in regs)
    # What the device will be read back as is that value, to rounding of raw * scale + offset.
    assert decode(tag, regs) == pytest.approx(w, rel=1e-12, abs=1e-300)


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from([WireType.FLOAT32, WireType.FLOAT64]),
       st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                 st.floats(-3.5e38, 3.5e38, allow_nan=False),
                 st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1.4e-45, 3.4028235e38,
                                  3.4028235677973366e38, 1e-320, 0.1, 99.995])))
def test_unscaled_floats_take_the_short_path_to_the_same_answer(wire_type: WireType,
                                                               value: float) -> None:
    """wire_value skips the representability search for floats with scale 1 and offset 0;
    the search over the same raw must give the very same float (or the same error)."""
    tag = mk(wire_type)
    try:
        raw = codec._raw(tag, value)
    except EncodingError:
        with pytest.raises(EncodingError):
            wire_value(tag, value)
        return
    w = wire_value(tag, value)
    expected = codec._wire_of_raw(tag, raw)
    assert struct.pack(">d", w) == struct.pack(">d", expected)  # the same bits: -0.0 counts
    assert type(w) is float


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(tag_and_value())
def test_neighbours_bracket_and_are_representable(tv: tuple[Tag, float]) -> None:
    tag, value = tv
    assume(encodable(tag, value))
    ns = neighbours(tag, value)
    assert 1 <= len(ns) <= 2
    assert list(ns) == sorted(ns)
    for n in ns:
        assert wire_value(tag, n) == n
    assert wire_value(tag, value) in ns
    assert ns[0] <= value <= ns[-1] or len(ns) == 1


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(NUMERIC), st.sampled_from(Order),
       st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4))
def test_decode_then_encode_gives_the_registers_back(wire_type: WireType, word_order: Order,
                                                     regs: list[int]) -> None:
    tag = mk(wire_type, word_order=word_order)
    regs = regs[:wire_type.registers]
    value = decode(tag, regs)
    assume(math.isfinite(value))
    back = encode(tag, value)
    if value == 0.0 and wire_type in (WireType.FLOAT32, WireType.FLOAT64):
        assert decode(tag, back) == 0.0  # -0.0 is written as +0.0
    else:
        assert list(back) == regs


# --------------------------------------------------------------------------- pymodbus cross-check


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(tag_and_value())
def test_registers_match_pymodbus(tv: tuple[Tag, float]) -> None:
    tag, value = tv
    tag = mk(tag.wire_type, word_order=tag.word_order)  # pymodbus: big bytes, scale 1
    assume(encodable(tag, value))
    w = wire_value(tag, value)
    raw: int | float = int(w) if tag.wire_type.is_integer else w
    theirs = AsyncModbusTcpClient.convert_to_registers(
        raw, PYMODBUS_TYPE[tag.wire_type], word_order=tag.word_order.value)
    assert list(encode(tag, value)) == theirs
    back = AsyncModbusTcpClient.convert_from_registers(
        theirs, PYMODBUS_TYPE[tag.wire_type], word_order=tag.word_order.value)
    assert decode(tag, theirs) == back


@pytest.mark.parametrize(("order", "expected"), [
    ((Order.BIG, Order.BIG), (0x4148, 0x0000)),  # 12.5 = 0x41480000: ABCD
    ((Order.BIG, Order.LITTLE), (0x0000, 0x4148)),  # CDAB
    ((Order.LITTLE, Order.BIG), (0x4841, 0x0000)),  # BADC
    ((Order.LITTLE, Order.LITTLE), (0x0000, 0x4841)),  # DCBA
])
def test_float32_layouts(order: tuple[Order, Order], expected: tuple[int, int]) -> None:
    tag = mk(WireType.FLOAT32, byte_order=order[0], word_order=order[1])
    assert encode(tag, 12.5) == expected
    assert decode(tag, expected) == 12.5


def test_int32_word_order() -> None:
    assert encode(mk(WireType.INT32), -2) == (0xFFFF, 0xFFFE)
    assert encode(mk(WireType.UINT32, word_order=Order.LITTLE), 0x12345678) == (0x5678, 0x1234)
    assert encode(mk(WireType.FLOAT64), 1.0) == (0x3FF0, 0, 0, 0)
    assert encode(mk(WireType.FLOAT64, word_order=Order.LITTLE), 1.0) == (0, 0, 0, 0x3FF0)


# --------------------------------------------------------------------------- rules and errors


def test_int16_negative_and_uint16_scaled() -> None:
    assert encode(mk(WireType.INT16), -123) == (0x10000 - 123,)
    assert decode(mk(WireType.INT16), [0xFF85]) == -123
    pct = mk(WireType.UINT16, scale=0.01)
    assert encode(pct, 123.45) == (12345,)
    assert decode(pct, [12345]) == pytest.approx(123.45, abs=1e-12)
    assert wire_value(pct, 123.456) == pytest.approx(123.46, abs=1e-12)


def test_decimal_scales_give_decimal_values() -> None:
    tag = mk(WireType.UINT16, scale=0.1)
    assert 3 * 0.1 != 0.3
    assert wire_value(tag, 0.3) == 0.3  # not 0.30000000000000004
    assert wire_value(tag, 0.31) == 0.3
    assert neighbours(tag, 0.33) == (0.3, 0.4)
    assert wire_value(mk(WireType.INT16, scale=0.01, offset=-40.0), -12.346) == -12.35


def test_integer_rounding_ties_to_even() -> None:
    tag = mk(WireType.INT16)
    assert [encode(tag, v)[0] for v in (2.5, 3.5, 2.4999, 2.5001)] == [2, 4, 2, 3]
    assert encode(tag, -2.5) == (0x10000 - 2,)


@pytest.mark.parametrize(("wire_type", "bad"), [
    (WireType.INT16, 32767.6), (WireType.INT16, -32768.6), (WireType.UINT16, -0.6),
    (WireType.UINT16, 65535.5000001), (WireType.INT32, 2.0**31), (WireType.UINT32, 2.0**32),
    (WireType.UINT32, -1.0),
])
def test_integer_out_of_range_is_refused_never_clipped(wire_type: WireType, bad: float) -> None:
    tag = mk(wire_type)
    for f in (encode, wire_value, neighbours):
        with pytest.raises(EncodingError, match="range"):
            f(tag, bad)


def test_scaled_range_edges() -> None:
    tag = mk(WireType.UINT16, scale=0.01)
    assert encode(tag, 655.35) == (65535,)
    assert encode(tag, 655.354) == (65535,)
    with pytest.raises(EncodingError):
        encode(tag, 655.356)  # raw 65535.6 rounds to 65536


@pytest.mark.parametrize("wire_type", list(WireType))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_is_refused(wire_type: WireType, bad: float) -> None:
    tag = mk(wire_type)
    with pytest.raises(EncodingError, match="finite"):
        encode(tag, bad)
    with pytest.raises(EncodingError, match="finite"):
        wire_value(tag, bad)


def test_float32_overflow_is_refused() -> None:
    tag = mk(WireType.FLOAT32)
    with pytest.raises(EncodingError, match="overflows float32"):
        encode(tag, 3.5e38)
    with pytest.raises(EncodingError, match="overflows"):
        encode(mk(WireType.FLOAT32, scale=1e-10), 1e30)
    # the largest float32 itself, and a value rounding down to it, are fine
    fmax = struct.unpack(">f", bytes.fromhex("7f7fffff"))[0]
    assert encode(tag, fmax) == (0x7F7F, 0xFFFF)
    assert wire_value(tag, fmax * (1 + 2.0**-26)) == fmax


def test_float32_rounding_is_what_the_gate_checks() -> None:
    tag = mk(WireType.FLOAT32)
    w = wire_value(tag, 0.1)
    assert w != 0.1 and w == struct.unpack(">f", struct.pack(">f", 0.1))[0]
    below, above = neighbours(tag, 0.1)
    assert below < 0.1 < above
    assert w in (below, above)
    assert neighbours(tag, 0.5) == (0.5,)


def test_negative_zero_is_written_as_zero() -> None:
    assert encode(mk(WireType.FLOAT32), -0.0) == (0, 0)
    assert encode(mk(WireType.FLOAT64), -0.0) == (0, 0, 0, 0)


def test_float_nan_on_the_wire_decodes_to_nan() -> None:
    assert math.isnan(decode(mk(WireType.FLOAT32), [0x7FC0, 0]))
    assert decode(mk(WireType.FLOAT32), [0x7F80, 0]) == math.inf


def test_bool_register_and_coil() -> None:
    reg = mk(WireType.BOOL)
    assert encode(reg, 1) == (1,) and encode(reg, 0.0) == (0,)
    with pytest.raises(EncodingError, match="not a bool"):
        encode(reg, 0.5)
    with pytest.raises(EncodingError, match="not 0 or 1"):
        decode(reg, [2])
    coil = mk(WireType.BOOL, table=Table.COIL)
    assert encode_bit(coil, 1.0) is True and encode_bit(coil, 0) is False
    for bad in (2.0, -1.0, 0.999, math.nan):
        with pytest.raises(EncodingError):
            encode_bit(coil, bad)
    assert decode_bit(coil, True) == 1.0 and decode_bit(coil, False) == 0.0
    # a scaled bool: the two states are offset and offset + scale
    valve = mk(WireType.BOOL, table=Table.COIL, scale=100.0, offset=0.0)
    assert encode_bit(valve, 100.0) is True
    assert wire_value(valve, 100.0) == 100.0
    assert neighbours(valve, 0.0) == (0.0,)
    with pytest.raises(EncodingError):
        encode_bit(valve, 1.0)


def test_wrong_table_or_length_is_an_error() -> None:
    with pytest.raises(EncodingError, match="register table"):
        encode(mk(WireType.BOOL, table=Table.COIL), 1)
    with pytest.raises(EncodingError, match="coil"):
        encode_bit(mk(WireType.BOOL), 1)
    with pytest.raises(EncodingError, match="takes 2 registers"):
        decode(mk(WireType.FLOAT32), [1])
    with pytest.raises(EncodingError, match=r"0\.\.65535"):
        decode(mk(WireType.UINT16), [70000])


def test_opcua_tags_follow_the_same_representation() -> None:
    ref = OpcUaRef("ns=2;s=Valve")
    assert wire_value(mk(WireType.FLOAT32, ref=ref), 0.1) == struct.unpack(
        ">f", struct.pack(">f", 0.1))[0]
    assert wire_value(mk(WireType.INT16, ref=ref, scale=0.5), 10.3) == 10.5
    assert wire_value(mk(WireType.FLOAT64, ref=ref), 0.1) == 0.1
    assert wire_value(mk(WireType.BOOL, ref=ref), 1) == 1.0
    with pytest.raises(EncodingError):
        wire_value(mk(WireType.UINT16, ref=ref), -1)
    with pytest.raises(EncodingError, match="register table"):
        encode(mk(WireType.FLOAT32, ref=ref), 1.0)


def test_integer_neighbours() -> None:
    tag = mk(WireType.UINT16, scale=0.5)
    assert neighbours(tag, 10.2) == (10.0, 10.5)
    assert neighbours(tag, 10.5) == (10.5,)
    assert neighbours(tag, 0.1) == (0.0, 0.5)
    assert neighbours(mk(WireType.UINT16), 65535.2) == (65535.0,)  # nothing above the range
    negative = mk(WireType.INT16, scale=-1.0)
    assert neighbours(negative, 3.4) == (3.0, 4.0)

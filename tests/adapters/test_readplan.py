"""readplan: contiguous blocks only, never a split value, limits respected."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.adapters.modbus.readplan import ReadBlock, plan_reads
from gateway.config.schema import ModbusRef, OpcUaRef, Table, Tag, TagKind, WireType

HR, IR, CO, DI = (Table.HOLDING_REGISTER, Table.INPUT_REGISTER, Table.COIL,
                  Table.DISCRETE_INPUT)


def t(name: str, table: Table, address: int, wire_type: WireType | None = None) -> Tag:
    wt = wire_type or (WireType.BOOL if table.is_bits else WireType.UINT16)
    return Tag(name, "plc", TagKind.SENSOR, ModbusRef(table, address), wire_type=wt,
               range_min=0, range_max=1)


def test_contiguous_tags_merge_in_address_order() -> None:
    tags = [t("c", HR, 3, WireType.FLOAT32), t("a", HR, 0), t("b", HR, 1, WireType.FLOAT32)]
    assert plan_reads(tags) == [ReadBlock(HR, 0, 5, (("a", 0), ("b", 1), ("c", 3)))]


def test_a_gap_splits_blocks() -> None:
    tags = [t("a", HR, 0), t("b", HR, 2)]
    assert plan_reads(tags) == [ReadBlock(HR, 0, 1, (("a", 0),)), ReadBlock(HR, 2, 1, (("b", 0),))]


def test_overlapping_tags_share_a_block() -> None:
    tags = [t("whole", HR, 10, WireType.FLOAT32), t("high", HR, 10), t("next", HR, 12)]
    [block] = plan_reads(tags)
    assert (block.start, block.count) == (10, 3)
    assert dict(block.members) == {"whole": 0, "high": 0, "next": 2}


def test_split_at_125_registers() -> None:
    tags = [t(f"r{i}", HR, i) for i in range(300)]
    blocks = plan_reads(tags)
    assert [(b.start, b.count) for b in blocks] == [(0, 125), (125, 125), (250, 50)]
    assert sum(len(b.members) for b in blocks) == 300


def test_float64_at_the_boundary_is_not_split() -> None:
    # 123 single registers, then a float64 at 123..126: 127 > 125, so it starts a new block
    tags = [t(f"r{i}", IR, i) for i in range(123)] + [t("d", IR, 123, WireType.FLOAT64)]
    blocks = plan_reads(tags)
    assert [(b.start, b.count) for b in blocks] == [(0, 123), (123, 4)]
    assert blocks[1].members == (("d", 0),)
    # with one register less before it, it fits exactly
    tags = [t(f"r{i}", IR, i) for i in range(121)] + [t("d", IR, 121, WireType.FLOAT64)]
    assert [(b.start, b.count) for b in plan_reads(tags)] == [(0, 125)]


def test_coils_up_to_2000_bits() -> None:
    tags = [t(f"c{i}", CO, i) for i in range(2500)]
    blocks = plan_reads(tags)
    assert [(b.table, b.start, b.count) for b in blocks] == [(CO, 0, 2000), (CO, 2000, 500)]


def test_tables_are_separate() -> None:
    tags = [t("h", HR, 0), t("i", IR, 0), t("c", CO, 0), t("d", DI, 0), t("i2", IR, 1)]
    blocks = plan_reads(tags)
    assert [(b.table, b.start, b.count) for b in blocks] == [
        (HR, 0, 1), (IR, 0, 2), (CO, 0, 1), (DI, 0, 1)]


def test_smaller_limits_and_errors() -> None:
    tags = [t(f"r{i}", HR, i) for i in range(10)]
    assert [b.count for b in plan_reads(tags, max_registers=4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="exceed"):
        plan_reads([t("d", HR, 0, WireType.FLOAT64)], max_registers=3)
    with pytest.raises(ValueError, match="65535"):
        plan_reads([t("f", HR, 65535, WireType.FLOAT32)])
    with pytest.raises(ValueError, match="max_registers"):
        plan_reads([], max_registers=126)
    opc = Tag("o", "srv", TagKind.SENSOR, OpcUaRef("ns=2;s=X"), range_min=0, range_max=1)
    with pytest.raises(ValueError, match="not a Modbus tag"):
        plan_reads([opc])
    assert plan_reads([]) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([HR, IR]), st.integers(0, 400),
                          st.sampled_from([WireType.UINT16, WireType.FLOAT32,
                                           WireType.FLOAT64])), max_size=80),
       st.integers(4, 125))
def test_plan_properties(specs: list[tuple[Table, int, WireType]], limit: int) -> None:
    tags = [t(f"t{i}", table, addr, wt) for i, (table, addr, wt) in enumerate(specs)]
    by_name = {tag.name: tag for tag in tags}
    blocks = plan_reads(tags, max_registers=limit)
    seen = [name for b in blocks for name, _ in b.members]
    assert sorted(seen) == sorted(by_name)  # every tag exactly once
    covered: dict[Table, set[int]] = {}
    for b in blocks:
        assert 1 <= b.count <= limit
        for name, offset in b.members:
            tag = by_name[name]
            assert isinstance(tag.ref, ModbusRef) and tag.ref.table is b.table
            assert tag.ref.address == b.start + offset
            assert offset + tag.wire_type.registers <= b.count  # whole value inside
        covered.setdefault(b.table, set()).update(range(b.start, b.start + b.count))
    mapped: dict[Table, set[int]] = {}
    for tag in tags:
        assert isinstance(tag.ref, ModbusRef)
        mapped.setdefault(tag.ref.table, set()).update(
            range(tag.ref.address, tag.ref.address + tag.wire_type.registers))
    assert covered == mapped  # no unmapped register is ever read

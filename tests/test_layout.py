"""Layout snapshots: fingerprints, diffs, files."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given

import foundry_alloc as fa

from .sim_helpers import allocate


def block(address: int, size: int = 4096, arena: str = fa.ENGINE, sequence: int = 0) -> fa.Allocation:
    return fa.Allocation(address=address, size=size, requested=size, arena=arena, sequence=sequence)


def layout(*blocks: fa.Allocation, base: int = 0x200000000000) -> fa.Layout:
    return fa.Layout(device=0, base=base, size=1 << 40, granularity=2 << 20, allocations=blocks)


allocations = st.lists(
    st.builds(
        block,
        address=st.integers(min_value=0, max_value=1 << 48),
        size=st.integers(min_value=1, max_value=1 << 40),
        arena=st.sampled_from([fa.ENGINE, fa.GRAPH, fa.TRANSIENT]),
        sequence=st.integers(min_value=0, max_value=1 << 32),
    ),
    max_size=20,
)


@given(allocations)
def test_files_round_trip(blocks: list[fa.Allocation]) -> None:
    original = layout(*blocks)
    assert fa.Layout.parse(original.model_dump_json()) == original


def test_write_and_read(tmp_path: Path, sim: fa.NativeAllocator) -> None:
    allocate(sim, 4096)
    allocate(sim, 3 << 20, arena=fa.TRANSIENT)
    path = tmp_path / "layout.json"
    sim.layout().write(path)
    assert fa.Layout.read(path) == sim.layout()


@given(allocations, allocations)
def test_fingerprints_are_equal_iff_addresses_sizes_and_arenas_are(a: list[fa.Allocation], b: list[fa.Allocation]) -> None:
    same = [(x.arena, x.address, x.size) for x in a] == [(x.arena, x.address, x.size) for x in b]
    assert (layout(*a).fingerprint() == layout(*b).fingerprint()) == same


def test_fingerprint_ignores_sequence_numbers_and_can_select_arenas() -> None:
    engine, graph = block(0x1000, sequence=1), block(0x9000, arena=fa.GRAPH)
    assert layout(engine).fingerprint() == layout(block(0x1000, sequence=7)).fingerprint()
    assert layout(engine, graph).fingerprint([fa.ENGINE]) == layout(engine).fingerprint([fa.ENGINE])
    assert layout(engine, graph).fingerprint() != layout(engine).fingerprint()
    assert layout(engine).fingerprint() != layout(engine, base=0x300000000000).fingerprint()


def test_diff_is_readable() -> None:
    first = layout(block(0x1000), block(0x2000), block(0x3000, size=8192))
    second = layout(block(0x1000), block(0x3000, size=4096), block(0x5000, arena=fa.GRAPH), base=0x300000000000)
    diff = fa.diff_layouts(first, second)
    assert not diff.equal
    text = diff.render("save", "load")
    assert "1 block(s) only in save, 1 only in load, 1 resized" in text
    assert "range: base 0x200000000000 vs 0x300000000000" in text
    assert "- engine     0x00000000002000" in text
    assert "+ graph      0x00000000005000" in text
    assert "is 4.00 KiB in load" in text
    assert fa.diff_layouts(first, first).render() == "layouts are equal"


def test_diff_limits_its_length() -> None:
    many = layout(*(block(0x1000 * i) for i in range(1, 100)))
    text = fa.diff_layouts(many, layout()).render(limit=5)
    assert "... and 94 more" in text


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not a Foundry layout"),
        (b"[]", "not a Foundry layout"),
        (b'{"version": 2}', "version"),
        (b'{"version":1,"device":0,"base":0,"size":0,"granularity":0,"allocations":[{"address":-1}]}', "allocations"),
        (b"\xff\xfe", "not a Foundry layout"),
    ],
)
def test_malformed_layouts_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(fa.LayoutFormatError, match=problem):
        fa.Layout.parse(data)


def test_missing_layout_file(tmp_path: Path) -> None:
    with pytest.raises(fa.LayoutFormatError, match="cannot read layout"):
        fa.Layout.read(tmp_path / "absent.json")

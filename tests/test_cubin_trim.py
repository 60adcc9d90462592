"""Trimming a cubin to the kernels a graph launches (cubin_trim.py), on a real cubin built by
nvcc (tests/data/trim_kernels.cu): what stays, what goes, and that the result is a well-formed
ELF. That the driver loads trimmed modules and runs them bit for bit is a GPU test."""

from __future__ import annotations

import struct

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from foundry_trace.binary.cubin import CubinFormatError, module_symbols
from foundry_trace.binary.trim import TEXT_STUB, _parse, _symbols, trim_cubin

from .cubin_checks import CUBIN, ENTRIES, KEPT, POINTED_TO, UNUSED, assert_cut_to


def _section_bytes(image: bytes) -> dict[str, bytes]:
    return {s.name: image[s.offset : s.offset + s.size] for s in _parse(image)[2] if s.kind != 8}


def test_the_named_kernels_stay_entries_and_so_does_one_that_data_points_to() -> None:
    trimmed = trim_cubin(CUBIN, [KEPT])
    assert trimmed is not None and len(trimmed) < len(CUBIN)
    assert module_symbols(trimmed).entries == {KEPT, POINTED_TO}
    assert module_symbols(trimmed).variables == module_symbols(CUBIN).variables


def test_kept_kernels_are_byte_for_byte_the_same() -> None:
    before, after = _section_bytes(CUBIN), _section_bytes(trim_cubin(CUBIN, [KEPT]))
    for name in (f".text.{KEPT}", f".nv.info.{KEPT}", f".nv.constant0.{KEPT}", f".text.{POINTED_TO}", ".nv.global.init", ".nv.info", ".strtab"):
        assert after[name] == before[name], name


def test_dropped_kernels_become_plain_functions_with_a_stub_of_code_and_nothing_else() -> None:
    trimmed = trim_cubin(CUBIN, [KEPT])
    _header, raw, parsed = _parse(trimmed)
    sections = {s.name: s for s in parsed}
    assert sections[f".text.{UNUSED}"].size == TEXT_STUB  # the driver refuses an empty one
    assert sections[f".nv.info.{UNUSED}"].size == 0
    assert sections[f".nv.constant0.{UNUSED}"].size == 0
    symbol = next(s for s in _symbols(trimmed, raw, parsed) if s.name == UNUSED)
    assert not symbol.is_entry()


@settings(max_examples=60, deadline=None)
@given(st.sets(st.sampled_from(ENTRIES)))
def test_any_choice_of_kernels_gives_a_well_formed_cubin_with_exactly_those_entries(keep: set[str]) -> None:
    trimmed = trim_cubin(CUBIN, keep)
    expected = assert_cut_to(trimmed, keep)
    if expected is None:
        return
    assert trim_cubin(trimmed, expected) is None  # trimming is idempotent


def test_a_kernel_the_cubin_lacks_is_refused_by_name() -> None:
    with pytest.raises(CubinFormatError, match="no entry _Z7missingv"):
        trim_cubin(CUBIN, ["_Z7missingv"])


@pytest.mark.parametrize("image", [b"", b"not an elf at all", CUBIN[:100], CUBIN[:5000]])
def test_what_is_not_a_whole_cubin_is_refused_with_the_format_error(image: bytes) -> None:
    with pytest.raises(CubinFormatError):
        trim_cubin(image, [KEPT])


def test_an_absurd_section_alignment_is_refused_rather_than_allocated() -> None:
    header = _parse(CUBIN)[0]
    raw = bytearray(CUBIN)
    struct.pack_into("<Q", raw, header[6] + 5 * 64 + 48, 1 << 60)  # sh_addralign of section 5
    with pytest.raises(CubinFormatError, match="alignment"):
        trim_cubin(bytes(raw), [KEPT])

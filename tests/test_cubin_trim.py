"""Trimming a cubin to the kernels a graph launches (binary/trim.py), on a real cubin built by
nvcc (tests/data/trim_kernels.cu): what stays, what goes, and that the result is a well-formed
ELF. That the driver loads trimmed modules and runs them bit for bit is a GPU test."""

from __future__ import annotations

import struct

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from foundry_trace.binary.compact import compact_cubin
from foundry_trace.binary.cubin import CubinFormatError, module_symbols
from foundry_trace.binary.trim import TEXT_STUB, _parse, _symbols, dropped_sections, trim_cubin
from fuzz.fuzz_cubin_trim import one_input

from .cubin_checks import (
    CUBIN,
    ENTRIES,
    KEPT,
    POINTED_TO,
    REGRESSIONS,
    SHT_PROGBITS,
    UNUSED,
    RawSection,
    assert_cut_to,
    assert_well_formed,
    grows_linearly,
    kept_entry_in_dropped_section,
    kernel_names,
    quick,
    synthetic_cubin,
)


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


# Hostile cubins: the trimmers' work stays linear in the input (trim.py's module notes).


def _first_and_last(image: bytes) -> tuple[str, str]:
    names = kernel_names(image)
    return names[0], names[-1]


def test_a_chain_of_sections_naming_each_other_is_followed_in_one_pass() -> None:
    image = synthetic_cubin(20, chained_sections=5000)  # 5,000 sections, each sh_info the one before
    first, last = _first_and_last(image)
    assert 300 << 10 < len(image) < 400 << 10
    dropped = quick(lambda: dropped_sections(image, [first]))
    assert len(dropped) == 3 * 19 + 5000  # every other kernel's sections, and the chain with the last
    assert quick(lambda: compact_cubin(image, dropped)) is not None
    assert quick(lambda: dropped_sections(image, [last])) == set(range(4, 4 + 3 * 19))
    grows_linearly(lambda n: synthetic_cubin(2, chained_sections=n), lambda image: dropped_sections(image, kernel_names(image)[:1]), 500)


def test_a_chain_of_references_is_followed_in_one_pass() -> None:
    """Kernel i's code refers to kernel i - 1: keeping the last keeps them all, one by one."""
    image = synthetic_cubin(1300, referring="previous")
    first, last = _first_and_last(image)
    assert quick(lambda: trim_cubin(image, [last])) is None
    assert len(quick(lambda: dropped_sections(image, [first]))) == 3 * 1299
    grows_linearly(lambda n: synthetic_cubin(n, referring="previous", code=16), lambda image: dropped_sections(image, [kernel_names(image)[-1]]), 500)


def test_trimming_and_compaction_time_grow_linearly_with_the_kernels() -> None:
    def cut(image: bytes) -> None:
        keep = kernel_names(image)[:1]
        trim_cubin(image, keep)
        compact_cubin(image, dropped_sections(image, keep))

    grows_linearly(lambda n: synthetic_cubin(n, name_length=100, code=16), cut, 250)


def test_sections_all_named_one_long_name_are_read_once() -> None:
    image = synthetic_cubin(2, extra_names=[b"n" * 60000], extra=lambda offsets: [RawSection(offsets[0], SHT_PROGBITS, b"") for _ in range(5000)])
    keep = kernel_names(image)[:1]
    assert len(quick(lambda: dropped_sections(image, keep))) == 3
    assert quick(lambda: compact_cubin(image, dropped_sections(image, keep))) is not None


def test_a_cubin_of_thousands_of_program_headers_is_refused() -> None:
    with pytest.raises(CubinFormatError, match="3000 program headers"):
        quick(lambda: trim_cubin(synthetic_cubin(2, programs=3000), []))


def test_alignments_that_would_pad_the_output_far_past_the_input_are_refused() -> None:
    """5,000 sections of one byte, each claiming 64 KiB alignment: 320 MB of padding."""
    image = bytearray(synthetic_cubin(2, extra=lambda offsets: [RawSection(0, SHT_PROGBITS, b"a") for _ in range(5000)]))
    header = _parse(bytes(image))[0]
    for index in range(10, 5010):
        struct.pack_into("<Q", image, header[6] + 64 * index + 48, 1 << 16)  # sh_addralign
    with pytest.raises(CubinFormatError, match="alignments pad"):
        quick(lambda: trim_cubin(bytes(image), kernel_names(bytes(image))[:1]))


def test_sections_that_overlap_are_refused() -> None:
    """4,000 relocation sections over the same 2,000 relocations: 8 million to read."""
    relocations = struct.pack("<QQq", 0, (1 << 32) | 1, 0) * 2000
    image = synthetic_cubin(2, extra=lambda offsets: [RawSection(0, 4, relocations, link=3, info=4, align=8, entsize=24)] + [RawSection(0, 4, link=3, info=4, entsize=24, at=10) for _ in range(3999)])
    with pytest.raises(CubinFormatError, match="sections overlap"):
        quick(lambda: trim_cubin(image, kernel_names(image)[:1]))


# A kept kernel stays, whatever its name and wherever its symbol lies.


def test_a_kept_kernel_in_a_section_of_a_dropped_kernel_keeps_that_kernel() -> None:
    image = kept_entry_in_dropped_section()
    assert "" in module_symbols(image).entries
    trimmed = trim_cubin(image, [""])
    assert module_symbols(trimmed).entries == {"", UNUSED, POINTED_TO}
    assert_well_formed(trimmed)


def test_the_files_the_fuzzers_found_are_handled() -> None:
    """Each input kept in fuzz/regressions/cubin (a crash, a hang or an assertion once) gives a
    cut cubin, None or the format error, within the fuzzer's 10 s."""
    files = sorted(REGRESSIONS.iterdir())
    assert files
    for path in files:
        quick(lambda path=path: one_input(path.read_bytes()), limit=10)


def test_a_size_on_the_null_section_is_no_extent() -> None:
    """Section 0's sh_size is a section count in ELF, not an extent: neither the reader nor the
    trimmers count it, in the input or in their output, whose section 0 keeps it (atheris found
    the reader refusing a trimmed file for it)."""
    header = _parse(CUBIN)[0]
    raw = bytearray(CUBIN)
    struct.pack_into("<Q", raw, header[6] + 32, len(CUBIN) - 64)  # sh_size of section 0
    image = bytes(raw)
    assert module_symbols(image).entries == set(ENTRIES)
    trimmed = trim_cubin(image, [KEPT])
    assert module_symbols(trimmed).entries == {KEPT, POINTED_TO}
    assert trim_cubin(trimmed, [KEPT, POINTED_TO]) is None
    one_input(image)

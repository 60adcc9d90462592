"""Taking the unused kernels out of a cubin (binary/compact.py), on a real cubin built by nvcc
(tests/data/trim_kernels.cu): every reference by number still names the same thing, what was
kept is byte for byte the same, and what cannot be rewritten safely is declined. That the driver
loads compacted modules and runs them bit for bit is a GPU test (tests/gpu/test_save_gpu.py)."""

from __future__ import annotations

import struct

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from foundry_trace.binary.compact import EIATTR_PARAM_CBANK, SHT_CALLGRAPH, SHT_NV_INFO, compact_cubin
from foundry_trace.binary.cubin import SHT_SYMTAB, CubinFormatError, module_symbols, symbol_table
from foundry_trace.binary.trim import SHT_RELA, _parse, dropped_sections
from foundry_trace.errors import CompactionDeclined
from fuzz.fuzz_cubin_trim import one_input

from .cubin_checks import (
    CUBIN,
    ENTRIES,
    KEPT,
    POINTED_TO,
    UNUSED,
    assert_cut_to,
    fatbin,
    kept_entry_in_dropped_section,
    named_null_symbol_entry,
)


def _compacted(keep: set[str] | list[str]) -> bytes | None:
    return compact_cubin(CUBIN, dropped_sections(CUBIN, keep))


def _names(image: bytes) -> tuple[list, list[str], list[tuple]]:
    """The sections (parsed), the symbol names by index, and the raw symbols."""
    _header, raw, sections = _parse(image)
    table = next(i for i, s in enumerate(sections) if s.kind == SHT_SYMTAB)
    text, symbols = symbol_table(image, raw, table)
    return sections, [text[s[0] : text.index(b"\0", s[0])].decode() for s in symbols], symbols


def _references(image: bytes) -> dict[str, list[tuple]]:
    """Every reference by number, resolved to names: each relocation (offset, type, symbol,
    addend), each call-graph pair, each symbol's section, each code section's function and each
    info section's code section and parameter bank."""
    sections, names, symbols = _names(image)
    found: dict[str, list[tuple]] = {"symbols": [(names[i], sections[s[3]].name if 0 < s[3] < len(sections) else s[3]) for i, s in enumerate(symbols)]}
    for section in sections:
        data = image[section.offset : section.offset + section.size]
        if section.kind == SHT_RELA:
            found[section.name] = [(o, i & 0xFFFFFFFF, names[i >> 32], a) for o, i, a in struct.iter_unpack("<QQq", data)]
        elif section.kind == SHT_CALLGRAPH:
            found[section.name] = [(names[a] if a < len(names) else a, names[b] if b < len(names) else b) for a, b in struct.iter_unpack("<II", data)]
        elif section.name.startswith(".text."):
            found[section.name] = [(names[section.info & 0xFFFFFF], section.info >> 24)]
        elif section.kind == SHT_NV_INFO and section.info:
            found[section.name] = [(sections[section.info].name,), *_parameter_banks(data, names)]
    return found


def _parameter_banks(data: bytes, names: list[str]) -> list[tuple]:
    banks, position = [], 0
    while position + 4 <= len(data):
        fmt, attribute = data[position], data[position + 1]
        size = struct.unpack_from("<H", data, position + 2)[0] if fmt == 4 else 0
        if attribute == EIATTR_PARAM_CBANK:
            banks.append((names[struct.unpack_from("<I", data, position + 4)[0]],))
        position += 4 + size
    return banks


def test_unused_kernels_and_everything_they_own_are_gone() -> None:
    compacted = _compacted([KEPT])
    assert compacted is not None and len(compacted) < len(CUBIN) * 0.6
    assert module_symbols(compacted).entries == {KEPT, POINTED_TO}
    assert module_symbols(compacted).variables == module_symbols(CUBIN).variables  # all global
    sections, names, _symbols = _names(compacted)
    for dropped in (UNUSED, "_Z8switchedPi"):  # the second with its jump table (.nv.constant2.<kernel>)
        assert not any(dropped in s.name for s in sections) and dropped not in names


def test_every_kept_reference_names_what_it_named_before() -> None:
    before, after = _references(CUBIN), _references(_compacted([KEPT]))
    gone = lambda text: any(name in str(text) for name in (UNUSED, "hidden_unused", "reads_table", "switched"))  # noqa: E731
    for section, references in after.items():
        assert references == [r for r in before[section] if not gone(r)], section
    assert after[".nv.callgraph"]  # kept, with its marker records


def test_kept_sections_are_byte_for_byte_the_same() -> None:
    compacted = _compacted([KEPT])
    contents = lambda image: {s.name: image[s.offset : s.offset + s.size] for s in _parse(image)[2] if s.kind != 8}  # noqa: E731
    before, after = contents(CUBIN), contents(compacted)
    for name in (f".text.{KEPT}", f".nv.constant0.{KEPT}", f".text.{POINTED_TO}", ".nv.global.init", ".note.nv.tkinfo"):
        assert after[name] == before[name], name


@settings(max_examples=60, deadline=None)
@given(st.sets(st.sampled_from(ENTRIES)))
def test_any_choice_of_kernels_gives_a_well_formed_cubin_with_exactly_those_entries(keep: set[str]) -> None:
    compacted = _compacted(keep)
    expected = assert_cut_to(compacted, keep)
    if expected is None:
        return
    assert not dropped_sections(compacted, expected)  # nothing left to take out
    before = _references(CUBIN)
    for section, references in _references(compacted).items():
        assert set(references) <= set(before[section]), section


def _with_kernel_attribute(kernel: str, attribute: int) -> bytes:
    """The test cubin with the first attribute of the kernel's info section replaced."""
    sections = {s.name: s for s in _parse(CUBIN)[2]}
    raw = bytearray(CUBIN)
    raw[sections[f".nv.info.{kernel}"].offset + 1] = attribute
    return bytes(raw)


def test_an_attribute_that_might_hold_an_index_makes_it_decline_naming_it() -> None:
    image = _with_kernel_attribute(KEPT, 0x7E)  # no such attribute today
    with pytest.raises(CompactionDeclined, match="attribute 0x7e"):
        compact_cubin(image, dropped_sections(image, [KEPT]))


def test_save_tries_compaction_then_stubs_and_says_why_a_module_is_not_compacted() -> None:
    """SAVE's report names why a module kept its other kernels as stubs (the driver pays for each
    at every load): here the attribute compaction cannot rewrite."""
    from foundry_trace.save.module_image import cuts

    reasons: list[str] = []
    assert [method for method, _ in cuts(CUBIN, [KEPT], reasons)] == ["compacted", "stubs"] and reasons == []
    declining = _with_kernel_attribute(KEPT, 0x7E)
    assert [method for method, _ in cuts(declining, [KEPT], reasons)] == ["stubs"]
    [reason] = reasons
    assert reason.startswith("compacted: declined: ") and "attribute 0x7e" in reason
    reasons.clear()
    assert list(cuts(fatbin([CUBIN, CUBIN]), [KEPT], reasons)) == [] and "fatbin of several images" in reasons[0]
    reasons.clear()
    assert list(cuts(CUBIN, ENTRIES, reasons)) == [] and reasons == ["compacted: no kernel to take out", "stubs: no kernel to take out"]


def test_an_unknown_section_kind_makes_it_decline() -> None:
    header, _raw, sections = _parse(CUBIN)
    index = next(i for i, s in enumerate(sections) if s.name == ".nv.global.init")
    raw = bytearray(CUBIN)
    struct.pack_into("<I", raw, header[6] + index * 64 + 4, 0x7000_0FFF)  # sh_type
    with pytest.raises(CompactionDeclined, match="section .nv.global.init of kind 0x70000fff"):
        compact_cubin(bytes(raw), dropped_sections(bytes(raw), [KEPT]))


def test_nothing_to_drop_gives_none_and_a_missing_kernel_is_refused_by_name() -> None:
    assert compact_cubin(CUBIN, set()) is None
    with pytest.raises(CubinFormatError, match="no entry _Z7missingv"):
        dropped_sections(CUBIN, ["_Z7missingv"])


def test_a_kept_kernel_named_empty_in_a_section_of_a_dropped_kernel_is_never_taken_out() -> None:
    """A kernel kept (named "", so first by name) whose symbol lies in a section of a dropped
    kernel: that kernel stays too, rather than the kept one going with it."""
    image = kept_entry_in_dropped_section()
    assert sorted(module_symbols(image).entries)[0] == ""
    dropped = dropped_sections(image, [""])
    compacted = compact_cubin(image, dropped)
    assert compacted is not None and module_symbols(compacted).entries == {"", UNUSED, POINTED_TO}
    one_input(image)


def test_a_name_on_the_null_symbol_is_kept() -> None:
    image = named_null_symbol_entry()
    keep = sorted(module_symbols(image).entries)[:1]
    assert keep == [".text._Z11reads_tablePPv"]
    compacted = compact_cubin(image, dropped_sections(image, keep))
    assert compacted is not None and set(keep) <= module_symbols(compacted).entries
    one_input(image)


def test_the_null_section_and_the_tables_stay_whatever_names_them() -> None:
    """Section 0, the symbol table and the section names naming a dropped kernel's section in
    sh_info stay, and so that kernel stays (once section 0 went, and every index with it)."""
    header, _raw, sections = _parse(CUBIN)
    info = next(i for i, s in enumerate(sections) if s.name == f".nv.info.{UNUSED}")
    raw = bytearray(CUBIN)
    for index in (0, header[13], next(i for i, s in enumerate(sections) if s.kind == SHT_SYMTAB)):
        struct.pack_into("<I", raw, header[6] + index * 64 + 44, info)  # sh_info
    image = bytes(raw)
    dropped = dropped_sections(image, [KEPT])
    assert 0 not in dropped and header[13] not in dropped
    assert module_symbols(compact_cubin(image, dropped)).entries == {KEPT, POINTED_TO, UNUSED}

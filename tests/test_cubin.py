"""Reading entry points and module variables out of real cubins and fatbins (built by nvcc from
the .cu files beside them in tests/data)."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from foundry_trace.binary.cubin import CubinFormatError, module_symbols

from .cubin_checks import (
    ENTRY_SYMBOL,
    SHT_STRTAB,
    SHT_SYMTAB,
    RawSection,
    elf_image,
    fatbin,
    grows_linearly,
    quick,
    string_table,
    symbol,
    synthetic_cubin,
)

DATA = Path(__file__).parent / "data"


def test_entries_include_kernels_in_anonymous_namespaces() -> None:
    symbols = module_symbols((DATA / "entries_local_global.cubin").read_bytes())
    assert symbols.entries == {"_Z5shownPf", "_ZN36_GLOBAL__N__479c501e_4_a_cu_094a63696hiddenEPf"}


def test_fatbins_list_the_entries_of_their_cubins() -> None:
    symbols = module_symbols((DATA / "entries_two_archs.fatbin").read_bytes())
    assert symbols.entries == {"_Z7add_onePf", "_Z4tmplILi3EEvPf"}


def test_module_variables_are_listed_and_helpers_are_not_entries() -> None:
    symbols = module_symbols((DATA / "variables.cubin").read_bytes())
    assert symbols.variables == {"counter", "table"}
    assert symbols.entries == {"_Z7add_onePf"}


def test_other_bytes_are_refused() -> None:
    with pytest.raises(CubinFormatError):
        module_symbols(b"not a module")


@settings(max_examples=200)
@given(st.data())
def test_corrupted_cubins_raise_only_the_format_error(data: st.DataObject) -> None:
    raw = bytearray((DATA / data.draw(st.sampled_from(["variables.cubin", "entries_two_archs.fatbin"]))).read_bytes())
    for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[position] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    try:
        module_symbols(bytes(raw[:cut]))
    except CubinFormatError:
        pass


# Hostile binaries: the reader's work must stay linear in the input (cubin.py's module notes).
# Each is about the size of the one a review found taking 18 s (344 KiB, 4,000 symbol tables).


def _symbol_tables(count: int, names: list[bytes], shared: bool) -> bytes:
    """A cubin of `count` symbol tables over one string table of `names`: each table one entry
    symbol (its own copy), or (shared) every table the same bytes, one symbol per name."""
    strings, offsets = string_table(names)
    one = symbol(0, 0, 0, 0) + b"".join(symbol(offset, *ENTRY_SYMBOL, 1) for offset in offsets)
    tables = [RawSection(kind=SHT_SYMTAB, data=one, link=1, entsize=24)]
    tables += [RawSection(kind=SHT_SYMTAB, link=1, entsize=24, at=2) if shared else RawSection(kind=SHT_SYMTAB, data=symbol(offsets[i % len(offsets)], *ENTRY_SYMBOL, 1), link=1, entsize=24) for i in range(count - 1)]
    return elf_image([RawSection(kind=SHT_STRTAB, data=strings), *tables], shstrndx=1)


def test_symbol_tables_that_overlap_are_refused_at_once() -> None:
    image = _symbol_tables(4000, [b"kernel_%d" % i for i in range(1500)], shared=True)  # 4,000 x 1,500 symbols
    assert 300 << 10 < len(image) < 400 << 10
    with pytest.raises(CubinFormatError, match="sections overlap"):
        quick(lambda: module_symbols(image))


def test_many_symbol_tables_sharing_a_string_table_of_long_names_are_read_in_one_pass() -> None:
    image = _symbol_tables(4000, [bytes([65 + i % 26]) * 20000 for i in range(4)], shared=False)  # 80 kB of names
    assert 300 << 10 < len(image) < 450 << 10
    assert len(quick(lambda: module_symbols(image)).entries) == 4


def test_names_that_overlap_are_refused_past_the_name_budget() -> None:
    """A 60 kB name named at each of 11,000 offsets: 11,000 distinct names of ~55 kB."""
    run = b"y" * 60000 + b"\0"
    image = elf_image([RawSection(kind=SHT_STRTAB, data=run), RawSection(kind=SHT_SYMTAB, data=b"".join(symbol(i, *ENTRY_SYMBOL, 1) for i in range(11000)), link=1, entsize=24)], shstrndx=1)
    with pytest.raises(CubinFormatError, match="names overlap"):
        quick(lambda: module_symbols(image))


def test_the_same_long_name_named_many_times_is_read_once() -> None:
    run = b"y" * 60000 + b"\0"
    image = elf_image([RawSection(kind=SHT_STRTAB, data=run), RawSection(kind=SHT_SYMTAB, data=symbol(1, *ENTRY_SYMBOL, 1) * 11000, link=1, entsize=24)], shstrndx=1)
    assert quick(lambda: module_symbols(image)).entries == {"y" * 59999}


def test_reading_time_grows_linearly_with_the_input() -> None:
    """N and 4N kernels; N and 4N symbol tables sharing a string table."""
    grows_linearly(lambda n: synthetic_cubin(n, name_length=100, code=16), module_symbols, 500)
    grows_linearly(lambda n: _symbol_tables(n, [b"x" * 1000], shared=False), module_symbols, 1000)


def test_the_cubins_of_a_fatbin_share_one_name_budget() -> None:
    """200 small cubins, each naming a 2 kB run of name bytes at 30 offsets: 60 kB of names per
    3 kB cubin, 12 MB in all, refused; one such cubin alone is read."""
    run = b"y" * 2000 + b"\0"
    one = elf_image([RawSection(kind=SHT_STRTAB, data=run), RawSection(kind=SHT_SYMTAB, data=b"".join(symbol(i, *ENTRY_SYMBOL, 1) for i in range(30)), link=1, entsize=24)], shstrndx=1)
    assert len(quick(lambda: module_symbols(fatbin([one]))).entries) == 30
    with pytest.raises(CubinFormatError, match="names overlap"):
        quick(lambda: module_symbols(fatbin([one] * 200)))

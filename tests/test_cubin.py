"""Reading entry points and module variables out of real cubins and fatbins (built by nvcc from
the .cu files beside them in tests/data)."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from foundry_trace.binary.cubin import CubinFormatError, module_symbols

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

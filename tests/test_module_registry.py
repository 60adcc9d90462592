"""The tracer's registry of module binaries: each kept once; explicit loads tied to the CUmodule
handle they returned; images handed to a load call as a bare pointer measured by their headers."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundry_trace.binary.cubin import _ELF_HEADER, _SECTION, FATBIN_MAGIC, CubinFormatError, image_extent
from foundry_trace.save.modules import ModuleRegistry


def test_an_explicit_load_maps_its_handle_to_the_image_it_was_handed() -> None:
    registry = ModuleRegistry()
    registry.add_handle(0x5000, b"not an ELF: entries listed later by the driver")
    assert registry.by_handle == {0x5000: hashlib.sha256(b"not an ELF: entries listed later by the driver").hexdigest()}
    assert len(registry.binaries) == 1 and len(registry.pending) == 1


def test_the_same_image_loaded_twice_is_kept_once_under_both_handles() -> None:
    registry = ModuleRegistry()
    registry.add(b"same bytes")  # the resource callback's copy
    for handle in (0x1000, 0x2000):
        registry.add_handle(handle, b"same bytes")
    assert len(registry.binaries) == 1
    assert registry.by_handle[0x1000] == registry.by_handle[0x2000]


def _elf(sections: list[tuple[int, int, int]], shoff: int) -> bytes:
    """An ELF header and section table only: (type, offset, size) per section."""
    header = _ELF_HEADER.pack(b"\x7fELF" + bytes(12), 1, 190, 1, 0, 0, shoff, 0, 64, 0, 0, _SECTION.size, len(sections), 0)
    table = b"".join(_SECTION.pack(0, kind, 0, 0, offset, size, 0, 0, 8, 0) for kind, offset, size in sections)
    image = bytearray(max([shoff + len(table)] + [o + s for k, o, s in sections if k != 8]))
    image[: len(header)] = header
    image[shoff : shoff + len(table)] = table
    return bytes(image)


@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 8]), st.integers(64, 4096), st.integers(0, 4096)), min_size=1, max_size=8),
       st.integers(64, 8192))
def test_an_elf_image_extends_to_its_last_section_or_table(sections: list[tuple[int, int, int]], shoff: int) -> None:
    image = _elf(sections, shoff)
    expected = max([shoff + len(sections) * _SECTION.size] + [o + s for k, o, s in sections if k != 8])
    assert image_extent(lambda offset, length: image[offset : offset + length]) == expected == len(image)


def test_a_fatbin_extends_to_its_payload_and_ptx_to_its_nul() -> None:
    fatbin = struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, 100) + bytes(100) + b"trailing"
    assert image_extent(lambda offset, length: fatbin[offset : offset + length]) == 116
    ptx = b".version 8.0\n.target sm_90\n\0" + bytes(64)
    assert image_extent(lambda offset, length: ptx[offset : offset + length]) == -1


def test_an_absurd_image_size_is_refused() -> None:
    fatbin = struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, 1 << 40) + bytes(64)
    with pytest.raises(CubinFormatError, match="claims"):
        image_extent(lambda offset, length: fatbin[offset : offset + length])


def test_save_reports_how_the_modules_were_cut_the_costliest_left_first(capsys: pytest.CaptureFixture[str]) -> None:
    """Where a module is not compacted, LOAD's driver pays for every kernel left in it: SAVE's
    report counts each way and names the modules with most kernels left, with why."""
    from foundry_trace.bench.roles import module_cuts
    from foundry_trace.save.modules import ModuleCut
    from foundry_trace.save.recording import SHOWN_CUTS, _report_cuts

    stubbed = [ModuleCut(n, 100 + n, 1, 10_000, 1_000, "stubs", f"compacted: declined: reason {n}") for n in range(SHOWN_CUTS + 2)]
    cuts = [ModuleCut(90, 5, 1, 500, 100, "compacted", None), ModuleCut(91, 1, 1, 50, 50, "whole", "compacted: no kernel to take out"), *stubbed]
    _report_cuts(cuts)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"foundry_trace: modules: 1 compacted, {SHOWN_CUTS + 2} cut to stubs, 1 whole"
    named = [int(line.split("module ")[1].split(":")[0]) for line in lines[1:]]
    assert named == list(range(SHOWN_CUTS + 1, 1, -1)), "most kernels left first, at most SHOWN_CUTS"
    assert "1 of 106 kernels kept, 10000 -> 1000 bytes (compacted: declined: reason 6)" in lines[1]
    reported = module_cuts(cuts)
    assert (reported["compacted"], reported["stubs"], reported["whole"]) == (1, SHOWN_CUTS + 2, 1)
    assert [m["module"] for m in reported["not_compacted"]] == [91, *range(SHOWN_CUTS + 2)]

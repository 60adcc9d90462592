"""What the cubin trimmer tests share: the test cubin and a well-formedness check of an ELF file."""

from __future__ import annotations

from pathlib import Path

from foundry_trace.binary.cubin import module_symbols
from foundry_trace.binary.trim import _PROGRAM, _parse

CUBIN = (Path(__file__).parent / "data" / "trim_kernels.cubin").read_bytes()
KEPT = "_Z4keptPf"
POINTED_TO = "_Z10pointed_toPf"  # a device variable holds its address
UNUSED = "_Z6unusedPf"
ENTRIES = sorted(module_symbols(CUBIN).entries)


def assert_well_formed(image: bytes) -> None:
    """Sections do not overlap, and every section and header table lies inside the file."""
    header, _raw, sections = _parse(image)
    spans = sorted((s.offset, s.offset + s.size) for s in sections[1:] if s.kind != 8 and s.size)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False)), "sections overlap"
    tables = [(header[6], header[6] + len(sections) * 64), (header[5], header[5] + header[10] * _PROGRAM.size)]
    assert all(end <= len(image) for _, end in spans + tables)
    for index in range(header[10]):
        _kind, _flags, offset, _v, _p, filesz, memsz, _align = _PROGRAM.unpack_from(image, header[5] + index * _PROGRAM.size)
        assert offset + filesz <= len(image) and filesz <= memsz


def assert_cut_to(image: bytes | None, keep: set[str]) -> set[str] | None:
    """A trimmer's output for the kernels `keep`: None where nothing is left to remove, else a
    well-formed cubin whose entries are `keep` and the kernel a variable points to. Returns
    those entries, or None."""
    expected = keep | {POINTED_TO}
    if expected == set(ENTRIES):
        assert image is None  # nothing to remove
        return None
    assert_well_formed(image)
    assert module_symbols(image).entries == expected
    return expected

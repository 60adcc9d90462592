"""What the cubin trimmer tests share: the test cubin and a well-formedness check of an ELF file."""

from __future__ import annotations

import gc
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from foundry_trace.binary.cubin import CubinFormatError, module_symbols, symbol_table
from foundry_trace.binary.trim import _PROGRAM, _parse
from foundry_trace.errors import CompactionDeclined

CUBIN = (Path(__file__).parent / "data" / "trim_kernels.cubin").read_bytes()
KEPT = "_Z4keptPf"
POINTED_TO = "_Z10pointed_toPf"  # a device variable holds its address
UNUSED = "_Z6unusedPf"
ENTRIES = sorted(module_symbols(CUBIN).entries)
REGRESSIONS = Path(__file__).parent.parent / "fuzz" / "regressions" / "cubin"  # inputs the fuzzers found


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


# Synthetic ELF files, for inputs no compiler writes: hostile ones (tables that overlap, names
# that run on, chains of references) and large regular ones (thousands of kernels).
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_NV_INFO = 1, 2, 3, 4, 8, 0x70000000
ENTRY_SYMBOL = (0x12, 0x10)  # st_info (GLOBAL FUNC), st_other (the CUDA entry flag)


@dataclass
class RawSection:
    """A section header and what it holds; `at`, where given, is the index of an earlier section
    whose contents it shares (an overlap), and name_offset an offset into the section names."""

    name_offset: int = 0
    kind: int = SHT_PROGBITS
    data: bytes = b""
    flags: int = 0
    link: int = 0
    info: int = 0
    align: int = 1
    entsize: int = 0
    at: int | None = None
    size: int | None = None  # NOBITS: the size it claims


def elf_image(sections: list[RawSection], shstrndx: int, programs: int = 0) -> bytes:
    """A 64-bit little-endian ELF of `sections` (section 0, the null one, added first: indices in
    `sections` start at 1), their contents in order after the header, then the section header
    table and `programs` empty program headers."""
    body = bytearray(64)
    offsets = [0]
    for section in sections:
        if section.at is not None:
            offsets.append(offsets[section.at])
            continue
        body.extend(bytes(-len(body) % max(1, section.align)))
        offsets.append(len(body))
        body.extend(section.data)
    body.extend(bytes(-len(body) % 8))
    shoff = len(body)
    body.extend(bytes(64))
    for index, section in enumerate(sections, start=1):
        size = section.size if section.size is not None else len(section.data if section.at is None else sections[section.at - 1].data)
        body.extend(struct.pack("<IIQQQQIIQQ", section.name_offset, section.kind, section.flags, 0, offsets[index], size, section.link, section.info, section.align, section.entsize))
    phoff = len(body)
    body.extend(_PROGRAM.pack(1, 4, 0, 0, 0, 0, 0, 8) * programs)
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    body[:64] = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 190, 1, 0, phoff if programs else 0, shoff, 0, 64, 56, programs, 64, len(sections) + 1, shstrndx)
    return bytes(body)


def string_table(names: list[bytes]) -> tuple[bytes, list[int]]:
    """A string table of `names` (offset 0: the empty name) and the offset of each."""
    data, offsets = bytearray(b"\0"), []
    for name in names:
        offsets.append(len(data))
        data += name + b"\0"
    return bytes(data), offsets


def symbol(name: int, info: int, other: int, section: int, value: int = 0, size: int = 0) -> bytes:
    return struct.pack("<IBBHQQ", name, info, other, section, value, size)


def synthetic_cubin(
    kernels: int,
    name_length: int = 24,
    referring: str = "none",
    chained_sections: int = 0,
    extra_names: Sequence[bytes] = (),
    extra: Callable[[list[int]], list[RawSection]] | None = None,
    programs: int = 0,
    code: int = 128,
) -> bytes:
    """A cubin of `kernels` entry kernels k0000... (names padded to `name_length`), each with a
    code section, an info section and a relocation section, that the trimmers take. referring:
    "none"; "next" (kernel i's code refers to kernel i + 1: keeping the first keeps all); or
    "previous" (kernel i refers to i - 1: keeping the last keeps all, found one per pass by a
    reader that repeats its passes). chained_sections: that many more sections hang from the
    last kernel's info section, each naming the one before in sh_info. extra(offsets of
    `extra_names` among the section names) gives more sections, last; `programs` empty program
    headers follow the section table; each kernel has `code` bytes of code."""
    names = [f"k{index:04d}".ljust(name_length, "_").encode() for index in range(kernels)]
    kernel_names = [prefix + name for name in names for prefix in (b".text.", b".nv.info.", b".rela.text.")]
    section_names, offsets = string_table([b".shstrtab", b".strtab", b".symtab", b".chained", *kernel_names, *extra_names])
    symbol_names, symbol_offsets = string_table(names)
    first = 4  # kernel i's sections: code 4 + 3i, info 5 + 3i, relocations 6 + 3i
    symbols = symbol(0, 0, 0, 0) + b"".join(symbol(symbol_offsets[i], *ENTRY_SYMBOL, first + 3 * i, 0, code) for i in range(kernels))
    sections = [
        RawSection(offsets[0], SHT_STRTAB, section_names),
        RawSection(offsets[1], SHT_STRTAB, symbol_names),
        RawSection(offsets[2], SHT_SYMTAB, symbols, link=2, info=1, align=8, entsize=24),
    ]
    for i in range(kernels):
        target = {"none": None, "next": i + 1, "previous": i - 1}[referring]
        relocation = struct.pack("<QQq", 0, ((target + 1) << 32) | 1, 0) if target is not None and 0 <= target < kernels else b""
        sections += [
            RawSection(offsets[4 + 3 * i], SHT_PROGBITS, bytes(code), flags=6, info=(8 << 24) | (i + 1), align=min(code, 128)),
            RawSection(offsets[5 + 3 * i], SHT_NV_INFO, b"\x03\x1b\x10\x00", link=3, info=first + 3 * i, align=4),
            RawSection(offsets[6 + 3 * i], SHT_RELA, relocation, link=3, info=first + 3 * i, align=8, entsize=24),
        ]
    for _ in range(chained_sections):
        sections.append(RawSection(offsets[3], SHT_PROGBITS, b"", info=len(sections) if len(sections) > 3 + 3 * kernels else 5 + 3 * (kernels - 1)))
    if extra is not None:
        sections += extra(offsets[4 + len(kernel_names) :])
    return elf_image(sections, shstrndx=1, programs=programs)


def kernel_names(image: bytes) -> list[str]:
    """The entries of a synthetic cubin, in order."""
    return sorted(module_symbols(image).entries)


def seconds(run: Callable[[], object], repeats: int = 5) -> float:
    """The least of `repeats` timings of run() (raising what it raises), the garbage collector
    held off (its passes come at times of its own)."""
    best = float("inf")
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
    finally:
        if collecting:
            gc.enable()
    return best


def refused_or_quick(run: Callable[[], object], limit: float = 2.0) -> float:
    """Runs run() once; it must return or raise CubinFormatError or CompactionDeclined, within
    `limit` seconds. Returns the time taken."""
    start = time.perf_counter()
    try:
        run()
    except (CubinFormatError, CompactionDeclined):
        pass
    taken = time.perf_counter() - start
    assert taken < limit, f"{taken:.2f} s"
    return taken


def quick(run: Callable[[], object], limit: float = 2.0) -> object:
    """run()'s result, or what it raises, which must come within `limit` seconds."""
    start = time.perf_counter()
    try:
        return run()
    finally:
        taken = time.perf_counter() - start
        assert taken < limit, f"{taken:.2f} s"


def grows_linearly(make: Callable[[int], bytes], run: Callable[[bytes], object], size: int) -> float:
    """The ratio of run()'s time on make(4 * size) to that on make(size), asserted under 10:
    linear work takes about 4 times as long, quadratic 16 times; the bound and up to three
    measurements leave room for a noisy machine."""
    small, large = make(size), make(4 * size)
    ratios = []
    for _ in range(3):
        ratios.append(seconds(lambda: run(large)) / seconds(lambda: run(small)))
        if ratios[-1] < 10:
            return ratios[-1]
    raise AssertionError(f"4 times the input took {min(ratios):.1f} times as long")


def with_symbol(image: bytes, index: int, name: int, info: int, other: int) -> bytes:
    """`image` with symbol `index` of its (one) symbol table given that name offset, st_info and
    st_other."""
    _header, _raw, sections = _parse(image)
    table = next(section for section in sections if section.kind == SHT_SYMTAB)
    changed = bytearray(image)
    struct.pack_into("<IBB", changed, table.offset + index * 24, name, info, other)
    return bytes(changed)


def kept_entry_in_dropped_section() -> bytes:
    """The test cubin with the section symbol of UNUSED's code made an entry named "" (name
    offset 0): keeping it (the first entry by name) once dropped it with UNUSED's code, in both
    trimmers (fuzz/regressions/cubin/empty_name_kept_in_dropped_section.cubin)."""
    _header, raw, sections = _parse(CUBIN)
    text = next(i for i, s in enumerate(sections) if s.name == f".text.{UNUSED}")
    table = next(i for i, s in enumerate(sections) if s.kind == SHT_SYMTAB)
    index = next(i for i, s in enumerate(symbol_table(CUBIN, raw, table)[1]) if s[3] == text and s[1] & 0xF == 3)  # STT_SECTION
    return with_symbol(CUBIN, index, 0, *ENTRY_SYMBOL)


def named_null_symbol_entry() -> bytes:
    """The test cubin with symbol 0 made an entry named as the code section of reads_table: the
    compactor once wrote symbol 0 without its name, so the kept kernel lost it
    (fuzz/regressions/cubin/named_null_symbol_entry.cubin)."""
    _header, raw, sections = _parse(CUBIN)
    table = next(i for i, s in enumerate(sections) if s.kind == SHT_SYMTAB)
    strings, symbols = symbol_table(CUBIN, raw, table)
    name = next(s[0] for s in symbols if strings[s[0] :].startswith(b".text._Z11reads_tablePPv\0"))
    return with_symbol(CUBIN, 0, name, *ENTRY_SYMBOL)


def fatbin(cubins: list[bytes], arch: int = 90) -> bytes:
    """A fatbin of one container holding `cubins` (ELF entries for `arch`)."""
    payload = b"".join(struct.pack("<HHIQIIII", 2, 0x101, 32, len(cubin), 0, 0, 0, arch) + cubin for cubin in cubins)
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(payload)) + payload

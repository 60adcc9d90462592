"""A cubin cut down to the kernels an archive launches.

PyTorch's kernels come in modules of hundreds of entries (one holds 1,278 and 19 MB of code) of
which a graph uses one or two, and the driver's cost of loading a module grows with its size.
trim_cubin() turns every other entry kernel into a plain function of one instruction's worth of
code (the driver refuses an empty code section, and registers no kernel for a plain function),
empties the other sections it owns (info, constant banks, relocations), and lays the file out
again around the gaps. dropped_sections() says which sections those are; compact.py
removes them outright where it can. Everything else stays: section and symbol indices, names, the kept kernels' code, constants
and info, the module's variables. So nothing that refers to a section or symbol by number needs
rewriting, and a kept kernel is byte for byte the same. A kernel is kept too where anything kept
refers to it (a relocation outside the debug frames, a call), and so is one that shares a section
with a kept kernel or with the ELF file's own tables. SAVE checks every trimmed module with the
driver before it stores one (module_image.py).

The cubin is untrusted bytes: besides the reader's bounds (cubin.py), the work here is one pass
over each table, at most MAX_PROGRAMS program headers (a real cubin has 3 to 6), each moved over
the sections, and the padding the sections' alignments add to the output is capped at the
input's size plus 1 MiB (a real cubin's is a small part of it).
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass

from foundry_trace.binary.cubin import (
    _ELF_HEADER,
    _SECTION,
    _SYMBOL,
    ELF_MAGIC,
    MAX_SYMBOLS,
    SHT_NOBITS,
    SHT_SYMTAB,
    STO_CUDA_ENTRY,
    STT_FUNC,
    CubinFormatError,
    Names,
    elf_sections,
    string_table,
    symbol_table,
)

_PROGRAM = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align
_RELOCATION_INFO = struct.Struct("<8xQ")  # r_info of an SHT_REL or SHT_RELA entry
SHT_RELA = 4
SHT_REL = 9
SHT_NV_INFO = 0x70000000  # .nv.info.<kernel>: the kernel's attributes (sh_info: its text section)
SHT_CALLGRAPH = 0x70000001  # .nv.callgraph: (caller, callee) symbol index pairs
SHT_PROGBITS = 1
SHF_EXECINSTR = 0x4
# The sections a kernel owns, by the prefix before its name.
KERNEL_PREFIXES = (".text.", ".nv.info.", ".nv.constant0.", ".nv.shared.", ".nv.local.", ".rela.text.", ".rel.text.")
TEXT_STUB = 16  # bytes of code a dropped kernel keeps: the driver refuses a code section of size 0
MAX_ALIGNMENT = 1 << 16
MAX_PROGRAMS = 64  # program headers: a cubin has 3 to 6 (each is moved over every section)
MAX_PADDING_SLACK = 1 << 20  # alignment padding written beyond the input's size
_DEBUG_SECTIONS = (".debug", ".rel.debug", ".rela.debug")


@dataclass
class _Section:
    name_offset: int
    kind: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    entsize: int
    name: str = ""

    def is_code(self) -> bool:
        """A code section, whose sh_info holds its function's symbol (and its register count)."""
        return self.kind == SHT_PROGBITS and bool(self.flags & SHF_EXECINSTR)

    def packed(self) -> bytes:
        return _SECTION.pack(self.name_offset, self.kind, self.flags, self.addr, self.offset, self.size, self.link, self.info, self.align, self.entsize)


@dataclass(frozen=True)
class _Symbol:
    name: str
    kind: int
    other: int
    section: int

    def is_entry(self) -> bool:
        return self.kind == STT_FUNC and bool(self.other & STO_CUDA_ENTRY)


def trim_cubin(image: bytes, keep: Collection[str]) -> bytes | None:
    """`image` (an ELF cubin) without the code of the entry kernels not named in `keep`, or None
    where there is none to remove. Raises CubinFormatError on a malformed image, or on a name in
    `keep` that is not one of its entries."""
    try:
        return _trim(image, keep)
    except struct.error as error:  # a read past the end of a truncated table
        raise CubinFormatError(f"truncated cubin: {error}") from None


def dropped_sections(image: bytes, keep: Collection[str]) -> set[int]:
    """The sections of the entry kernels that trimming `image` to `keep` drops: code, info,
    constant banks, shared memory and their relocations (kernels something kept refers to stay)."""
    try:
        header, raw, sections = _parse(image)
        return set(_owned(image, header, sections, _symbols(image, raw, sections), keep))
    except struct.error as error:
        raise CubinFormatError(f"truncated cubin: {error}") from None


def _trim(image: bytes, keep: Collection[str]) -> bytes | None:
    header, raw, sections = _parse(image)
    symbols = _symbols(image, raw, sections)
    owned = _owned(image, header, sections, symbols, keep)
    if not owned:
        return None
    sizes = {index: TEXT_STUB if index == text else 0 for index, text in owned.items()}
    return _laid_out(image, header, sections, symbols, sizes, set(owned.values()))


def _owned(image: bytes, header: list, sections: list[_Section], symbols: list[_Symbol], keep: Collection[str]) -> dict[int, int]:
    """Each section a dropped kernel owns -> its code section: those named after it
    (.nv.info.<kernel>, ...) and, transitively, any whose sh_info names one of them (its
    relocations, .nv.constant2.<kernel>, ...). A kernel that would take a kept kernel's
    section or one of the file's tables with it stays whole."""
    entries = {symbol.name: symbol.section for symbol in symbols if symbol.is_entry()}
    missing = sorted(set(keep) - entries.keys())
    if missing:
        raise CubinFormatError(f"the cubin has no entry {missing[0]}")
    by_name = {section.name: index for index, section in enumerate(sections)}
    owned: dict[int, int] = {}  # section -> the text section of the dropped kernel it belongs to
    for name, text in entries.items():
        if name not in keep and by_name.get(f".text.{name}") == text:
            owned.update({by_name[prefix + name]: text for prefix in KERNEL_PREFIXES if prefix + name in by_name})
    naming: dict[int, list[int]] = {}  # section -> the sections whose sh_info names it
    for index, section in enumerate(sections):
        if section.kind != SHT_SYMTAB and not section.is_code():
            naming.setdefault(section.info, []).append(index)
    pending = list(owned)
    while pending:
        for index in naming.get(pending.pop(), ()):
            if index not in owned:
                owned[index] = owned[sections[index].info]
                pending.append(index)
    # What must stay whatever refers to it: the kept kernels' sections (a section two kernels'
    # symbols share goes with neither) and the file's own tables (the null section, the symbol
    # tables and their names, the section names).
    tables = {0, header[13]} | {i for i, s in enumerate(sections) if s.kind == SHT_SYMTAB} | {s.link for s in sections if s.kind == SHT_SYMTAB}
    staying = tables | {symbol.section for symbol in symbols if symbol.is_entry() and symbol.name in keep}
    _keep_referenced(image, sections, symbols, owned, staying)
    return owned


def _parse(image: bytes) -> tuple[list, list[tuple], list[_Section]]:
    """The ELF header's fields, the raw section headers and the sections with their names, with
    the header tables, every section's extent and the names checked."""
    if image[:4] != ELF_MAGIC:
        raise CubinFormatError("not an ELF cubin")
    header, raw = elf_sections(image)
    phoff, phentsize, phnum, shnum, shstrndx = (header[i] for i in (5, 9, 10, 12, 13))
    if shstrndx >= shnum:
        raise CubinFormatError("section table out of bounds")
    if phnum and (phentsize != _PROGRAM.size or phoff + phnum * phentsize > len(image)):
        raise CubinFormatError("program header table out of bounds")
    if phnum > MAX_PROGRAMS:
        raise CubinFormatError(f"{phnum} program headers")
    sections = [_Section(*fields) for fields in raw]
    for section in sections:
        if section.kind != SHT_NOBITS and section is not sections[0] and section.offset + section.size > len(image):  # section 0 has no extent
            raise CubinFormatError("section out of bounds")
        if section.align > MAX_ALIGNMENT:
            raise CubinFormatError(f"section alignment {section.align}")
    names = Names(len(image))
    names.add_table(shstrndx, string_table(image, raw, shstrndx))
    for section in sections[1:]:
        section.name = names.text(shstrndx, section.name_offset)
    return list(header), raw, sections


def _symbols(image: bytes, raw: list[tuple], sections: list[_Section]) -> list[_Symbol]:
    tables = [index for index, s in enumerate(sections) if s.kind == SHT_SYMTAB]
    if len(tables) != 1:
        raise CubinFormatError("not exactly one symbol table")
    if sections[tables[0]].size // _SYMBOL.size > MAX_SYMBOLS:
        raise CubinFormatError("symbol table malformed")
    strings, symbols = symbol_table(image, raw, tables[0])
    names = Names(len(image))
    names.add_table(tables[0], strings)
    return [_Symbol(names.text(tables[0], name), info & 0xF, other, section) for name, info, other, section, _value, _size in symbols]


def _keep_referenced(image: bytes, sections: list[_Section], symbols: list[_Symbol], owned: dict[int, int], staying: set[int]) -> None:
    """Keeps every kernel that something kept refers to (a symbol in one of its sections named by
    a relocation of a kept section, a call or an address taken, or a callee of a kept function in
    the call graph), and every kernel that owns one of the sections `staying`, taking its
    sections out of `owned`. A dropped kernel's local functions go with it unless referred to.
    One pass over the references: a kernel kept makes its own references count."""
    references: dict[int, list[int]] = {}  # section that refers -> symbols referred to
    for section in sections:
        if section.kind in (SHT_REL, SHT_RELA) and not section.name.startswith(_DEBUG_SECTIONS):
            step = 24 if section.kind == SHT_RELA else 16
            referred = references.setdefault(section.info, [])
            for position in range(section.offset, section.offset + section.size - step + 1, step):
                referred.append(_RELOCATION_INFO.unpack_from(image, position)[0] >> 32)
        elif section.kind == SHT_CALLGRAPH:
            for position in range(section.offset, section.offset + section.size - 7, 8):
                caller, callee = struct.unpack_from("<II", image, position)
                if caller < len(symbols):  # other values mark the graph's special records
                    references.setdefault(symbols[caller].section, []).append(callee)
    groups: dict[int, list[int]] = {}  # a dropped kernel's text section -> the sections it owns
    for index, text in owned.items():
        groups.setdefault(text, []).append(index)
    kept: set[int] = set()
    pending = [owned[index] for index in staying if index in owned]
    pending += [owned[symbols[symbol].section] for referrer, referred in references.items() if referrer not in owned for symbol in referred if symbol < len(symbols) and symbols[symbol].section in owned]
    while pending:
        text = pending.pop()
        if text in kept:
            continue
        kept.add(text)
        for index in groups[text]:
            for symbol in references.get(index, ()):
                if symbol < len(symbols) and symbols[symbol].section in owned:
                    pending.append(owned[symbols[symbol].section])
    for text in kept:
        for index in groups[text]:
            del owned[index]


def _laid_out(image: bytes, header: list, sections: list[_Section], symbols: list[_Symbol], sizes: dict[int, int], dropped: set[int]) -> bytes:
    """The file again, in the same order, with the sections in `sizes` cut to that size, the
    entries in the `dropped` text sections made plain functions of the stub's size, and each
    program header over what it covered before."""
    before = [(s.offset, s.size, s.kind) for s in sections]
    contents = []
    for index, section in enumerate(sections):
        section.size = min(section.size, sizes.get(index, section.size))
        data = image[section.offset : section.offset + section.size] if section.kind != SHT_NOBITS and index else b""
        contents.append(_without_dropped_entries(data, symbols, dropped) if section.kind == SHT_SYMTAB else data)
    return written(image, header, sections, contents, before)


def written(image: bytes, header: list, sections: list[_Section], contents: list[bytes], before: list[tuple[int, int, int]]) -> bytes:
    """An ELF file of `sections` (section 0 first), each but NOBITS ones holding its `contents`,
    laid out in the order of their old offsets; then the section header table, and the program
    headers of `image` moved over what they covered (`before`: each section's old offset, size
    and kind). `header` (the ELF header's fields) gets the new table offsets."""
    body = bytearray(image[: _ELF_HEADER.size])
    padding = len(image) + MAX_PADDING_SLACK  # left to add
    for index in sorted(range(1, len(sections)), key=lambda i: (sections[i].offset, i)):
        section, data = sections[index], contents[index]
        if section.kind != SHT_NOBITS:
            section.size = len(data)
            if data:
                padding -= -len(body) % max(1, section.align)
                if padding < 0:
                    raise CubinFormatError("the sections' alignments pad the file past its size")
                body.extend(bytes(-len(body) % max(1, section.align)))
        section.offset = len(body)
        body.extend(data if section.kind != SHT_NOBITS else b"")
    programs = [list(_PROGRAM.unpack_from(image, header[5] + i * _PROGRAM.size)) for i in range(header[10])]
    old_table = (header[5], header[5] + header[10] * _PROGRAM.size)
    body.extend(bytes(-len(body) % 8))
    header[6] = len(body)
    body.extend(b"".join(section.packed() for section in sections))
    header[5] = len(body)
    for program in programs:
        _move_program(program, old_table, header[5], before, sections)
    body.extend(b"".join(_PROGRAM.pack(*program) for program in programs))
    body[: _ELF_HEADER.size] = _ELF_HEADER.pack(*header)
    return bytes(body)


def _without_dropped_entries(table: bytes, symbols: list[_Symbol], dropped: set[int]) -> bytes:
    """The symbol table with the dropped kernels no longer entries (the driver registers no
    kernel for them) and sized to their stubs."""
    patched = bytearray(table)
    for index, symbol in enumerate(symbols):
        if symbol.is_entry() and symbol.section in dropped:
            patched[index * _SYMBOL.size + 5] = symbol.other & ~STO_CUDA_ENTRY
            size = struct.unpack_from("<Q", patched, index * _SYMBOL.size + 16)[0]
            struct.pack_into("<Q", patched, index * _SYMBOL.size + 16, min(size, TEXT_STUB))
    return bytes(patched)


def _move_program(program: list, old_table: tuple[int, int], new_table: int, before: list[tuple[int, int, int]], sections: list[_Section]) -> None:
    """Points a program header at the new places of what it covered: the header table itself,
    or the sections whose contents lay inside it."""
    _kind, _flags, offset, _vaddr, _paddr, filesz, memsz, _align = program
    if (offset, offset + filesz) == old_table:
        program[2] = new_table
        return
    covered = [
        section
        for section, (start, size, kind) in zip(sections, before, strict=True)
        if kind != SHT_NOBITS and size and offset <= start and start + size <= offset + filesz
    ]
    kept = [section for section in covered if section.size]
    if not kept:
        program[2], program[5], program[6] = (covered[0].offset if covered else offset), 0, memsz - filesz
        return
    start = min(section.offset for section in kept)
    end = max(section.offset + section.size for section in kept)
    program[2], program[5], program[6] = start, end - start, memsz - filesz + end - start

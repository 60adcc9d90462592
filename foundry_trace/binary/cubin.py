"""The entry functions of a CUDA module binary (a cubin: an ELF file; or a fatbin holding cubins).

SAVE needs to know which module binary holds a captured kernel; the driver gives the kernel's
name, the binaries give their entries. Binaries come from the driver, but the reader still bounds
every offset, since a bad read here must be an error, not a crash; and its work, since a bad
binary must not cost more than a pass over its bytes:

  sections   the sections with contents (all but NOBITS and the null section) add up to no more
             than the file: they do not overlap in a real ELF, so reading each once is one pass
             over the file
  names      each name is read once (by string table and offset), at most 64 KiB of it; the
             distinct names read out of one binary total at most 4 times its size plus 64 KiB
             (a real cubin's names are its string tables, far less); each string table is
             copied once
  symbols    at most MAX_SYMBOLS in a table (real modules: one table of up to a few thousand)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from foundry_trace.errors import CubinFormatError

ELF_MAGIC = b"\x7fELF"
FATBIN_MAGIC = 0xBA55ED50
_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_SYMBOL = struct.Struct("<IBBHQQ")
SHT_SYMTAB = 2
SHT_NOBITS = 8
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
SHN_UNDEF = 0
STO_CUDA_ENTRY = 0x10  # st_other bit NVIDIA sets on kernel entry points
MAX_SYMBOLS = 1 << 20
MAX_NAME = 1 << 16  # bytes of one name
NAME_BYTES_PER_IMAGE_BYTE, NAME_BYTES_SLACK = 4, 1 << 16  # the names one binary's reader may decode


@dataclass(frozen=True)
class ModuleSymbols:
    entries: frozenset[str]  # kernel entry points
    variables: frozenset[str]  # module-scope __device__ / __constant__ variables


def module_symbols(binary: bytes | memoryview) -> ModuleSymbols:
    """The kernel entry points and global variables of a cubin, or of every cubin in a fatbin."""
    data = bytes(binary[:8]) if len(binary) >= 8 else b""
    try:
        if data[:4] == ELF_MAGIC:
            return _elf_symbols(memoryview(binary), Names(len(binary)))
        if len(data) >= 4 and struct.unpack_from("<I", data)[0] == FATBIN_MAGIC:
            return _fatbin_symbols(memoryview(binary))
    except struct.error as error:  # a read past the end of a truncated binary
        raise CubinFormatError(f"truncated binary: {error}") from None
    raise CubinFormatError("not a cubin (ELF) or fatbin")


def elf_sections(view: bytes | memoryview) -> tuple[tuple, list[tuple]]:
    """The ELF header's fields and the raw section headers of a 64-bit little-endian ELF, the
    section table bounds-checked (what each section points at is the caller's to check)."""
    if len(view) < _ELF_HEADER.size:
        raise CubinFormatError("truncated ELF header")
    header = _ELF_HEADER.unpack_from(view, 0)
    ident, shoff, shentsize, shnum = header[0], header[6], header[11], header[12]
    if ident[4] != 2 or ident[5] != 1:
        raise CubinFormatError("not a 64-bit little-endian ELF")
    if shentsize != _SECTION.size or shoff + shnum * shentsize > len(view):
        raise CubinFormatError("section table out of bounds")
    sections = [_SECTION.unpack_from(view, shoff + i * shentsize) for i in range(shnum)]
    # Section 0's size is no extent (it is the section count of an ELF of 65,280 or more).
    if sum(raw[5] for raw in sections[1:] if raw[1] != SHT_NOBITS) > len(view):
        raise CubinFormatError("the sections overlap or lie outside the file")
    return header, sections


def symbol_table(view: bytes | memoryview, sections: list[tuple], table: int) -> tuple[bytes, list[tuple]]:
    """The string table and the raw symbols (name offset, info, other, section, value, size; at
    most MAX_SYMBOLS) of symbol table section `table`, both bounds-checked."""
    symbols = raw_symbols(view, sections, table)
    return string_table(view, sections, sections[table][6]), symbols


def raw_symbols(view: bytes | memoryview, sections: list[tuple], table: int) -> list[tuple]:
    """The raw symbols of symbol table section `table` (at most MAX_SYMBOLS), its extent and
    its string table's index (sh_link) checked."""
    _name, _kind, _flags, _addr, offset, size, link, _info, _align, entsize = sections[table]
    if link >= len(sections) or entsize != _SYMBOL.size or offset + size > len(view):
        raise CubinFormatError("symbol table out of bounds")
    return [_SYMBOL.unpack_from(view, offset + index * entsize) for index in range(min(size // entsize, MAX_SYMBOLS))]


def string_table(view: bytes | memoryview, sections: list[tuple], index: int) -> bytes:
    """The contents of section `index` as a string table, bounds-checked."""
    _name, kind, _flags, _addr, offset, size, *_ = sections[index]
    if kind == SHT_NOBITS or offset + size > len(view):
        raise CubinFormatError("string table out of bounds")
    return bytes(view[offset : offset + size])


def _elf_symbols(view: memoryview, names: Names) -> ModuleSymbols:
    _header, sections = elf_sections(view)
    entries: set[str] = set()
    variables: set[str] = set()
    names.next_image()
    for table, raw in enumerate(sections):
        if raw[1] != SHT_SYMTAB:
            continue
        symbols, link = raw_symbols(view, sections, table), raw[6]
        if not names.has_table(link):  # a string table is copied once, however many tables share it
            names.add_table(link, string_table(view, sections, link))
        for name_offset, info, other, section, _value, symbol_size in symbols:
            kind_bits = info & 0xF
            # Entries in anonymous namespaces are LOCAL symbols: the entry flag, not the binding, counts.
            if kind_bits == STT_FUNC and other & STO_CUDA_ENTRY:
                entries.add(names.text(link, name_offset))
            elif kind_bits == STT_OBJECT and symbol_size > 0 and section != SHN_UNDEF:
                name = names.text(link, name_offset)
                if not name.startswith("."):  # the compiler's own (.nv.reservedSmem...)
                    variables.add(name)
    return ModuleSymbols(frozenset(entries), frozenset(variables))


def c_bytes(strings: bytes, offset: int) -> bytes:
    """The NUL-terminated name at `offset` of a string table, as stored (at most MAX_NAME bytes)."""
    if offset >= len(strings):
        raise CubinFormatError("symbol name out of bounds")
    end = strings.find(b"\0", offset, offset + MAX_NAME + 1)
    if end < 0:
        raise CubinFormatError("unterminated symbol name")
    return strings[offset:end]


class Names:
    """The names in the string tables of one ELF image, each (table, offset) read once.

    A name costs the bytes up to its NUL; a string table whose names overlap (one long run of
    bytes named at every offset) would cost time and memory quadratic in its size, so the
    distinct names read total at most NAME_BYTES_PER_IMAGE_BYTE times the binary's size plus
    NAME_BYTES_SLACK (a real cubin's names are its string tables: far less), past which the
    binary is refused. Tables are added once each, by section index; the cubins of a fatbin
    share one budget (next_image between them)."""

    def __init__(self, image_size: int) -> None:
        self._left = NAME_BYTES_PER_IMAGE_BYTE * image_size + NAME_BYTES_SLACK
        self._tables: dict[int, bytes] = {}
        self._raw: dict[tuple[int, int], bytes] = {}
        self._text: dict[tuple[int, int], str] = {}

    def next_image(self) -> None:
        """Forgets the tables and names read, for another ELF image; the budget stays."""
        self._tables.clear()
        self._raw.clear()
        self._text.clear()

    def has_table(self, table: int) -> bool:
        return table in self._tables

    def add_table(self, table: int, strings: bytes) -> None:
        self._tables[table] = strings

    def raw(self, table: int, offset: int) -> bytes:
        """The name at `offset` of string table `table`, as stored."""
        key = (table, offset)
        name = self._raw.get(key)
        if name is None:
            name = c_bytes(self._tables[table], offset)
            self._left -= len(name) + 1
            if self._left < 0:
                raise CubinFormatError("the names overlap: more name bytes than the image can hold")
            self._raw[key] = name
        return name

    def text(self, table: int, offset: int) -> str:
        """The name at `offset` of string table `table`, decoded (bad UTF-8 replaced)."""
        key = (table, offset)
        name = self._text.get(key)
        if name is None:
            name = self._text[key] = self.raw(table, offset).decode("utf-8", errors="replace")
        return name


_FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, payload size
_FATBIN_ENTRY = struct.Struct("<HHIQIIII")  # kind, version, header size, padded payload size, ..., arch
FATBIN_ELF, FATBIN_PTX = 2, 1


def _fatbin_entries(view: memoryview) -> list[tuple[int, int, int, int]]:
    """(kind, arch, start, end) of each entry of a fatbin's first container, headers included."""
    _magic, _version, header_size, payload_size = _FATBIN_HEADER.unpack_from(view, 0)
    end = min(len(view), header_size + payload_size)
    position = header_size
    entries = []
    while position + _FATBIN_ENTRY.size <= end:
        kind, _v, entry_header, payload, _a, _b, _c, arch = _FATBIN_ENTRY.unpack_from(view, position)
        if entry_header == 0 or position + entry_header + payload > end:
            raise CubinFormatError("fatbin entry out of bounds")
        entries.append((kind, arch, position, position + entry_header + payload))
        position += entry_header + payload
    return entries


def loadable_images(binary: bytes, capability: tuple[int, int]) -> bytes:
    """The binary with only the images a GPU of `capability` (major, minor) can run: a fatbin
    keeps its cubins of that major version and no newer minor (the driver picks among exactly
    those, so the choice is unchanged) and drops the rest, PTX included. A cubin, a fatbin with
    no such cubin (the driver would compile its PTX) or several containers is kept whole."""
    view = memoryview(binary)
    if len(view) < _FATBIN_HEADER.size or struct.unpack_from("<I", view)[0] != FATBIN_MAGIC:
        return binary
    magic, version, header_size, payload_size = _FATBIN_HEADER.unpack_from(view, 0)
    if header_size + payload_size != len(view):
        return binary
    try:
        entries = _fatbin_entries(view)
    except (CubinFormatError, struct.error):
        return binary
    major, minor = capability
    runnable = [e for e in entries if e[0] == FATBIN_ELF and e[1] // 10 == major and e[1] % 10 <= minor]
    if not runnable or len(runnable) == len(entries):
        return binary
    payload = b"".join(view[start:end] for _kind, _arch, start, end in runnable)
    return _FATBIN_HEADER.pack(magic, version, _FATBIN_HEADER.size, len(payload)) + payload


MAX_IMAGE_BYTES = 4 << 30


def image_extent(read: Callable[[int, int], bytes]) -> int:
    """The length of a module image that a load call was handed as a bare pointer (the driver
    reads it by its headers), read through `read(offset, length)`: an ELF cubin up to its last
    section or header table, a fatbin up to its payload's end, PTX up to its terminating NUL."""
    head = read(0, _ELF_HEADER.size)
    if head[:4] == ELF_MAGIC:
        _ident, _t, _m, _v, _e, phoff, shoff, _f, _eh, phentsize, phnum, shentsize, shnum, _ = _ELF_HEADER.unpack(head)
        extent = max(_ELF_HEADER.size, shoff + shnum * shentsize, phoff + phnum * phentsize)
        if shnum and shentsize >= _SECTION.size and extent <= MAX_IMAGE_BYTES:
            table = read(shoff, shnum * shentsize)
            for index in range(shnum):
                _name, kind, _flags, _addr, offset, size, *_ = _SECTION.unpack_from(table, index * shentsize)
                if kind != SHT_NOBITS:
                    extent = max(extent, offset + size)
    elif struct.unpack_from("<I", head)[0] == FATBIN_MAGIC:
        _magic, _version, header_size, payload_size = _FATBIN_HEADER.unpack_from(head, 0)
        extent = header_size + payload_size
    else:
        return -1  # PTX text: the caller reads up to the NUL
    if extent > MAX_IMAGE_BYTES:
        raise CubinFormatError(f"module image claims {extent} bytes")
    return extent


def _fatbin_symbols(view: memoryview) -> ModuleSymbols:
    entries: set[str] = set()
    variables: set[str] = set()
    names = Names(len(view))  # one budget for all its cubins
    for kind, _arch, start, end in _fatbin_entries(view):
        header = _FATBIN_ENTRY.unpack_from(view, start)[2]
        if kind == FATBIN_ELF and bytes(view[start + header : start + header + 4]) == ELF_MAGIC:
            symbols = _elf_symbols(view[start + header : end], names)
            entries |= symbols.entries
            variables |= symbols.variables
    return ModuleSymbols(frozenset(entries), frozenset(variables))

"""The entry functions of a CUDA module binary (a cubin: an ELF file; or a fatbin holding cubins).

SAVE needs to know which module binary holds a captured kernel; the driver gives the kernel's
name, the binaries give their entries. Binaries come from the driver, but the reader still bounds
every offset, since a bad read here must be an error, not a crash.
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
STT_OBJECT = 1
STT_FUNC = 2
SHN_UNDEF = 0
STO_CUDA_ENTRY = 0x10  # st_other bit NVIDIA sets on kernel entry points
MAX_SYMBOLS = 1 << 20


@dataclass(frozen=True)
class ModuleSymbols:
    entries: frozenset[str]  # kernel entry points
    variables: frozenset[str]  # module-scope __device__ / __constant__ variables


def module_symbols(binary: bytes | memoryview) -> ModuleSymbols:
    """The kernel entry points and global variables of a cubin, or of every cubin in a fatbin."""
    data = bytes(binary[:8]) if len(binary) >= 8 else b""
    try:
        if data[:4] == ELF_MAGIC:
            return _elf_symbols(memoryview(binary))
        if len(data) >= 4 and struct.unpack_from("<I", data)[0] == FATBIN_MAGIC:
            return _fatbin_symbols(memoryview(binary))
    except struct.error as error:  # a read past the end of a truncated binary
        raise CubinFormatError(f"truncated binary: {error}") from None
    raise CubinFormatError("not a cubin (ELF) or fatbin")


def entry_names(binary: bytes | memoryview) -> frozenset[str]:
    return module_symbols(binary).entries


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
    return header, [_SECTION.unpack_from(view, shoff + i * shentsize) for i in range(shnum)]


def symbol_table(view: bytes | memoryview, sections: list[tuple], table: int) -> tuple[bytes, list[tuple]]:
    """The string table and the raw symbols (name offset, info, other, section, value, size; at
    most MAX_SYMBOLS) of symbol table section `table`, both bounds-checked."""
    _name, _kind, _flags, _addr, offset, size, link, _info, _align, entsize = sections[table]
    if link >= len(sections) or entsize != _SYMBOL.size or offset + size > len(view):
        raise CubinFormatError("symbol table out of bounds")
    strings_offset, strings_size = sections[link][4], sections[link][5]
    if strings_offset + strings_size > len(view):
        raise CubinFormatError("string table out of bounds")
    strings = bytes(view[strings_offset : strings_offset + strings_size])
    return strings, [_SYMBOL.unpack_from(view, offset + index * entsize) for index in range(min(size // entsize, MAX_SYMBOLS))]


def _elf_symbols(view: memoryview) -> ModuleSymbols:
    _header, sections = elf_sections(view)
    entries: set[str] = set()
    variables: set[str] = set()
    for table, raw in enumerate(sections):
        if raw[1] != SHT_SYMTAB:
            continue
        strings, symbols = symbol_table(view, sections, table)
        for name_offset, info, other, section, _value, symbol_size in symbols:
            kind_bits = info & 0xF
            # Entries in anonymous namespaces are LOCAL symbols: the entry flag, not the binding, counts.
            if kind_bits == STT_FUNC and other & STO_CUDA_ENTRY:
                entries.add(_c_string(strings, name_offset))
            elif kind_bits == STT_OBJECT and symbol_size > 0 and section != SHN_UNDEF:
                name = _c_string(strings, name_offset)
                if not name.startswith("."):  # the compiler's own (.nv.reservedSmem...)
                    variables.add(name)
    return ModuleSymbols(frozenset(entries), frozenset(variables))


def c_bytes(strings: bytes, offset: int) -> bytes:
    """The NUL-terminated name at `offset` of a string table, as stored (at most 64 kB)."""
    if offset >= len(strings):
        raise CubinFormatError("symbol name out of bounds")
    end = strings.find(b"\0", offset, offset + 65536)
    if end < 0:
        raise CubinFormatError("unterminated symbol name")
    return strings[offset:end]


def _c_string(strings: bytes, offset: int) -> str:
    return c_bytes(strings, offset).decode("utf-8", errors="replace")


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


SHT_NOBITS = 8
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
    for kind, _arch, start, end in _fatbin_entries(view):
        header = _FATBIN_ENTRY.unpack_from(view, start)[2]
        if kind == FATBIN_ELF and bytes(view[start + header : start + header + 4]) == ELF_MAGIC:
            symbols = _elf_symbols(view[start + header : end])
            entries |= symbols.entries
            variables |= symbols.variables
    return ModuleSymbols(frozenset(entries), frozenset(variables))

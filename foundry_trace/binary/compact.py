"""A cubin with the kernels an archive does not launch taken out entirely.

trim.py cuts a dropped kernel to a stub but keeps its sections, symbols and names, so that
no index changes; the driver still pays for each of them when it loads the module (about 10 µs
a kernel: 18 ms for a module of 1,278 kernels of which a graph launches one). Here the dropped
kernels' sections and symbols go, and every reference by number is rewritten:

  sections   sh_link / sh_info of every section, e_shstrndx, each symbol's section
  symbols    relocations, the call graph, the attributes in .nv.info (a function's registers
             and stack sizes) and .nv.info.<kernel> (its parameter bank, its external calls),
             the symbol index in a code section's sh_info
  names      .strtab and .shstrtab rebuilt with the names that stay

What this module does not know how to rewrite (a section kind, an attribute that may hold an
index) makes it decline with CompactionDeclined, naming it: the caller falls back to the stub
trimmer. Debug relocations that name a dropped function are removed with it. The module's data
symbols all stay: constant bank 4 holds the address of each, and kept code may read any slot.
SAVE checks the result with the driver before it stores it (module_image.py).
"""

from __future__ import annotations

import struct
from collections.abc import Collection

from foundry_trace.binary.cubin import _SYMBOL, SHT_NOBITS, SHT_SYMTAB, Names, symbol_table
from foundry_trace.binary.trim import (
    _DEBUG_SECTIONS,
    SHT_CALLGRAPH,
    SHT_NV_INFO,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    _parse,
    _Section,
    written,
)
from foundry_trace.errors import CompactionDeclined, CubinFormatError

SHT_NULL, SHT_STRTAB, SHT_NOTE = 0, 3, 7
SHT_NV_COMPAT = 0x70000086  # .nv.compat: the architecture's compatibility attributes, no indices
SHN_LORESERVE = 0xFF00  # symbol section values from here up are special (absolute, common)
_KNOWN_KINDS = {SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOTE, SHT_NOBITS, SHT_REL, SHT_RELA, SHT_NV_INFO, SHT_CALLGRAPH, SHT_NV_COMPAT}

# .nv.info records: format byte, attribute byte, then a value (format 4: u16 size and that many bytes).
EIFMT_SVAL = 4
# Attributes of .nv.info whose value starts with the symbol index of the function they describe.
_FUNCTION_ATTRIBUTES = {0x11, 0x12, 0x23, 0x2F}  # frame size, min stack size, max stack size, registers
EIATTR_PARAM_CBANK = 0x0A  # the symbol of the kernel's parameter constant bank, then offset and size
EIATTR_EXTERNS = 0x0F  # the symbols of the functions a kernel calls outside itself
# Attributes of .nv.info.<kernel> known to hold no symbol or section index (sizes, flags,
# instruction offsets, register maps, parameter layouts).
_INDEX_FREE_ATTRIBUTES = {
    0x04, 0x05, 0x10, 0x17, 0x19, 0x1B, 0x1C, 0x1D, 0x1E, 0x21, 0x25, 0x27, 0x28, 0x29, 0x2B, 0x2D, 0x2E,
    0x31, 0x33, 0x34, 0x36, 0x37, 0x38, 0x39, 0x3D, 0x3E, 0x3F, 0x41, 0x42, 0x44, 0x46, 0x47, 0x4C, 0x50,
    0x55, 0x5F,
}  # 0x34: a jump table's branch and its targets, as offsets in the kernel's own code
_RELA_ENTRY = struct.Struct("<QQq")
_REL_ENTRY = struct.Struct("<QQ")


def compact_cubin(image: bytes, dropped: Collection[int]) -> bytes | None:
    """`image` without the sections `dropped` (as trim.dropped_sections chose them:
    nothing kept refers to them) and the symbols in them, or None where that is none. Raises
    CompactionDeclined, naming what it cannot rewrite."""
    try:
        return _Compactor(image).without(set(dropped)) if dropped else None
    except struct.error as error:
        raise CubinFormatError(f"truncated cubin: {error}") from None


class _Compactor:
    def __init__(self, image: bytes) -> None:
        self.image = image
        self.header, self.raw, self.sections = _parse(image)
        unknown = [s for s in self.sections if s.kind not in _KNOWN_KINDS]
        if unknown:
            raise CompactionDeclined(f"section {unknown[0].name} of kind {unknown[0].kind:#x}")
        tables = [index for index, s in enumerate(self.sections) if s.kind == SHT_SYMTAB]
        if len(tables) != 1:
            raise CompactionDeclined(f"{len(tables)} symbol tables")
        self.symtab = tables[0]
        self.strings, self.symbols = symbol_table(image, self.raw, self.symtab)
        self.names = Names(len(image))  # each symbol name read once
        self.names.add_table(self.symtab, self.strings)
        if self.sections[self.symtab].link == self.header[13]:
            raise CompactionDeclined("symbol and section names share one string table")

    def without(self, gone: set[int]) -> bytes:
        if gone & {0, self.symtab, self.sections[self.symtab].link, self.header[13]}:
            raise CompactionDeclined("a kernel's sections would take a symbol or name table with them")
        self.section_map = self._renumbered(len(self.sections), gone)
        kept = [index for index in range(len(self.sections)) if index not in gone]
        dropped_symbols = {i for i, symbol in enumerate(self.symbols) if i and symbol[3] in gone}
        self.symbol_map = self._renumbered(len(self.symbols), dropped_symbols)
        contents = {index: self._contents(index) for index in kept}
        return self._laid_out(kept, contents)

    @staticmethod
    def _renumbered(count: int, dropped: set[int]) -> dict[int, int]:
        mapping, position = {}, 0
        for index in range(count):
            if index not in dropped:
                mapping[index] = position
                position += 1
        return mapping

    def _section(self, index: int) -> int:
        if index not in self.section_map:
            name = self.sections[index].name if index < len(self.sections) else f"number {index}"
            raise CompactionDeclined(f"a kept section refers to section {name}, which goes")
        return self.section_map[index]

    def _symbol(self, index: int) -> int:
        if index not in self.symbol_map:
            raise CompactionDeclined(f"something kept refers to symbol {index}, which goes")
        return self.symbol_map[index]

    def _contents(self, index: int) -> bytes:
        section = self.sections[index]
        data = b"" if section.kind == SHT_NOBITS else self.image[section.offset : section.offset + section.size]
        if section.kind in (SHT_REL, SHT_RELA):
            return self._relocations(section, data)
        if section.kind == SHT_NV_INFO:
            return self._attributes(data, per_kernel=section.info != 0)
        if section.kind == SHT_CALLGRAPH:
            return self._call_graph(data)
        return data

    def _relocations(self, section: _Section, data: bytes) -> bytes:
        entry = _RELA_ENTRY if section.kind == SHT_RELA else _REL_ENTRY
        debug = section.name.startswith(_DEBUG_SECTIONS)
        out = bytearray()
        for fields in entry.iter_unpack(data[: len(data) - len(data) % entry.size]):
            symbol = fields[1] >> 32
            if symbol not in self.symbol_map and debug:
                continue  # the debug frame of a dropped function
            out += entry.pack(fields[0], (self._symbol(symbol) << 32) | (fields[1] & 0xFFFFFFFF), *fields[2:])
        return bytes(out)

    def _attributes(self, data: bytes, per_kernel: bool) -> bytes:
        out = bytearray()
        position = 0
        while position + 4 <= len(data):
            fmt, attribute = data[position], data[position + 1]
            size = struct.unpack_from("<H", data, position + 2)[0] if fmt == EIFMT_SVAL else 0
            record = bytearray(data[position : position + 4 + size])
            position += 4 + size
            if fmt != EIFMT_SVAL:
                out += record
            elif not per_kernel and attribute in _FUNCTION_ATTRIBUTES and size >= 4:
                function = struct.unpack_from("<I", record, 4)[0]
                if function in self.symbol_map:
                    struct.pack_into("<I", record, 4, self.symbol_map[function])
                    out += record
            elif per_kernel and attribute in (EIATTR_PARAM_CBANK, EIATTR_EXTERNS):
                count = 1 if attribute == EIATTR_PARAM_CBANK else size // 4
                for slot in range(count):
                    at = 4 + 4 * slot
                    struct.pack_into("<I", record, at, self._symbol(struct.unpack_from("<I", record, at)[0]))
                out += record
            elif per_kernel and attribute in _INDEX_FREE_ATTRIBUTES:
                out += record
            else:
                where = "a kernel's" if per_kernel else "the module's"
                raise CompactionDeclined(f"{where} .nv.info holds attribute {attribute:#x}, which may hold an index")
        if position != len(data):
            raise CompactionDeclined(".nv.info ends inside a record")
        return bytes(out)

    def _call_graph(self, data: bytes) -> bytes:
        out = bytearray()
        for caller, callee in struct.iter_unpack("<II", data[: len(data) - len(data) % 8]):
            if caller >= len(self.symbols) or callee >= len(self.symbols):
                if caller >= len(self.symbols) or caller != 0:
                    raise CompactionDeclined(f"call graph record ({caller:#x}, {callee:#x})")
                out += struct.pack("<II", 0, callee)  # the graph's marker records
            elif caller in self.symbol_map:
                out += struct.pack("<II", self._symbol(caller), self._symbol(callee))
        return bytes(out)

    def _laid_out(self, kept: list[int], contents: dict[int, bytes]) -> bytes:
        header = list(self.header)
        new_sections = [_Section(**vars(self.sections[index])) for index in kept]
        section_names = _StringTable()
        for section in new_sections[1:]:
            section.name_offset = section_names.add(section.name)
        symbol_names = _StringTable()
        contents[self.symtab] = self._symbol_table(symbol_names)
        strtab, shstrtab = self.sections[self.symtab].link, header[13]
        contents[strtab] = symbol_names.data()
        contents[shstrtab] = section_names.data()
        for section in new_sections:
            self._relink(section)
        before = [(s.offset, s.size, s.kind) for s in (self.sections[index] for index in kept)]
        header[12], header[13] = len(new_sections), self.section_map[shstrtab]
        return written(self.image, header, new_sections, [contents[index] for index in kept], before)

    def _symbol_table(self, names: _StringTable) -> bytes:
        out = bytearray()
        for index, (name, info, other, section, value, size) in enumerate(self.symbols):
            if index not in self.symbol_map:
                continue
            if 0 < section < SHN_LORESERVE:
                section = self._section(section)
            text = self.names.raw(self.symtab, name)  # symbol 0's too: a name there is kept
            out += _SYMBOL.pack(names.add_bytes(text) if text else 0, info, other, section, value, size)
        return bytes(out)

    def _relink(self, section: _Section) -> None:
        """sh_link and sh_info in the new numbering."""
        if section.link:
            section.link = self._section(section.link)
        if section.kind == SHT_SYMTAB:
            first_global = section.info
            section.info = sum(1 for index in self.symbol_map if index < first_global)
        elif section.is_code():
            section.info = (section.info & 0xFF000000) | self._symbol(section.info & 0xFFFFFF)  # registers | function
        elif section.info:
            section.info = self._section(section.info)


class _StringTable:
    """An ELF string table built name by name (offset 0 is the empty name)."""

    def __init__(self) -> None:
        self._data = bytearray(b"\0")
        self._offsets: dict[bytes, int] = {b"": 0}
        self._texts: dict[str, int] = {}  # names added as text: each encoded once

    def add(self, name: str) -> int:
        offset = self._texts.get(name)
        if offset is None:
            offset = self._texts[name] = self.add_bytes(name.encode())
        return offset

    def add_bytes(self, name: bytes) -> int:
        if name not in self._offsets:
            self._offsets[name] = len(self._data)
            self._data += name + b"\0"
        return self._offsets[name]

    def data(self) -> bytes:
        return bytes(self._data)


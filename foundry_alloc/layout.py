"""Layout snapshots: which blocks are live where. Equal layouts are what make graphs portable."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import LayoutFormatError
from .units import format_bytes

LAYOUT_VERSION = 1
MAX_LAYOUT_FILE_BYTES = 256 << 20
_U64 = Annotated[int, Field(ge=0, lt=1 << 64)]


class Allocation(BaseModel):
    """One live block: its address and size (rounded), what was asked for, its arena, and its
    sequence number within that arena (the n-th allocation the arena served)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: _U64
    size: Annotated[int, Field(gt=0, lt=1 << 64)]
    requested: _U64
    arena: Annotated[str, Field(min_length=1, max_length=31)]
    sequence: _U64


class Layout(BaseModel):
    """The live blocks of one device's range, sorted by address."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = LAYOUT_VERSION
    device: Annotated[int, Field(ge=0, lt=64)]
    base: _U64
    size: _U64
    granularity: _U64
    allocations: tuple[Allocation, ...]

    def select(self, arenas: Iterable[str] | None) -> Layout:
        """The same layout restricted to `arenas` (all of them when None)."""
        if arenas is None:
            return self
        wanted = set(arenas)
        return self.model_copy(update={"allocations": tuple(a for a in self.allocations if a.arena in wanted)})

    def fingerprint(self, arenas: Iterable[str] | None = None) -> str:
        """SHA-256 over the range and every (arena, address, size): equal iff the layouts match.
        Sequence numbers and requested sizes are left out, as they do not move any address."""
        chosen = self.select(arenas)
        canonical = {
            "version": self.version,
            "base": self.base,
            "size": self.size,
            "blocks": [[a.arena, a.address, a.size] for a in chosen.allocations],
        }
        return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=1))

    @classmethod
    def read(cls, path: str | Path) -> Layout:
        """Reads a layout file, refusing anything that is not one (with a LayoutFormatError)."""
        file = Path(path)
        try:
            size = file.stat().st_size
        except OSError as error:
            raise LayoutFormatError(f"cannot read layout {file}: {error.strerror}") from None
        if size > MAX_LAYOUT_FILE_BYTES:
            raise LayoutFormatError(f"{file} is {size} bytes, more than any layout: is it the right file?")
        return cls.parse(file.read_bytes(), source=str(file))

    @classmethod
    def parse(cls, data: bytes | str, *, source: str = "layout") -> Layout:
        if len(data) > MAX_LAYOUT_FILE_BYTES:
            raise LayoutFormatError(f"{source} is larger than any layout")
        try:
            return cls.model_validate_json(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(map(str, first["loc"])) or "top level"
            raise LayoutFormatError(
                f"{source} is not a Foundry layout (version {LAYOUT_VERSION}): {where}: {first['msg']} "
                f"({error.error_count()} problem(s)); write it with foundry_alloc.layout().write(path)"
            ) from None


class LayoutDiff(BaseModel):
    """What separates two layouts, block by block, keyed by (arena, address)."""

    model_config = ConfigDict(frozen=True)

    range_changes: tuple[str, ...]
    only_in_first: tuple[Allocation, ...]
    only_in_second: tuple[Allocation, ...]
    resized: tuple[tuple[Allocation, Allocation], ...]

    @property
    def equal(self) -> bool:
        return not (self.range_changes or self.only_in_first or self.only_in_second or self.resized)

    def render(self, first: str = "first", second: str = "second", limit: int = 40) -> str:
        """A readable account: one line per difference, at most `limit` of them."""
        if self.equal:
            return "layouts are equal"
        lines = [
            f"layouts differ: {len(self.only_in_first)} block(s) only in {first}, "
            f"{len(self.only_in_second)} only in {second}, {len(self.resized)} resized"
        ]
        lines += [f"  range: {change}" for change in self.range_changes]
        rows = [f"  - {_describe(a)}  only in {first}" for a in self.only_in_first]
        rows += [f"  + {_describe(b)}  only in {second}" for b in self.only_in_second]
        rows += [f"  ~ {_describe(a)}  is {format_bytes(b.size)} in {second}" for a, b in self.resized]
        lines += rows[:limit]
        if len(rows) > limit:
            lines.append(f"  ... and {len(rows) - limit} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def diff_layouts(first: Layout, second: Layout, arenas: Iterable[str] | None = None) -> LayoutDiff:
    """Compares two layouts (restricted to `arenas` when given)."""
    a, b = first.select(arenas), second.select(arenas)
    range_changes = tuple(
        f"{name} {getattr(first, name):#x} vs {getattr(second, name):#x}"
        for name in ("base", "size")
        if getattr(first, name) != getattr(second, name)
    )
    in_a = {(x.arena, x.address): x for x in a.allocations}
    in_b = {(x.arena, x.address): x for x in b.allocations}
    return LayoutDiff(
        range_changes=range_changes,
        only_in_first=tuple(x for key, x in in_a.items() if key not in in_b),
        only_in_second=tuple(x for key, x in in_b.items() if key not in in_a),
        resized=tuple((x, in_b[key]) for key, x in in_a.items() if key in in_b and in_b[key].size != x.size),
    )


def _describe(block: Allocation) -> str:
    return f"{block.arena:<10} {block.address:#016x} {format_bytes(block.size):>12} (#{block.sequence})"

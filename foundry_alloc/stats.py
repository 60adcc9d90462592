"""Allocator statistics. PyTorch's memory_stats() refuses pluggable allocators, so Foundry keeps its own."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .units import format_bytes


class ArenaStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    live_bytes: int  # rounded sizes of live blocks
    requested_bytes: int  # what callers asked for
    live_blocks: int
    peak_live_bytes: int
    mapped_bytes: int  # physical memory mapped into the arena's slice
    allocations: int
    frees: int
    small_span_bytes: int  # extent of the small-block zone in use (start to highest live block)
    large_span_bytes: int


class AllocatorStats(BaseModel):
    """One device's range: reserved (virtual), mapped (physical), live (handed out), with peaks."""

    model_config = ConfigDict(frozen=True)

    device: int
    base: int
    reserved_bytes: int
    granularity: int
    mapped_bytes: int
    peak_mapped_bytes: int
    live_bytes: int
    peak_live_bytes: int
    live_blocks: int
    arenas: dict[str, ArenaStats]

    def render(self) -> str:
        """A short table for logs and the CLI."""
        lines = [
            f"device {self.device}: range {self.base:#x} + {format_bytes(self.reserved_bytes)}, "
            f"mapped {format_bytes(self.mapped_bytes)} (peak {format_bytes(self.peak_mapped_bytes)}), "
            f"live {format_bytes(self.live_bytes)} in {self.live_blocks} blocks (peak {format_bytes(self.peak_live_bytes)})"
        ]
        for name, arena in self.arenas.items():
            lines.append(
                f"  {name:<10} live {format_bytes(arena.live_bytes):>11} in {arena.live_blocks:>6} blocks, "
                f"mapped {format_bytes(arena.mapped_bytes):>11}, peak live {format_bytes(arena.peak_live_bytes):>11}"
            )
        return "\n".join(lines)

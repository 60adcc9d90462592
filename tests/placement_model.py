"""A pure-Python statement of the placement rule, to check the native core against.

Rule: a request is rounded up to 512 bytes; blocks up to 1 MiB go to the arena's small zone (its
first 1/16), larger ones to the large zone; inside a zone the block takes the start of the smallest
gap between live blocks that fits, the lowest such gap on ties. The gaps depend only on the live
blocks, so placement depends only on the live set and the request.
"""

from __future__ import annotations

from collections.abc import Iterable

ALIGNMENT = 512
SMALL_BLOCK_LIMIT = 1 << 20
SMALL_ZONE_FRACTION = 16
MAX_ARENAS = 8


def rounded(size: int) -> int:
    return max(ALIGNMENT, -(-size // ALIGNMENT) * ALIGNMENT)


def zone(base: int, size: int, arena: int, block_size: int) -> tuple[int, int]:
    """[begin, end) of the zone a block of `block_size` (rounded) belongs to."""
    arena_size = size // MAX_ARENAS
    begin = base + arena * arena_size
    small_end = begin + arena_size // SMALL_ZONE_FRACTION
    return (begin, small_end) if block_size <= SMALL_BLOCK_LIMIT else (small_end, begin + arena_size)


def best_fit(live: Iterable[tuple[int, int]], begin: int, end: int, block_size: int) -> int | None:
    """Where the rule puts `block_size` bytes in [begin, end) given the live (address, size) blocks."""
    inside = sorted((a, s) for a, s in live if begin <= a < end)
    best: tuple[int, int] | None = None
    cursor = begin
    for address, size in [*inside, (end, 0)]:
        gap = address - cursor
        if gap >= block_size and (best is None or gap < best[0]):
            best = (gap, cursor)
        cursor = max(cursor, address + size)
    return None if best is None else best[1]

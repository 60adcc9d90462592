"""The 8-byte words of a module variable that the driver fills in at each load (addresses in the
module itself: a table of kernels, a pointer to another variable). SAVE finds them by comparing
two loads' copies; LOAD writes a stored variable around them. Pure functions on bytes."""

from __future__ import annotations

from collections.abc import Collection

WORD = 8  # the driver relocates whole aligned 64-bit addresses (32-bit ones lie within one)


def load_dependent_words(first: bytes, second: bytes | None) -> tuple[int, ...]:
    """Offsets of the aligned words in which two loads' copies of a variable differ."""
    if second is None or len(second) != len(first):
        return ()
    return tuple(at for at in range(0, len(first), WORD) if first[at : at + WORD] != second[at : at + WORD])


def without_words(contents: bytes, words: Collection[int], filler: bytes) -> bytes:
    """`contents` with the words at `words` taken from `filler` instead."""
    result = bytearray(contents)
    for at in words:
        result[at : at + WORD] = filler[at : at + WORD]
    return bytes(result)


def written_ranges(size: int, skipped: Collection[int]) -> list[tuple[int, int]]:
    """(start, end) byte ranges of a variable of `size` bytes outside the words at `skipped`:
    what LOAD writes of it."""
    ranges: list[tuple[int, int]] = []
    start = 0
    for at in sorted(skipped):
        if at >= size:
            break
        if at > start:
            ranges.append((start, at))
        start = max(start, at + WORD)
    if start < size:
        ranges.append((start, size))
    return ranges

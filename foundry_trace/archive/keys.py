"""Graph keys and the order a server needs graphs in.

A key names a graph: a batch size ("8"), a piece of a batch size's step ("8/05", a piecewise
capture as vLLM makes it), or whatever else a program chose ("prefill", "3", "8#1"). The part
before the first "/" is the key's group: a batch size is ready when every graph of its group is,
and LOAD restores whole groups in serving order: batch sizes ascending (a server's first
requests come one or a few at a time), then other groups by name; within a group, pieces in
their natural order ("8/2" before "8/10"). Keys are printable ASCII (manifest.KEY_PATTERN).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol, TypeVar

MAX_BATCH_DIGITS = 18  # a batch size is a number of at most this many digits; longer ones sort as names
_NUMBER = re.compile(r"(\d+)")


class Keyed(Protocol):
    key: str  # a GraphEntry, a RestoredGraph


K = TypeVar("K", bound=Keyed)


def group_of(key: str) -> str:
    return key.partition("/")[0]


def batch_of(key: str) -> int | None:
    """The batch size a key's group names, or None where the group is no batch size."""
    return _batch_of_group(group_of(key))


def _batch_of_group(group: str) -> int | None:
    return int(group) if group.isascii() and group.isdigit() and len(group) <= MAX_BATCH_DIGITS else None


def key_order(key: str) -> tuple:
    """Sorts keys in serving order: batch sizes ascending, other groups by name, pieces naturally.
    Keys of a batch and a numbered piece ("8/05", thousands of them in a piecewise archive) take
    a short path, whose result is the general one's: LOAD sorts them on its own thread while the
    module thread needs the GIL."""
    group, _, piece = key.partition("/")
    batch = _batch_of_group(group)
    if batch is not None and piece.isascii() and (piece.isdigit() or not piece):
        return (False, batch, group, ((0, int(piece), ""),) if piece else ())
    return general_key_order(key)


def general_key_order(key: str) -> tuple:
    """key_order() for any key (the natural order of a piece's numbers and words)."""
    batch = batch_of(key)
    piece = key.partition("/")[2]
    natural = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _NUMBER.split(piece) if part)
    return (batch is None, batch or 0, group_of(key), natural)


def serving_order(items: Iterable[K]) -> list[K]:
    """`items` (graph entries) in serving order of their keys."""
    return sorted(items, key=lambda item: key_order(item.key))


def first_step(items: Iterable[K]) -> list[K]:
    """The entries of the step a server replays first (the first group in serving order: the
    smallest batch's graph, or all the pieces of that step), in serving order; [] for none."""
    ordered = serving_order(items)
    return [item for item in ordered if group_of(item.key) == group_of(ordered[0].key)] if ordered else []

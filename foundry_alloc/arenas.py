"""Arenas: fixed slices of the range, so that what differs between runs cannot shift what graphs use.

`engine` (the default) holds what the engine owns, `graph` whatever is allocated while the stream
is capturing, `transient` warm-up or profiling traffic the caller marks as such. Up to five more
can be named. The selection is per thread and is overridden by capture: memory a graph may use
always comes from `graph`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from . import _native
from .errors import InvalidRequestError
from .profiling import annotate

ENGINE, GRAPH, TRANSIENT = "engine", "graph", "transient"
BUILTIN_ARENAS = (ENGINE, GRAPH, TRANSIENT)
ARENA_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
MAX_ARENAS = _native.MAX_ARENAS  # the slices of a device's range

_lock = threading.Lock()
_names: list[str] = list(BUILTIN_ARENAS)


def arena_names() -> tuple[str, ...]:
    """Names of the arenas known so far, by index."""
    with _lock:
        return tuple(_names)


def arena_name(index: int) -> str:
    names = arena_names()
    return names[index] if 0 <= index < len(names) else f"arena{index}"


def arena_index(name: str, *, create: bool = False) -> int:
    """The index of arena `name`; with create=True an unknown valid name gets the next free slice."""
    with _lock:
        if name in _names:
            return _names.index(name)
        if not create:
            raise InvalidRequestError(f"unknown arena {name!r}; known arenas: {', '.join(_names)}")
        index = _next_slice(name)
        _names.append(name)
    _native.library().fa_set_arena_name(index, name.encode())
    return index


@contextmanager
def arena_for_claim(name: str) -> Iterator[int]:
    """The index of arena `name` for a claim: an unknown name gets the slice it would get, but is
    named only if the block leaves without an error. So a refused claim (a range not free, an
    archive naming arenas this process never uses) takes no slice, and repeated refusals cannot
    use up the eight."""
    with _lock:
        if name in _names:
            known = _names.index(name)
        else:
            known, index = None, _next_slice(name)
    if known is not None:
        yield known
        return
    yield index
    with _lock:
        if name in _names:
            return
        if len(_names) != index:
            raise InvalidRequestError(f"arena {name!r} lost its slice to another arena named meanwhile: claim again")
        _names.append(name)
    _native.library().fa_set_arena_name(index, name.encode())


def _next_slice(name: str) -> int:
    """The slice a new arena `name` gets (the caller holds _lock)."""
    if not ARENA_NAME_PATTERN.match(name):
        raise InvalidRequestError(
            f"arena name {name!r} is not valid: use 1-31 lower-case letters, digits, '-' or '_', starting with a letter"
        )
    if len(_names) == MAX_ARENAS:
        raise InvalidRequestError(f"no slice left for arena {name!r}: all {MAX_ARENAS} arenas are named ({', '.join(_names)})")
    return len(_names)


def current_arena() -> str:
    """The arena this thread's eager allocations go to."""
    return arena_name(_native.library().fa_selected_arena())


@contextmanager
def arena(name: str) -> Iterator[str]:
    """Sends this thread's eager allocations to arena `name` (created on first use) inside the block.

    Names are given slices in the order they are first used, so SAVE and LOAD must name them in
    the same order. `graph` cannot be selected: capture chooses it.

    Args:
        name: "engine" (the default outside any block), "transient", or a name of your own
            (1-31 lower-case letters, digits, '-' or '_'; at most 8 arenas in all).

    Yields:
        The name.

    Example:
        >>> with foundry_alloc.arena("transient"):      # profiling traffic cannot move the engine's blocks
        ...     scratch = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    """
    if name == GRAPH:
        raise InvalidRequestError(
            "arena 'graph' is chosen automatically for allocations made while a stream is capturing; "
            "select 'engine', 'transient' or an arena of your own"
        )
    index = arena_index(name, create=True)
    lib = _native.library()
    previous = lib.fa_selected_arena()
    _native.check(lib.fa_select_arena(index))
    try:
        with annotate(f"alloc.arena {name}"):
            yield name
    finally:
        lib.fa_select_arena(previous)

"""What prefetch() may build before the restore point: SAVE records the arenas each graph's
memsets and memcpys name (ArenaFinder) and decides from them and the node kinds (early_build,
stored in the graph's entry); LOAD reads that decision (builds_early), never a node table."""

from __future__ import annotations

from types import SimpleNamespace

import hypothesis.strategies as st
import pytest
from hypothesis import given

from foundry_alloc import Allocation, Layout
from foundry_trace.archive._node_table import BUILT_BEFORE_RESTORE_POINT, COPY_KINDS, early_build
from foundry_trace.archive.records import EmptyNode, GraphBody, MemcpyNode, MemorySegment, MemsetNode
from foundry_trace.restore._pipeline import Pipeline, builds_early
from foundry_trace.save.recording import ArenaFinder

BASE = 0x7F0000000000
ARENAS = ("engine", "graph", "transient")


@st.composite
def disjoint_ranges(draw: st.DrawFn) -> list[tuple[int, int, str]]:
    """Disjoint (address, size, arena) ranges in address order, with gaps between some."""
    ranges, address = [], BASE
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        address += draw(st.integers(min_value=0, max_value=1 << 20))
        size = draw(st.integers(min_value=1, max_value=1 << 21))
        ranges.append((address, size, draw(st.sampled_from(ARENAS))))
        address += size
    return ranges


def _finder(ranges: list[tuple[int, int, str]], in_layout: list[bool]) -> ArenaFinder:
    memory = [MemorySegment(address=a, size=s, arena=n) for (a, s, n), layout in zip(ranges, in_layout) if not layout]
    blocks = tuple(
        Allocation(address=a, size=s, requested=s, arena=n, sequence=i)
        for i, ((a, s, n), layout) in enumerate(zip(ranges, in_layout)) if layout
    )
    return ArenaFinder(memory, Layout(device=0, base=BASE, size=1 << 40, granularity=1 << 21, allocations=blocks))


@given(disjoint_ranges(), st.data())
def test_every_address_gets_the_arena_of_the_range_holding_it(ranges: list[tuple[int, int, str]], data: st.DataObject) -> None:
    finder = _finder(ranges, [data.draw(st.booleans()) for _ in ranges])
    for address, size, arena in ranges:
        assert finder.arena(address) == finder.arena(address + size - 1) == arena
    probe = data.draw(st.integers(min_value=0, max_value=BASE + (1 << 30)))
    holder = [arena for address, size, arena in ranges if address <= probe < address + size]
    assert finder.arena(probe) == (holder[0] if holder else "unknown")


def test_a_graph_names_the_arenas_of_its_memsets_and_both_ends_of_its_memcpys() -> None:
    finder = _finder([(BASE, 4096, "engine"), (BASE + 8192, 4096, "graph")], [True, False])
    memset = MemsetNode(destination=BASE + 8192, pitch=0, value=0, element_size=4, width=16, height=1)
    copy = MemcpyNode(
        source=BASE + 16, source_pitch=0, source_height=0, source_offset=(0, 0, 0), destination=BASE + 8200,
        destination_pitch=0, destination_height=0, destination_offset=(0, 0, 0), extent=(8, 1, 1),
    )
    assert finder.copies(GraphBody(nodes=(memset,), edges=())) == ("graph",)
    assert finder.copies(GraphBody(nodes=(memset, copy, EmptyNode()), edges=())) == ("engine", "graph")
    assert finder.copies(GraphBody(nodes=(EmptyNode(),), edges=())) == ()


KINDS = sorted(BUILT_BEFORE_RESTORE_POINT | COPY_KINDS | {"collective"})


@given(
    st.frozensets(st.sampled_from(KINDS), min_size=1),
    st.lists(st.sampled_from(("engine", "graph", "unknown"))).map(lambda names: tuple(sorted(set(names)))),
    st.booleans(),
)
def test_prefetch_builds_early_only_what_needs_no_live_state(kinds: frozenset[str], copy_arenas: tuple[str, ...], mapped: bool) -> None:
    decided = early_build(kinds, copy_arenas, "graph")  # at SAVE
    early = builds_early(SimpleNamespace(early=decided), mapped)  # at LOAD
    if "collective" in kinds:
        assert not early  # needs the live communicator
    elif kinds <= BUILT_BEFORE_RESTORE_POINT:
        assert early  # addresses as plain values only
    else:  # memsets or memcpys: the driver checks their memory
        assert early == (mapped and set(copy_arenas) <= {"graph"})


def test_a_graph_of_an_archive_saved_before_save_decided_waits_for_the_restore_point() -> None:
    assert not builds_early(SimpleNamespace(early=None), graph_memory_mapped=True)


def test_load_s_python_reads_no_node_table() -> None:
    """The decision is SAVE's: no module of restore/ imports the node-table codec (the C++
    builder alone reads the tables, and checks them)."""
    from pathlib import Path

    from .house import Tree

    tree = Tree.read(Path(__file__).resolve().parents[1])
    readers = [m for m, names in tree.imports.items() if m.startswith("foundry_trace.restore") and any("_node_table" in n for n in names)]
    assert readers == []


class _Queue:
    """The pipeline as _start_early_graphs sees it: what it queues, in order (a graph once, as
    Pipeline.queue does), and Pipeline's own build_early over the manifest's graphs."""

    build_early = Pipeline.build_early

    def __init__(self, graphs) -> None:  # noqa: ANN001
        self._manifest = SimpleNamespace(graphs=graphs)
        self.queued: list[str] = []
        self.modules_for: list[list[str]] = []
        self.heads: list[bool] = []

    def load_modules_for(self, entries) -> None:  # noqa: ANN001
        self.modules_for.append([e.key for e in entries])

    def queue(self, entries, head: bool = False) -> None:  # noqa: ANN001
        self.queued += [e.key for e in entries if e.key not in self.queued]
        self.heads.append(head)


@given(
    st.lists(st.tuples(st.sampled_from(["1", "2", "8", "8/01", "8/02", "64", "x"]), st.sampled_from(["always", "graph_memory", "never", None])),
             min_size=1, max_size=7, unique_by=lambda t: t[0]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_a_load_starts_the_first_step_then_every_graph_that_can_build_in_serving_order(
    graphs: list[tuple[str, str | None]], every: bool, arena_free: bool, head: bool
) -> None:
    """Before the claim, LOAD queues the first step whole (or nothing at all: no graph may queue
    ahead of it), then, for an eager or background load, every other graph that needs no live
    state, in serving order (a head first for a background one, never for the first step); the
    graph arena is claimed first where a queued graph needs it, once."""
    import sys

    from foundry_trace.archive.keys import first_step, serving_order

    loading = sys.modules["foundry_trace.restore.load"]  # the module: the package exports its load() under that name

    entries = [SimpleNamespace(key=key, early=early) for key, early in graphs]
    pipeline, claims = _Queue(entries), []
    restored = SimpleNamespace(archive=SimpleNamespace(manifest=SimpleNamespace(graphs=entries)), pipeline=pipeline)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "_claim_graph_memory", lambda r: claims.append(r) or arena_free)
        loading._start_early_graphs(restored, every, head)
    first = [e.key for e in first_step(entries)]
    assert pipeline.modules_for == [first] and len(claims) <= 1
    mapped = bool(claims) and arena_free
    if not pipeline.queued:  # the first step could not start
        assert any(not builds_early(e, mapped) for e in first_step(entries))
        return
    assert pipeline.queued[: len(first)] == first and all(builds_early(e, mapped) for e in entries if e.key in pipeline.queued)
    later = [e.key for e in serving_order(entries) if e.key not in first and builds_early(e, mapped)]
    assert pipeline.queued[len(first) :] == (later if every else [])
    assert pipeline.heads == ([False, False, head] if every else [False]), "the first step alone, never with a head"
    if claims:  # only where some graph that would queue needed the arena
        assert any(e.early == "graph_memory" for e in entries)

"""Arena routing (capture, explicit selection) and cross-stream reuse, on the host simulation."""

from __future__ import annotations

import threading

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

import foundry_alloc as fa

from .conftest import SIM_BASE, SIM_SIZE
from .sim_helpers import allocate, arena_slot

ARENA_SIZE = SIM_SIZE // 8
CAPTURING, OTHER = 0x7000, 0x8000


def arena_of(address: int) -> int:
    return (address - SIM_BASE) // ARENA_SIZE


def test_default_arena_is_engine(sim: fa.NativeAllocator) -> None:
    assert fa.current_arena() == fa.ENGINE
    assert arena_of(allocate(sim, 4096)) == arena_slot(fa.ENGINE)


def test_capturing_stream_allocates_from_graph_arena_whatever_is_selected(sim: fa.NativeAllocator) -> None:
    sim.set_capturing(CAPTURING, True)
    captured = allocate(sim, 1 << 20, arena=fa.TRANSIENT, stream=CAPTURING)
    eager = allocate(sim, 1 << 20, arena=fa.TRANSIENT, stream=OTHER)
    assert arena_of(captured) == arena_slot(fa.GRAPH)
    assert arena_of(eager) == arena_slot(fa.TRANSIENT)
    assert sim.layout().select([fa.GRAPH]).allocations[0].address == captured


def test_graph_memory_is_never_handed_to_eager_code(sim: fa.NativeAllocator) -> None:
    sim.set_capturing(CAPTURING, True)
    captured = [allocate(sim, size, stream=CAPTURING) for size in (4096, 1 << 20, 8 << 20)]
    for address in captured:
        sim.free(address)
    sim.set_capturing(CAPTURING, False)
    eager = [allocate(sim, size, stream=stream) for size in (4096, 1 << 20, 8 << 20) for stream in (CAPTURING, OTHER)]
    assert not set(eager) & set(captured)
    assert all(arena_of(a) != arena_slot(fa.GRAPH) for a in eager)
    # A later capture does reuse the graph arena, as captures sharing one graph pool do.
    sim.set_capturing(OTHER, True)
    assert allocate(sim, 8 << 20, stream=OTHER) == captured[2]


def test_trim_keeps_graph_memory_unless_asked(sim: fa.NativeAllocator) -> None:
    sim.set_capturing(CAPTURING, True)
    sim.free(allocate(sim, 8 << 20, stream=CAPTURING))
    sim.set_capturing(CAPTURING, False)
    sim.free(allocate(sim, 8 << 20))
    assert sim.trim() == 8 << 20
    assert sim.stats().arenas[fa.GRAPH].mapped_bytes == 8 << 20
    assert sim.trim(arenas=(fa.GRAPH,)) == 8 << 20
    assert sim.stats().mapped_bytes == 0


def test_trim_keeps_pages_that_hold_live_blocks(sim: fa.NativeAllocator) -> None:
    kept = allocate(sim, 3 << 20)
    sim.free(allocate(sim, 5 << 20))
    assert sim.trim() > 0
    assert sim.stats().mapped_bytes >= 3 << 20
    assert sim.layout().allocations[0].address == kept


def test_named_arenas_get_their_own_slices(sim: fa.NativeAllocator) -> None:
    weights = allocate(sim, 1 << 20, arena="weights")
    cache = allocate(sim, 1 << 20, arena="kv-cache")
    assert len({arena_of(weights), arena_of(cache), arena_of(allocate(sim, 1 << 20))}) == 3
    assert {a.arena for a in sim.layout().allocations} == {"weights", "kv-cache", fa.ENGINE}


def test_arena_selection_is_per_thread_and_restored(sim: fa.NativeAllocator) -> None:
    seen: list[str] = []
    with fa.arena(fa.TRANSIENT):
        worker = threading.Thread(target=lambda: seen.append(fa.current_arena()))
        worker.start()
        worker.join()
        assert fa.current_arena() == fa.TRANSIENT
    assert seen == [fa.ENGINE]
    assert fa.current_arena() == fa.ENGINE


def test_graph_arena_cannot_be_selected() -> None:
    with pytest.raises(fa.InvalidRequestError, match="chosen automatically"), fa.arena(fa.GRAPH):
        pass


@pytest.mark.parametrize("name", ["", "Upper", "has space", "x" * 40, "9starts-with-digit"])
def test_invalid_arena_names_are_refused(name: str) -> None:
    with pytest.raises(fa.InvalidRequestError, match="not valid"), fa.arena(name):
        pass


def test_reuse_from_another_stream_waits_for_the_freeing_stream(sim: fa.NativeAllocator) -> None:
    block = allocate(sim, 2 << 20, stream=1)
    sim.free(block)
    assert allocate(sim, 2 << 20, stream=2) == block
    assert sim.orderings() == [(2, 1)]


def test_reuse_on_the_same_stream_needs_no_ordering(sim: fa.NativeAllocator) -> None:
    for _ in range(3):
        sim.free(allocate(sim, 2 << 20, stream=1))
    assert sim.orderings() == []


def test_an_ordering_is_not_repeated_without_new_frees(sim: fa.NativeAllocator) -> None:
    a, b = allocate(sim, 2 << 20, stream=1), allocate(sim, 2 << 20, stream=1)
    sim.free(a)
    sim.free(b)
    allocate(sim, 2 << 20, stream=2)
    allocate(sim, 2 << 20, stream=2)
    assert sim.orderings() == [(2, 1)]


def test_graph_arena_reuse_needs_no_ordering(sim: fa.NativeAllocator) -> None:
    sim.set_capturing(1, True)
    sim.set_capturing(2, True)
    sim.free(allocate(sim, 2 << 20, stream=1))
    allocate(sim, 2 << 20, stream=2)
    assert sim.orderings() == []


def test_no_ordering_after_a_stream_that_is_capturing(sim: fa.NativeAllocator) -> None:
    sim.free(allocate(sim, 2 << 20, stream=1))
    sim.set_capturing(1, True)
    allocate(sim, 2 << 20, stream=2)
    assert sim.orderings() == []


def test_streams_past_the_tracked_ones_are_ordered_by_handle(sim: fa.NativeAllocator) -> None:
    """Streams past the 63rd share a slot: reuse after one of them used to synchronize the whole
    device; it now waits for that stream alone."""
    for stream in range(1, 70):
        sim.free(allocate(sim, 4096, stream=stream))
    overflow_free = allocate(sim, 2 << 20, stream=100)
    sim.free(overflow_free)
    assert allocate(sim, 2 << 20, stream=1) == overflow_free
    assert sim.orderings()[-1] == (1, 100)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=2, max_value=130), st.integers(min_value=1, max_value=4))
def test_streams_taking_turns_wait_only_for_the_stream_that_used_the_memory(streams: int, blocks: int) -> None:
    """With N streams taking turns, a freed block merged into a free range whose set of freeing
    streams only grew, so every allocation waited for N - 1 streams (and from 64 streams
    synchronized the device). Now each waits only for the streams whose frees it reuses: one."""
    sim = fa.NativeAllocator.simulated(0x200000000000, 8 << 30)
    try:
        for turn in range(3 * streams):
            stream = 1 + turn % streams
            held = []
            for _ in range(blocks):
                before = sim.simulation_counters().orderings
                held.append(sim.allocate(4096, stream=stream))
                assert sim.simulation_counters().orderings - before <= 1, f"turn {turn}: waited for more than the last user"
            for address in held:
                sim.free(address)
    finally:
        sim.close()


def test_the_host_backends_ordering_log_is_bounded(sim: fa.NativeAllocator) -> None:
    for turn in range(10_000):
        sim.free(allocate(sim, 4096, stream=1 + turn % 2))
    counters = sim.simulation_counters()
    assert counters.orderings == 9_999 and counters.orderings_kept == len(sim.orderings()) == 4096
    assert sim.orderings()[-2:] == [(1, 2), (2, 1)]


def test_concurrent_threads_get_disjoint_blocks(sim: fa.NativeAllocator) -> None:
    results: list[list[int]] = [[] for _ in range(8)]

    def work(index: int) -> None:
        for size in (4096, 1 << 20, 3 << 20) * 20:
            address = sim.allocate(size, stream=index)
            results[index].append(address)
            if len(results[index]) % 3 == 0:
                sim.free(results[index].pop(0))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    live = sorted((a.address, a.address + a.size) for a in sim.layout().allocations)
    assert len(live) == sum(map(len, results))
    assert all(end <= start for (_, end), (start, _) in zip(live, live[1:]))


def test_devices_get_consecutive_ranges_in_first_use_order(sim: fa.NativeAllocator) -> None:
    on_one = sim.allocate(4096, device=1)
    on_zero = sim.allocate(4096, device=0)
    assert on_one == SIM_BASE
    assert on_zero == SIM_BASE + SIM_SIZE
    assert sim.simulation_counters().reserved_ranges == 2
    assert sim.layout(1).allocations[0].address == on_one


def test_mappings_cover_graph_memory_that_is_no_longer_live(sim: fa.NativeAllocator) -> None:
    """Graphs use memory freed during their capture: the mappings, not the live blocks, say where."""
    sim.set_capturing(CAPTURING, True)
    sim.free(allocate(sim, 6 << 20, stream=CAPTURING))
    live = allocate(sim, 4096)
    mapped = sim.mappings()
    assert ((SIM_BASE + ARENA_SIZE + ARENA_SIZE // 16, 6 << 20, fa.GRAPH)) in mapped
    assert any(address <= live < address + size and arena == fa.ENGINE for address, size, arena in mapped)
    assert not sim.layout().select([fa.GRAPH]).allocations

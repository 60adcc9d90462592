"""Placement properties of the native core, through its host simulation (same code as on the GPU)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import foundry_alloc as fa

from .conftest import SIM_BASE, SIM_GRANULARITY, SIM_SIZE
from .placement_model import ALIGNMENT, best_fit, rounded
from .sim_helpers import SIZE_MIX, Request, allocate, replay, zone_of

ARENAS = (fa.ENGINE, fa.TRANSIENT)
sizes = st.one_of(st.sampled_from(SIZE_MIX), st.integers(min_value=1, max_value=80 << 20))


def new_sim() -> fa.NativeAllocator:
    sim = fa.NativeAllocator.simulated(SIM_BASE, SIM_SIZE, granularity=SIM_GRANULARITY)
    sim.reserve()
    return sim


@st.composite
def request_sequences(draw: st.DrawFn, max_size: int = 60) -> list[Request]:
    """Random alloc/free sequences that only free live blocks, each free at most once."""
    requests: list[Request] = []
    live: list[int] = []
    for _ in range(draw(st.integers(min_value=1, max_value=max_size))):
        if live and draw(st.booleans()):
            victim = live.pop(draw(st.integers(min_value=0, max_value=len(live) - 1)))
            requests.append(Request(frees=victim))
        else:
            live.append(len(requests))
            requests.append(
                Request(size=draw(sizes), arena=draw(st.sampled_from(ARENAS)), stream=draw(st.sampled_from((0, 1, 2))))
            )
    return requests


class PlacementMachine(RuleBasedStateMachine):
    """Random traffic over two arenas and three streams, checked against the reference rule."""

    blocks = Bundle("blocks")

    def __init__(self) -> None:
        super().__init__()
        self.sim = new_sim()
        self.live: dict[int, tuple[int, str]] = {}  # address -> (rounded size, arena)

    @rule(target=blocks, size=sizes, arena=st.sampled_from(ARENAS), stream=st.sampled_from((0, 1, 2)))
    def allocate(self, size: int, arena: str, stream: int) -> int:
        begin, end = zone_of(self.sim, arena, rounded(size))
        expected = best_fit(((a, s) for a, (s, _) in self.live.items()), begin, end, rounded(size))
        address = allocate(self.sim, size, arena, stream)
        assert address == expected, f"{size} B in {arena}: got {address:#x}, rule says {expected:#x}"
        self.live[address] = (rounded(size), arena)
        return address

    @rule(address=consumes(blocks))
    def free(self, address: int) -> None:
        self.sim.free(address)
        del self.live[address]

    @invariant()
    def blocks_aligned_disjoint_and_in_their_zone(self) -> None:
        layout = self.sim.layout()
        assert {a.address: (a.size, a.arena) for a in layout.allocations} == self.live
        previous_end = 0
        for block in layout.allocations:
            assert block.address % ALIGNMENT == 0 and block.size % ALIGNMENT == 0
            assert block.address >= previous_end, "blocks overlap"
            previous_end = block.address + block.size
            begin, end = zone_of(self.sim, block.arena, block.size)
            assert begin <= block.address and block.address + block.size <= end

    @invariant()
    def every_live_byte_is_mapped(self) -> None:
        stats = self.sim.stats()
        assert stats.live_bytes == sum(s for s, _ in self.live.values())
        assert stats.mapped_bytes >= stats.live_bytes
        assert self.sim.simulation_counters().mapped_bytes == stats.mapped_bytes

    def teardown(self) -> None:
        self.sim.close()


TestPlacementMachine = PlacementMachine.TestCase
TestPlacementMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@settings(max_examples=80, deadline=None)
@given(request_sequences())
def test_replaying_a_sequence_reproduces_every_address(requests: list[Request]) -> None:
    first, second = new_sim(), new_sim()
    try:
        assert replay(first, requests) == replay(second, requests)
        assert first.layout() == second.layout()
    finally:
        first.close()
        second.close()


@settings(max_examples=60, deadline=None)
@given(request_sequences(), request_sequences())
def test_freed_history_leaves_no_trace(history: list[Request], requests: list[Request]) -> None:
    """Placement depends on the live set only: traffic that was fully freed changes nothing after it."""
    fresh, used = new_sim(), new_sim()
    try:
        addresses = replay(used, history)
        for index, request in enumerate(history):
            freed = any(r.frees == index for r in history)
            if request.frees < 0 and not freed:
                used.free(addresses[index])
        assert replay(fresh, requests) == replay(used, requests)
    finally:
        fresh.close()
        used.close()


@settings(max_examples=60, deadline=None)
@given(
    engine=st.lists(sizes, min_size=1, max_size=20),
    transient=request_sequences(),
    positions=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=20),
)
def test_transient_traffic_never_moves_engine_blocks(
    engine: list[int], transient: list[Request], positions: list[int]
) -> None:
    """The same engine allocations land at the same addresses whatever transient traffic runs between them."""
    noise = [Request(size=r.size, arena=fa.TRANSIENT, stream=r.stream, frees=r.frees) for r in transient]
    quiet, noisy = new_sim(), new_sim()
    try:
        expected = [allocate(quiet, size) for size in engine]
        got, noise_addresses = [], []
        cut = iter(sorted(positions))
        boundary = next(cut, None)
        for index, size in enumerate(engine):
            while boundary is not None and boundary <= index and len(noise_addresses) < len(noise):
                request = noise[len(noise_addresses)]
                if request.frees >= 0:
                    noisy.free(noise_addresses[request.frees])
                    noise_addresses.append(0)
                else:
                    noise_addresses.append(allocate(noisy, request.size, fa.TRANSIENT, request.stream))
                boundary = next(cut, None)
            got.append(allocate(noisy, size))
        assert got == expected
    finally:
        quiet.close()
        noisy.close()


def test_freed_block_is_reused(sim: fa.NativeAllocator) -> None:
    first = allocate(sim, 3 << 20)
    allocate(sim, 1 << 20)
    sim.free(first)
    assert allocate(sim, 3 << 20) == first
    assert allocate(sim, 2 << 20) != first


def test_small_and_large_blocks_use_separate_zones(sim: fa.NativeAllocator) -> None:
    small = allocate(sim, 1 << 20)
    large = allocate(sim, (1 << 20) + 1)
    begin, end = zone_of(sim, fa.ENGINE, 1 << 20)
    assert begin <= small < end <= large


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SIZE_MIX), st.integers(min_value=0, max_value=1 << 16)), min_size=50, max_size=300))
def test_fragmentation_stays_bounded_on_random_workloads(ops: list[tuple[int, int]]) -> None:
    """Best fit over merged free ranges keeps the used extent of each zone within a small factor of
    the peak live bytes: random serving-like traffic never makes the allocator creep upwards."""
    budget = 512 << 20  # live bytes stay under half the engine arena's large zone
    sim = new_sim()
    try:
        live: dict[int, int] = {}
        peak = {True: 0, False: 0}
        span = {True: 0, False: 0}
        for size, choice in ops:
            while live and sum(live.values()) + rounded(size) > budget:
                del_address = sorted(live)[choice % len(live)]
                sim.free(del_address)
                del live[del_address]
            live[allocate(sim, size)] = rounded(size)
            engine = sim.stats().arenas[fa.ENGINE]
            for small in (True, False):
                peak[small] = max(peak[small], sum(s for s in live.values() if (s <= 1 << 20) == small))
            span[True] = max(span[True], engine.small_span_bytes)
            span[False] = max(span[False], engine.large_span_bytes)
        assert span[True] <= 2 * peak[True] + (1 << 20)
        assert span[False] <= 2 * peak[False] + (64 << 20)
    finally:
        sim.close()


@settings(max_examples=60, deadline=None)
@given(request_sequences())
def test_claiming_a_recorded_layout_reproduces_it(requests: list[Request]) -> None:
    """LOAD re-creates recorded blocks by claiming their ranges: the result equals the original
    layout, and later requests are placed as they would have been."""
    original, restored = new_sim(), new_sim()
    try:
        replay(original, requests)
        for block in original.layout().allocations:
            restored.claim(block.address, block.size, block.arena)
        assert [(a.address, a.size, a.arena) for a in restored.layout().allocations] == [
            (a.address, a.size, a.arena) for a in original.layout().allocations
        ]
        assert allocate(original, 3 << 20) == allocate(restored, 3 << 20)
    finally:
        original.close()
        restored.close()


def test_claiming_a_taken_range_is_refused_and_changes_nothing(sim: fa.NativeAllocator) -> None:
    taken = allocate(sim, 4 << 20)
    before = sim.layout()
    with pytest.raises(fa.InvalidRequestError, match="not free there"):
        sim.claim(taken + (2 << 20), 4 << 20, fa.ENGINE)
    with pytest.raises(fa.InvalidRequestError, match="not an aligned range"):
        sim.claim(taken + 1, 4096, fa.ENGINE)
    assert sim.layout() == before
    sim.claim(taken + (4 << 20), 4096, fa.ENGINE)
    assert sim.stats().mapped_bytes >= (4 << 20) + 4096
    sim.free(taken + (4 << 20))

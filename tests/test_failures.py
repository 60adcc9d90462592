"""Failure paths of the core: out of memory, unavailable range, bad frees. Nothing may leak."""

from __future__ import annotations

import pytest

import foundry_alloc as fa

from .conftest import SIM_BASE, SIM_GRANULARITY, SIM_SIZE
from .sim_helpers import allocate

MiB = 1 << 20


@pytest.fixture
def small_gpu() -> fa.NativeAllocator:
    """A simulated device with 64 MiB of physical memory."""
    sim = fa.NativeAllocator.simulated(SIM_BASE, SIM_SIZE, granularity=SIM_GRANULARITY, physical_limit=64 * MiB)
    yield sim
    sim.close()


def test_out_of_memory_reports_stats_and_changes_nothing(small_gpu: fa.NativeAllocator) -> None:
    allocate(small_gpu, 40 * MiB)
    before_layout, before_stats = small_gpu.layout(), small_gpu.stats()
    with pytest.raises(fa.AllocatorOutOfMemoryError) as error:
        allocate(small_gpu, 30 * MiB)
    message = str(error.value)
    assert "CUDA out of memory" in message
    assert "Foundry holds 40.00 MiB mapped" in message
    assert "engine 40.00 MiB / 40.00 MiB" in message
    assert small_gpu.layout() == before_layout
    assert small_gpu.stats().mapped_bytes == before_stats.mapped_bytes
    assert small_gpu.simulation_counters().mapped_bytes == 40 * MiB


def test_out_of_memory_partway_unmaps_what_it_mapped(small_gpu: fa.NativeAllocator) -> None:
    """A block spanning a mapped page and unmapped ones: a failure gives back the pages it took."""
    small_gpu.free(allocate(small_gpu, 6 * MiB))
    keep = allocate(small_gpu, 2 * MiB)  # lands in the mapped pages
    with pytest.raises(fa.AllocatorOutOfMemoryError):
        allocate(small_gpu, 100 * MiB)
    assert small_gpu.layout().allocations[0].address == keep
    assert small_gpu.simulation_counters().mapped_bytes == small_gpu.stats().mapped_bytes


def test_idle_memory_of_other_arenas_is_trimmed_before_failing(small_gpu: fa.NativeAllocator) -> None:
    small_gpu.free(allocate(small_gpu, 48 * MiB, arena=fa.TRANSIENT))
    assert small_gpu.stats().mapped_bytes == 48 * MiB
    allocate(small_gpu, 48 * MiB)
    assert small_gpu.stats().arenas[fa.TRANSIENT].mapped_bytes == 0


def test_graph_memory_is_not_trimmed_to_satisfy_eager_code(small_gpu: fa.NativeAllocator) -> None:
    small_gpu.set_capturing(9, True)
    small_gpu.free(allocate(small_gpu, 48 * MiB, stream=9))
    with pytest.raises(fa.AllocatorOutOfMemoryError, match="arena 'graph' is kept"):
        allocate(small_gpu, 48 * MiB)
    assert small_gpu.stats().arenas[fa.GRAPH].mapped_bytes == 48 * MiB


def test_a_request_larger_than_its_arena_names_the_setting(sim: fa.NativeAllocator) -> None:
    with pytest.raises(fa.AllocatorOutOfMemoryError, match="Raise FOUNDRY_ALLOC_SIZE"):
        allocate(sim, SIM_SIZE // 8)


def test_unavailable_range_is_named_with_a_suggestion_and_nothing_stays_reserved() -> None:
    sim = fa.NativeAllocator.simulated(SIM_BASE, SIM_SIZE)
    try:
        sim.occupy(SIM_BASE + (1 << 30), 1 << 30)
        with pytest.raises(fa.ReservationError) as error:
            sim.allocate(4096)
        message = str(error.value)
        assert f"[{SIM_BASE:#x}, {SIM_BASE + SIM_SIZE:#x})" in message
        assert "FOUNDRY_ALLOC_BASE" in message and "e.g. 0x" in message
        assert sim.simulation_counters().reserved_ranges == 0
        with pytest.raises(fa.ReservationError):  # still refused, still clean
            sim.reserve()
        assert sim.simulation_counters().reserved_ranges == 0
    finally:
        sim.close()


def test_free_of_an_unknown_pointer_is_refused(sim: fa.NativeAllocator) -> None:
    address = allocate(sim, 4096)
    sim.free(address)
    with pytest.raises(fa.InvalidRequestError, match="not a live block"):
        sim.free(address)
    with pytest.raises(fa.InvalidRequestError):
        sim.free(0xDEAD000)


def test_misaligned_range_is_refused() -> None:
    sim = fa.NativeAllocator.simulated(SIM_BASE + 4096, SIM_SIZE)
    try:
        with pytest.raises(fa.InvalidRequestError, match="multiple of the mapping granularity"):
            sim.reserve()
    finally:
        sim.close()


def test_close_gives_everything_back() -> None:
    sim = fa.NativeAllocator.simulated(SIM_BASE, SIM_SIZE)
    allocate(sim, 10 * MiB)
    counters = sim.simulation_counters()
    assert counters.mapped_bytes and counters.reserved_ranges == 1
    sim.close()
    sim.close()  # idempotent


def test_host_controls_are_refused_on_the_cuda_allocator() -> None:
    cuda = fa.NativeAllocator.cuda(SIM_BASE, SIM_SIZE)
    try:
        with pytest.raises(fa.InvalidRequestError, match="simulated"):
            cuda.set_capturing(1, True)
    finally:
        cuda.close()


def test_stats_track_peaks_and_reset(sim: fa.NativeAllocator) -> None:
    block = allocate(sim, 10 * MiB)
    sim.free(block)
    stats = sim.stats()
    assert stats.live_bytes == 0 and stats.peak_live_bytes == 10 * MiB
    assert stats.arenas[fa.ENGINE].allocations == 1 and stats.arenas[fa.ENGINE].frees == 1
    sim.reset_peaks()
    assert sim.stats().peak_live_bytes == 0
    assert "engine" in sim.stats().render()


def test_torch_out_of_memory_error_can_be_raised_once_torch_is_loaded() -> None:
    """The allocator raises c10::OutOfMemoryError through symbols it finds in the loaded libc10."""
    import torch  # noqa: F401 - loads libc10

    from foundry_alloc import _native

    assert _native.library().fa_torch_oom_available() == 1

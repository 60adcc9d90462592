"""Helpers for driving a simulated allocator the way PyTorch drives the real one."""

from __future__ import annotations

from dataclasses import dataclass

import foundry_alloc as fa

from .placement_model import zone

# A serving-like mix: many small tensors (norms, biases, indices), activations, a few big buffers.
SIZE_MIX = (256, 512, 4096, 65536, 512 << 10, 1 << 20, (1 << 20) + 512, 3 << 20, 16 << 20, 64 << 20)


@dataclass(frozen=True)
class Request:
    """One allocation (size > 0) or one free (of the request at index `frees`)."""

    size: int = 0
    arena: str = fa.ENGINE
    stream: int = 0
    frees: int = -1


def allocate(sim: fa.NativeAllocator, size: int, arena: str = fa.ENGINE, stream: int = 0, device: int = 0) -> int:
    with fa.arena(arena):
        return sim.allocate(size, device=device, stream=stream)


def replay(sim: fa.NativeAllocator, requests: list[Request]) -> list[int]:
    """Runs a request sequence; returns the address of every allocation, in order (0 for frees)."""
    addresses: list[int] = []
    for request in requests:
        if request.frees >= 0:
            sim.free(addresses[request.frees])
            addresses.append(0)
        else:
            addresses.append(allocate(sim, request.size, request.arena, request.stream))
    return addresses


def arena_slot(name: str) -> int:
    return fa.arena_names().index(name)


def zone_of(sim: fa.NativeAllocator, arena: str, rounded_size: int) -> tuple[int, int]:
    stats = sim.stats()
    return zone(stats.base, stats.reserved_bytes, arena_slot(arena), rounded_size)

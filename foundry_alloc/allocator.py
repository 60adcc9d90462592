"""A Python handle on one instance of the native core: the CUDA one PyTorch calls, or a host
simulation of it that runs the same placement code without a GPU (used by the CPU test suite)."""

from __future__ import annotations

import ctypes

from . import _native
from .arenas import arena_for_claim, arena_index, arena_name, arena_names
from .errors import InvalidRequestError
from .layout import Allocation, Layout
from .stats import AllocatorStats, ArenaStats


class NativeAllocator:
    """Owns a core instance. Methods raise the errors of foundry_alloc.errors."""

    def __init__(self, handle: int, *, host: bool) -> None:
        self._lib = _native.library()
        self._handle = ctypes.c_void_p(handle)
        self.host = host

    @classmethod
    def cuda(cls, base: int, size: int) -> NativeAllocator:
        """The driver-backed allocator. Nothing touches the driver until the first allocation or reserve()."""
        return cls(_native.library().fa_new_cuda(base, size), host=False)

    @classmethod
    def simulated(cls, base: int, size: int, *, granularity: int = 2 << 20, physical_limit: int = 1 << 40) -> NativeAllocator:
        """A host simulation: addresses are numbers, `physical_limit` bytes can be mapped."""
        return cls(_native.library().fa_new_host(base, size, granularity, physical_limit), host=True)

    @property
    def handle(self) -> ctypes.c_void_p:
        return self._handle

    def allocate(self, size: int, device: int = 0, stream: int = 0) -> int:
        """Allocates `size` bytes for `device`, enqueued on `stream`, in this thread's arena."""
        out = ctypes.c_uint64()
        _native.check(self._lib.fa_allocate(self._handle, size, device, stream, ctypes.byref(out)))
        return out.value

    def free(self, address: int) -> None:
        _native.check(self._lib.fa_release(self._handle, address))

    def claim(self, address: int, size: int, arena: str, device: int = 0) -> None:
        """Makes [address, address + size) a live, mapped block of `arena`; refused (and nothing
        changed, an arena new to this process not named either) unless that range is free.
        Free it with free(address)."""
        with arena_for_claim(arena) as index:
            _native.check(self._lib.fa_claim(self._handle, device, address, size, index))

    def reserve(self, device: int = 0) -> None:
        """Reserves the device's range now instead of at its first allocation."""
        _native.check(self._lib.fa_reserve(self._handle, device))

    def trim(self, device: int = 0, arenas: tuple[str, ...] | None = None) -> int:
        """Unmaps physical memory no live block uses, in `arenas` (all but `graph` by default).
        Returns the bytes given back to the driver."""
        names = arenas if arenas is not None else tuple(n for n in arena_names() if n != "graph")
        mask = 0
        for name in names:
            mask |= 1 << arena_index(name)
        released = ctypes.c_uint64()
        _native.check(self._lib.fa_trim(self._handle, device, mask, ctypes.byref(released)))
        return released.value

    def layout(self, device: int = 0) -> Layout:
        """The live blocks of the device's range."""
        stats = self._raw_stats(device)
        return Layout(
            device=device,
            base=stats.base,
            size=stats.size,
            granularity=stats.granularity,
            allocations=tuple(
                Allocation(
                    address=r.address, size=r.size, requested=r.requested, arena=arena_name(r.arena), sequence=r.sequence
                )
                for r in self._records(device, _native.LIVE_BLOCKS)
            ),
        )

    def mappings(self, device: int = 0) -> list[tuple[int, int, str]]:
        """(address, size, arena) of every physical mapping of the device's range. Graphs may use
        mapped memory of arena 'graph' where no block is live any more."""
        return [(r.address, r.size, arena_name(r.arena)) for r in self._records(device, _native.MAPPINGS)]

    def _records(self, device: int, kind: int) -> list[_native.BlockRecord]:
        count = ctypes.c_uint64()
        capacity = 0
        while True:
            records = (_native.BlockRecord * max(capacity, 1))()
            _native.check(self._lib.fa_layout(self._handle, device, kind, records, capacity, ctypes.byref(count)))
            if count.value <= capacity:
                return list(records[: count.value])
            capacity = count.value + 64  # other threads may allocate between the two calls

    def stats(self, device: int = 0) -> AllocatorStats:
        raw = self._raw_stats(device)
        return AllocatorStats(
            device=device,
            base=raw.base,
            reserved_bytes=raw.size,
            granularity=raw.granularity,
            mapped_bytes=raw.mapped_bytes,
            peak_mapped_bytes=raw.peak_mapped_bytes,
            live_bytes=raw.live_bytes,
            peak_live_bytes=raw.peak_live_bytes,
            live_blocks=raw.live_blocks,
            arenas={
                name: ArenaStats(
                    live_bytes=c.live_bytes,
                    requested_bytes=c.requested_bytes,
                    live_blocks=c.live_blocks,
                    peak_live_bytes=c.peak_live_bytes,
                    mapped_bytes=c.mapped_bytes,
                    allocations=c.allocations,
                    frees=c.frees,
                    small_span_bytes=raw.small_span[i],
                    large_span_bytes=raw.large_span[i],
                )
                for i, (name, c) in enumerate(zip(arena_names(), raw.arenas))
            },
        )

    def reset_peaks(self, device: int = 0) -> None:
        _native.check(self._lib.fa_reset_peaks(self._handle, device))

    def _raw_stats(self, device: int) -> _native.SpaceStats:
        raw = _native.SpaceStats()
        _native.check(self._lib.fa_stats(self._handle, device, ctypes.byref(raw)))
        return raw

    def close(self) -> None:
        """Unmaps and unreserves everything this instance holds (not for the installed allocator)."""
        if self._handle:
            _native.check(self._lib.fa_delete(self._handle))
            self._handle = ctypes.c_void_p(0)

    # Host-simulation controls.
    def _require_host(self) -> None:
        if not self.host:
            raise InvalidRequestError("this control exists only on simulated allocators")

    def set_capturing(self, stream: int, capturing: bool) -> None:
        """Makes the simulated driver report `stream` as capturing (or not)."""
        self._require_host()
        _native.check(self._lib.fa_host_set_capturing(self._handle, stream, int(capturing)))

    def occupy(self, base: int, size: int) -> None:
        """Marks a range as taken by someone else, so that reserving over it fails."""
        self._require_host()
        _native.check(self._lib.fa_host_occupy(self._handle, base, size))

    def simulation_counters(self) -> _native.HostCounters:
        self._require_host()
        counters = _native.HostCounters()
        _native.check(self._lib.fa_host_counters(self._handle, ctypes.byref(counters)))
        return counters

    def orderings(self) -> list[tuple[int, int]]:
        """(waiting stream, producing stream) of the cross-stream orderings inserted so far, the
        most recent 4,096 at most (simulation_counters().orderings counts them all)."""
        count = self.simulation_counters().orderings_kept
        pairs = (ctypes.c_void_p * (2 * max(count, 1)))()
        _native.check(self._lib.fa_host_orderings(self._handle, pairs, count))
        return [(pairs[2 * i] or 0, pairs[2 * i + 1] or 0) for i in range(count)]

"""Everything one LOAD makes that must be given back: modules, events, executables, collective
graphs, built graphs not instantiated yet, and claimed memory. One owner, shared by the Restored
object and its pipeline's worker threads, which record each handle here the moment it exists:
so that a failure anywhere, in any mode, releases all of it and the process is as it was before
LOAD.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from cuda.bindings import driver

import foundry_alloc
from foundry_alloc.units import format_bytes
from foundry_trace import _native as native
from foundry_trace.parallel.collectives import Communicator


@dataclass(frozen=True)
class ReleaseSummary:
    """What a release gave back, for messages ("released 3 executables, 19 modules, ...")."""

    executables: int = 0
    built_graphs: int = 0
    collective_graphs: int = 0
    events: int = 0
    modules: int = 0
    memory_blocks: int = 0
    memory_bytes: int = 0

    def __str__(self) -> str:
        parts = [
            f"{count} {name if count != 1 else name[:-1]}"
            for name, count in (
                ("executables", self.executables), ("built graphs", self.built_graphs), ("collective graphs", self.collective_graphs),
                ("events", self.events), ("modules", self.modules),
            )
            if count
        ]
        if self.memory_blocks:
            parts.append(f"{self.memory_blocks} claimed memory block{'s' if self.memory_blocks != 1 else ''} ({format_bytes(self.memory_bytes)})")
        return ", ".join(parts) or "nothing"


_live: Counter[str] = Counter()  # handles of every load in the process, made and not yet destroyed
_live_lock = threading.Lock()


def live_handles() -> dict[str, int]:
    """Handles that loads in this process made and have not destroyed, by kind (executables,
    built graphs, collective graphs, events, modules): all zero once every load was released.
    For soak tests and operators looking for a leak."""
    with _live_lock:
        return {kind: _live[kind] for kind in ("executables", "built graphs", "collective graphs", "events", "modules")}


def _count(kind: str, change: int) -> None:
    with _live_lock:
        _live[kind] += change


class LoadResources:
    """Handles of one LOAD, recorded as they are made (thread-safe), and released in an order
    that is safe while graphs may still run: executables and collective graphs, then (after the
    device has finished its work) events, modules and memory."""

    def __init__(self, device: int, communicator: Communicator | None = None) -> None:
        self.device = device
        self.communicator = communicator  # told about each collective graph it made that is destroyed
        self._lock = threading.Lock()
        self._executables: list[int] = []
        self._built_graphs: set[int] = set()
        self._collective_graphs: list[int] = []
        self._events: list[int] = []
        self._modules: list[int] = []
        self._claimed: list[tuple[int, int, str]] = []  # (address, size, arena)
        self._released = False

    def add_executable(self, handle: int) -> None:
        self._add("executables", self._executables, handle)

    def add_built_graph(self, handle: int) -> None:
        """A CUgraph built and waiting for its instantiation (chunks build ahead)."""
        _count("built graphs", 1)
        with self._lock:
            if not self._released:
                self._built_graphs.add(handle)
                return
        self._destroy("built graphs", handle)

    def take_built_graph(self, handle: int) -> bool:
        """Hands a built graph to the worker that instantiates it (and then destroys it with
        destroy_built_graph); False where release() destroyed it already."""
        with self._lock:
            if handle not in self._built_graphs:
                return False
            self._built_graphs.discard(handle)
            return True

    def destroy_built_graph(self, handle: int) -> None:
        self._destroy("built graphs", handle)

    def add_collective_graph(self, handle: int) -> None:
        self._add("collective graphs", self._collective_graphs, handle)

    def add_event(self, handle: int) -> None:
        self._add("events", self._events, handle)

    def add_module(self, handle: int) -> None:
        self._add("modules", self._modules, handle)

    def _add(self, kind: str, handles: list[int], handle: int) -> None:
        """Records a handle; one made after the release (by a worker a time-out abandoned) is
        destroyed at once instead."""
        _count(kind, 1)
        with self._lock:
            if not self._released:
                handles.append(handle)
                return
        self._destroy(kind, handle)

    def _destroy(self, kind: str, handle: int) -> None:
        if kind == "executables":
            native.destroy_executable(handle)  # freed by the driver once any launch of it ends
        elif kind == "built graphs":
            native.destroy_graph(handle)
        elif kind == "collective graphs":
            native.destroy_graph(handle)
            if self.communicator is not None:
                self.communicator.graph_released(handle)
        elif kind == "events":
            driver.cuEventDestroy(driver.CUevent(handle))
        else:
            native.unload_module(handle)
        _count(kind, -1)

    def add_claim(self, address: int, size: int, arena: str) -> None:
        with self._lock:
            self._claimed.append((address, size, arena))

    @property
    def events(self) -> list[int]:
        with self._lock:
            return list(self._events)

    @property
    def claims(self) -> int:
        """How many claims were made so far (for unclaim(since=))."""
        with self._lock:
            return len(self._claimed)

    def claimed_addresses(self) -> set[int]:
        with self._lock:
            return {address for address, _, _ in self._claimed}

    def unclaim(self, since: int = 0) -> tuple[int, int]:
        """Frees the memory claimed from the `since`-th claim on and gives it back to the driver
        too (the device then holds what it held before, and a fallback capture maps what it
        needs); returns (blocks, bytes)."""
        with self._lock:
            claimed, self._claimed = self._claimed[since:], self._claimed[:since]
        allocator = foundry_alloc.installed()
        if allocator is not None and claimed:
            for address, _, _ in claimed:
                allocator.free(address)
            allocator.trim(self.device, tuple({arena for _, _, arena in claimed}))
        return len(claimed), sum(size for _, size, _ in claimed)

    def release(self) -> ReleaseSummary:
        """Destroys and frees everything recorded; later handles are destroyed as they come.
        The caller has stopped the pipeline's workers first (or abandoned a stuck one)."""
        with self._lock:
            self._released = True
            executables, self._executables = self._executables, []
            built, self._built_graphs = self._built_graphs, set()
            graphs, self._collective_graphs = self._collective_graphs, []
            events, self._events = self._events, []
            modules, self._modules = self._modules, []
            has_memory = bool(self._claimed)
        for executable in executables:
            self._destroy("executables", executable)
        for graph in built:
            self._destroy("built graphs", graph)
        for graph in graphs:
            self._destroy("collective graphs", graph)
        if (modules or has_memory) and (executables or graphs):
            driver.cuCtxSynchronize()  # no kernel of these modules, or on this memory, may still run
        for event in events:
            self._destroy("events", event)
        for module in modules:
            self._destroy("modules", module)
        blocks, size = self.unclaim()
        return ReleaseSummary(len(executables), len(built), len(graphs), len(events), len(modules), blocks, size)

"""LOAD: rebuild the saved graphs in this process, at the addresses they were saved with.

    restored = foundry_trace.load("model.foundry")                     # every graph ready on return
    restored = foundry_trace.load("model.foundry", mode="background")  # returns once memory is claimed;
                                                                       # graphs become ready while serving
    restored = foundry_trace.load("model.foundry", mode="lazy")        # each graph at its first replay
    restored[8].replay(); logits = restored[8].outputs["logits"]
    restored.release()

    restored = foundry_trace.load("tp2.foundry", communicator=NcclCommunicator.from_environment())
                                                       # a tensor-parallel rank: collectives bound here

    early = foundry_trace.prefetch("model.foundry")   # at start-up: modules load while weights do
    ...                                                # the engine builds its state
    restored = foundry_trace.load(early)               # at the restore point

Call load() at the restore point (the engine's state rebuilt as in the SAVE run). Order: open the
archive and check the fingerprint, queue the smallest batch's graph and its modules on a pool of
threads (restore_pipeline.py); then check the live layout (refuse with the difference), claim the
recorded memory and write its contents, capture each recorded collective on the communicator
(tensor-parallel archives), and queue every other graph in serving order, each after the modules
it still needs (a lazy load: at its first replay). Any failure releases everything created so far and
raises.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nvtx
from cuda.bindings import driver

import foundry_alloc

from . import native
from .archive import Archive, Fingerprint, GraphEntry, OutputTensor
from .collectives import Communicator, check_communicator
from .driver import call, current_context
from .errors import ArchiveFormatError, FingerprintMismatchError, FoundryTraceError, LayoutMismatchError, RestoreError
from .fingerprint import current_fingerprint
from .records import MemorySegment
from .node_table import node_kinds
from .restore_pipeline import Pipeline, Span, builds_early, serving_order

NVTX_DOMAIN = "foundry"
Mode = Literal["eager", "background", "lazy"]
DEFAULT_THREADS = min(8, os.cpu_count() or 1)
_FINGERPRINT_FIELDS = ("gpu", "compute_capability", "driver", "cuda_driver_api", "torch", "allocator_base", "allocator_size")


class RestoredGraph:
    """One restored graph: replay() launches it; outputs are views of its recorded output buffers."""

    def __init__(self, key: str, outputs: dict[str, object], request) -> None:  # noqa: ANN001 - () -> Future
        self.key = key
        self.outputs = outputs
        self._request = request
        self._executable: driver.CUgraphExec | None = None  # made once: replay() is the hot path

    def _released(self) -> None:
        self._executable = None

        def refuse() -> Future:
            raise RestoreError(f"graph {self.key!r} was released: load the archive again (or capture it natively)")

        self._request = refuse

    def ready(self) -> bool:
        """True once the executable exists (always, after an eager load)."""
        return self._executable is not None

    def wait(self) -> None:
        """Blocks until the graph can be replayed, queuing its restore first where it is lazy."""
        if self._executable is None:
            future: Future = self._request()
            try:
                self._executable = driver.CUgraphExec(future.result())
            except FoundryTraceError:
                raise
            except Exception as error:  # noqa: BLE001 - a driver binding's own error
                raise RestoreError(f"restoring graph {self.key!r} failed: {error}") from error

    def replay(self, stream: int | None = None) -> None:
        """Launches the graph on `stream` (default: torch's current stream)."""
        if self._executable is None:
            self.wait()
        if stream is None:
            import torch

            stream = torch.cuda.current_stream().cuda_stream
        call(driver.cuGraphLaunch, self._executable, driver.CUstream(stream))


@dataclass
class Restored:
    """The restored graphs by key, what LOAD holds for them, and where its time went."""

    graphs: dict[str, RestoredGraph] = field(default_factory=dict)  # in serving order: batch sizes ascending
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds of each step in order
    spans: list[Span] = field(default_factory=list)  # every module and graph task, for the timeline
    _modules: list[driver.CUmodule] = field(default_factory=list)
    _events: list[driver.CUevent] = field(default_factory=list)
    _executables: list[int] = field(default_factory=list)
    _collective_graphs: list[int] = field(default_factory=list)  # cloned into each graph that uses one
    _claimed: list[tuple[int, str]] = field(default_factory=list)  # (address, arena)
    _device: int = 0
    _pipeline: Pipeline | None = None
    _archive: Archive | None = None
    _release_lock: threading.Lock = field(default_factory=threading.Lock)

    def __getitem__(self, key: object) -> RestoredGraph:
        return self.graphs[str(key)]

    def __contains__(self, key: object) -> bool:
        return str(key) in self.graphs

    def wait(self) -> None:
        """Blocks until every graph is ready (background and lazy loads restore the rest now)."""
        for graph in self.graphs.values():
            graph.wait()
        self._finish_pipeline()

    def wait_for_modules(self) -> None:
        """Blocks until prefetch() has loaded every module (re-raising its failure, if any)."""
        if self._pipeline is not None:
            self._pipeline.wait_for_modules()

    def busy_seconds(self) -> dict[str, float]:
        """Seconds spent in each kind of task, summed over threads."""
        totals: dict[str, float] = {}
        for span in self.spans:
            totals[span.phase] = totals.get(span.phase, 0.0) + span.end - span.start
        return totals

    def release(self) -> None:
        """Stops pending work and destroys the executables, events and modules, and frees the
        claimed memory: afterwards the process is as before LOAD and may retry or capture."""
        with self._release_lock:
            self._finish_pipeline()
            for executable in self._executables:
                native.destroy_executable(executable)
            for graph in self._collective_graphs:
                native.destroy_graph(graph)
            for event in self._events:
                driver.cuEventDestroy(event)
            for module in self._modules:
                driver.cuModuleUnload(module)
            self._unclaim()
            for graph in self.graphs.values():
                graph._released()
            self.graphs.clear()
            self._executables, self._events, self._modules = [], [], []
            self._collective_graphs = []

    def _unclaim(self, since: int = 0) -> None:
        """Frees the memory claimed from the `since`-th claim on and gives it back to the driver
        too: the device then holds what it held before, and a fallback capture maps what it needs."""
        allocator = foundry_alloc.installed()
        claimed, self._claimed = self._claimed[since:], self._claimed[:since]
        if allocator is not None and claimed:
            for address, _ in claimed:
                allocator.free(address)
            allocator.trim(self._device, tuple({arena for _, arena in claimed}))

    def _finish_pipeline(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        if self._archive is not None:
            self._archive.close()
            self._archive = None


def check_fingerprint(saved: Fingerprint, current: Fingerprint) -> None:
    differences = [
        f"{name}: saved {getattr(saved, name)!r}, here {getattr(current, name)!r}"
        for name in _FINGERPRINT_FIELDS
        if getattr(saved, name) != getattr(current, name)
    ]
    if differences:
        raise FingerprintMismatchError(
            "the archive was saved for another setup and would not be valid here ("
            + "; ".join(differences)
            + "): save it again on this setup"
        )


def prefetch(path: str | Path, *, threads: int = DEFAULT_THREADS) -> Restored:
    """The part of LOAD that needs no engine state, started early (at process start, or while
    the engine loads its weights): opens the archive, checks the fingerprint, and on `threads`
    background threads loads every module, then builds and instantiates every graph that holds
    no collective node and whose memset and memcpy nodes name only the graph arena's memory,
    which it maps first (the engine never allocates there; the driver refuses those nodes on
    unmapped memory). Pass the result to load() at the restore point, which then checks the
    layout, claims the rest of the memory and restores the rest."""
    restored = Restored()
    try:
        with nvtx.annotate("foundry.prefetch", domain=NVTX_DOMAIN):
            _open(Path(path), restored, threads)
            restored._pipeline.load_all_modules()  # long before the restore point: all at once
            graph_memory = _claim_graph_memory(restored)
            restored._pipeline.build_early(graph_memory)
    except BaseException:
        restored.release()
        raise
    return restored


def load(
    archive: str | Path | Restored,
    *,
    mode: Mode = "eager",
    threads: int = DEFAULT_THREADS,
    upload: bool = False,
    communicator: Communicator | None = None,
) -> Restored:
    """Restores the graphs of an archive (a path, or what prefetch() returned, whose threads are
    then used). Call it at the restore point. `mode`: "eager" returns with every graph ready;
    "background" returns once memory is claimed and restores every graph meanwhile; "lazy"
    restores each graph at its first replay() or wait(). `upload` also copies each executable to
    the device before it counts as ready (otherwise its first launch does, as for a graph that
    torch captured). `communicator`: this rank's (e.g. an NcclCommunicator), for an archive of a
    tensor-parallel step; its rank count must be the archive's degree."""
    if mode not in ("eager", "background", "lazy"):
        raise ValueError(f"mode {mode!r}: choose eager, background or lazy")
    restored = archive if isinstance(archive, Restored) else Restored()
    if isinstance(archive, Restored) and (restored._pipeline is None or restored.graphs):
        # Loaded (in any mode) or released: loading again would claim the memory twice, and the
        # failure's clean-up would destroy the graphs already restored.
        raise RestoreError("this Restored was loaded or released already: prefetch() the archive again")
    try:
        with nvtx.annotate("foundry.load", domain=NVTX_DOMAIN):
            if not isinstance(archive, Restored):
                _open(Path(archive), restored, threads)
                _start_first_graph(restored)
            manifest = restored._archive.manifest
            check_communicator(manifest.tensor_parallel, len(manifest.collectives), communicator, str(restored._archive.path))
            _claim(restored, upload)
            if manifest.collectives:
                _bind_collectives(restored, communicator)
            if mode != "lazy":  # in serving order, each graph right after the modules it still needs
                for entry in serving_order(manifest.graphs):
                    restored._pipeline.graph(entry)
            if mode == "eager":
                with _phase(restored, "graphs"):
                    restored.wait()
    except BaseException:
        restored.release()
        raise
    return restored


@contextmanager
def _phase(restored: Restored, name: str) -> Iterator[None]:
    start = time.perf_counter()
    with nvtx.annotate(f"foundry.load.{name}", domain=NVTX_DOMAIN):
        yield
    restored.phases[name] = time.perf_counter() - start


def _open(path: Path, restored: Restored, threads: int) -> None:
    """Opens the archive, checks the fingerprint, creates the events and the pool of threads."""
    import torch

    allocator = foundry_alloc.installed()
    if allocator is None:
        raise RestoreError("LOAD needs the Foundry allocator with SAVE's range: call foundry_alloc.install() first")
    started = time.perf_counter()
    device = restored._device = torch.cuda.current_device()
    context = current_context(device)
    with _phase(restored, "open"):
        restored._archive = archive = Archive(path)
        manifest = archive.manifest
    with _phase(restored, "fingerprint"):
        check_fingerprint(manifest.fingerprint, current_fingerprint())
    restored._events = [call(driver.cuEventCreate, driver.CUevent_flags.CU_EVENT_DISABLE_TIMING) for _ in range(manifest.events)]
    restored._pipeline = Pipeline(archive, restored, threads, context, started)


def _start_first_graph(restored: Restored) -> None:
    """LOAD starts on the graph a server replays first (its smallest batch) at once: its modules
    load, and it is built and instantiated, while LOAD checks the layout and claims the memory.
    As for prefetch(), only where it needs no live state; where its memsets or memcpys name the
    graph arena alone, that arena is claimed first."""
    manifest = restored._archive.manifest
    if not manifest.graphs:
        return
    first = serving_order(manifest.graphs)[0]
    restored._pipeline.load_modules_for(first)
    table = restored._archive.blob(first.table)
    kinds = node_kinds(table)
    if not builds_early(kinds, first.copy_arenas, graph_memory_mapped=False):
        if not builds_early(kinds, first.copy_arenas, graph_memory_mapped=True) or not _claim_graph_memory(restored):
            return
    restored._pipeline.executable(first, table)


def _claim_graph_memory(restored: Restored) -> bool:
    """Claims the recorded graph-arena memory ahead of the layout check; False (nothing
    claimed) where SAVE's engine held graph-arena blocks of its own at the restore point, or
    where this process holds graph-arena memory in the way (the layout check then names it)."""
    manifest = restored._archive.manifest
    if any(block.arena == foundry_alloc.GRAPH for block in manifest.restore_layout.allocations):
        return False
    claimed = len(restored._claimed)
    with _phase(restored, "graph memory"):
        try:
            for segment in manifest.memory:
                if segment.arena == foundry_alloc.GRAPH:
                    _claim_segment(restored, segment)
        except foundry_alloc.InvalidRequestError:  # the range is not free
            restored._unclaim(since=claimed)
            return False
    return True


def _claim_segment(restored: Restored, segment: MemorySegment) -> None:
    foundry_alloc.installed().claim(segment.address, segment.size, segment.arena, restored._device)
    restored._claimed.append((segment.address, segment.arena))
    if segment.contents:
        data = restored._archive.blob(segment.contents)
        call(driver.cuMemcpyHtoD, segment.address, data, len(data))


def _claim(restored: Restored, upload: bool) -> None:
    """At the restore point: checks the live layout, claims the recorded memory (what prefetch
    did not) and writes its contents, and creates each graph's handle with its output views."""
    archive, pipeline, device = restored._archive, restored._pipeline, restored._device
    manifest = archive.manifest
    with _phase(restored, "layout"):
        early = {address for address, _ in restored._claimed}
        live = foundry_alloc.layout(device)
        live = live.model_copy(update={"allocations": tuple(a for a in live.allocations if a.address not in early)})
        diff = foundry_alloc.diff_layouts(manifest.restore_layout, live)
        if not diff.equal:
            raise LayoutMismatchError(
                "the engine's memory at the restore point differs from SAVE's, so the saved graphs' "
                "addresses would be wrong here. Rebuild the engine state exactly as in the SAVE run "
                "(same allocations, same order, same arenas):\n" + diff.render("SAVE", "here")
            )
    with _phase(restored, "memory"):
        for segment in manifest.memory:
            if segment.address not in early:
                _claim_segment(restored, segment)
        pipeline.upload = upload
        owned = _coalesce([(s.address, s.size) for s in manifest.memory] + [(a.address, a.size) for a in manifest.restore_layout.allocations])
        for entry in serving_order(manifest.graphs):  # wait() restores a lazy load's rest in this order
            outputs = {o.name: _tensor(o, owned) for o in entry.outputs}
            restored.graphs[entry.key] = RestoredGraph(entry.key, outputs, _requester(pipeline, entry))


def _bind_collectives(restored: Restored, communicator: Communicator) -> None:
    """A graph of each recorded collective on the live communicator (the builder clones it where
    the collective's node was). After _claim: the collectives' buffers must be mapped."""
    with _phase(restored, "collectives"):
        for spec in restored._archive.manifest.collectives:
            restored._collective_graphs.append(communicator.collective_graph(spec))
        restored._pipeline.bind_collectives(restored._collective_graphs)


def _requester(pipeline: Pipeline, entry: GraphEntry):  # noqa: ANN202 - () -> Future
    return lambda: pipeline.graph(entry)


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, size) ranges merged where they touch or overlap (a large tensor spans several mappings)."""
    merged: list[list[int]] = []
    for start, size in sorted(ranges):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], start + size - merged[-1][0])
        else:
            merged.append([start, size])
    return [(start, size) for start, size in merged]


def _tensor(output: OutputTensor, owned: list[tuple[int, int]]):  # noqa: ANN202 - torch.Tensor
    """A tensor viewing the recorded output buffer, which must lie in memory the engine or LOAD
    holds (an archive cannot make it view anything else)."""
    import torch

    dtype = getattr(torch, output.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ArchiveFormatError(f"output {output.name!r} has dtype {output.dtype!r}, which torch does not know")
    item = torch.empty((), dtype=dtype).element_size()
    extent = (1 + sum((n - 1) * s for n, s in zip(output.shape, output.stride))) * item if all(output.shape) else 0
    if extent and not any(start <= output.address and output.address + extent <= start + size for start, size in owned):
        raise ArchiveFormatError(
            f"output {output.name!r} at {output.address:#x} (+{extent}) lies outside the recorded memory: the archive is corrupted"
        )

    class _Buffer:
        __cuda_array_interface__ = {"shape": (extent,), "typestr": "|u1", "data": (output.address, False), "version": 3}

    raw = torch.as_tensor(_Buffer(), device="cuda")
    return raw.view(dtype).as_strided(output.shape, output.stride)

"""LOAD: rebuild the saved graphs in this process, at the addresses they were saved with.

    restored = foundry_trace.load("model.foundry")                     # every graph ready on return
    restored = foundry_trace.load("model.foundry", mode="background")  # returns once memory is claimed;
                                                                       # graphs become ready while serving
    restored = foundry_trace.load("model.foundry", mode="lazy")        # each graph at its first replay
    restored[8].replay(); logits = restored[8].outputs["logits"]
    restored.release()

    early = foundry_trace.prefetch("model.foundry")   # at start-up: modules load while weights do
    ...                                                # the engine builds its state
    restored = foundry_trace.load(early)               # at the restore point

Call load() at the restore point (the engine's state rebuilt as in the SAVE run). Order: open the
archive and check the fingerprint, queue the smallest batch's graph and its modules on a pool of
threads (pipeline.py); then check the live layout (refuse with the difference), claim the
recorded memory and write its contents, capture each recorded collective on the communicator
(tensor-parallel archives), and queue every other graph in serving order, each after the modules
it still needs (a lazy load: at its first replay). Any failure, in any mode and at any time,
releases everything the load made and raises. While load() and prefetch() run on the caller's
thread, Python's cyclic garbage collector is off (collection_deferred).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, NamedTuple

from cuda.bindings import driver

import foundry_alloc
from foundry_alloc.profiling import annotate
from foundry_trace._driver import call, current_context
from foundry_trace.archive.format import Archive
from foundry_trace.archive.keys import first_step, group_of, serving_order
from foundry_trace.archive.manifest import GraphEntry
from foundry_trace.archive.records import MemorySegment
from foundry_trace.archive.signing import TrustPolicy
from foundry_trace.errors import (
    LayoutMismatchError,
    RestoreError,
    RestoreTimeoutError,
    TensorParallelError,
    TrustSettingError,
)
from foundry_trace.fingerprint import check_fingerprint, current_fingerprint
from foundry_trace.parallel.collectives import Communicator, check_communicator
from foundry_trace.parallel.peer import PeerCommunicator
from foundry_trace.restore._outputs import coalesce, output_view
from foundry_trace.restore._pipeline import DEFAULT_BUILDERS, DEFAULT_CHUNK_NODES, Pipeline, Step, builds_early
from foundry_trace.restore._resources import LoadResources
from foundry_trace.restore.restored import Restored, RestoredGraph

Mode = Literal["eager", "background", "lazy"]
DEFAULT_THREADS = min(8, os.cpu_count() or 1)


def prefetch(
    path: str | Path, *, threads: int = DEFAULT_THREADS, builders: int = DEFAULT_BUILDERS, chunk_nodes: int = DEFAULT_CHUNK_NODES,
    digest: str | None = None, trusted_keys: Iterable[str | Path] | None = None,
) -> Restored:
    """Starts the part of LOAD that needs no engine state, early: at process start, or while the
    engine loads its weights. Needs the Foundry allocator installed; no CUDA context yet (it
    makes torch's primary context current).

    It opens the archive, checks the fingerprint, and on `threads` background threads loads
    every module, then builds and instantiates every graph that holds no collective node and
    whose memset and memcpy nodes name only the graph arena's memory, which it maps first (the
    engine never allocates there; the driver refuses those nodes on unmapped memory).

    Args:
        path: the archive.
        threads, builders, chunk_nodes, digest, trusted_keys: as for load().

    Returns:
        A Restored with no graphs yet: pass it to load() at the restore point, which checks the
        layout, claims the rest of the memory and restores the rest.

    Example:
        >>> early = foundry_trace.prefetch("model.foundry")   # first thing in the process
        >>> engine = build_engine()                            # meanwhile, modules load
        >>> restored = foundry_trace.load(early)               # at the restore point
    """
    schedule = _Schedule(threads, builders, chunk_nodes)
    with collection_deferred():
        restored = _open(Path(path), schedule, None, TrustPolicy.from_environment().with_arguments(digest, trusted_keys))
        try:
            with annotate("load.prefetch"):
                restored.pipeline.load_all_modules()  # long before the restore point: all at once
                restored.pipeline.build_early(_claim_graph_memory(restored), head=True)  # a server may replay before all are ready
        except BaseException:
            restored.release()
            raise
    return restored


def load(
    archive: str | Path | Restored,
    *,
    mode: Mode = "eager",
    threads: int = DEFAULT_THREADS,
    builders: int = DEFAULT_BUILDERS,
    chunk_nodes: int = DEFAULT_CHUNK_NODES,
    upload: bool = False,
    communicator: Communicator | None = None,
    timeout: float | None = None,
    digest: str | None = None,
    trusted_keys: Iterable[str | Path] | None = None,
) -> Restored:
    """Restores the graphs of an archive. Call it at the restore point: where the engine's
    state (weights, KV cache, static inputs, library workspaces) has been rebuilt exactly as in
    the SAVE run, with the Foundry allocator installed on the same range.

    Args:
        archive: the archive's path, or what prefetch() returned (whose threads are then used).
        mode: "eager" returns with every graph ready; "background" returns once memory is
            claimed and restores every graph meanwhile; "lazy" restores each graph at its first
            replay() or wait() (the smallest batch's starts at once).
        threads: worker threads for graphs (they release the GIL in the driver); modules load
            on one more.
        builders: graphs built at the same time (the driver serialises builds: more only slow
            the instantiations beside them).
        chunk_nodes: graphs are built, then instantiated, in chunks of at most this many nodes
            (built graphs wait in host memory, about 3 kB a node); no instantiation of a chunk
            starts before its builds are done; a larger graph is a chunk of its own. 0: each
            graph built and instantiated in one task. Each chunk is one call into the native
            runner, on `threads` threads of its own, with no Python and no GIL between its graphs.
            A background load (and prefetch()) first restores a head of at most a sixteenth of
            the archive's nodes after the first step: the batch sizes a server replays next.
        upload: also copy each executable to the device before it counts as ready (otherwise
            its first launch does, as for a graph that torch captured).
        communicator: this rank's, for an archive of a tensor-parallel step; its rank count
            must be the archive's degree. An archive SAVEd with a PeerCommunicator needs one
            connected to every rank, on the same window: the ranks agree that they restore the
            same archive before any memory is claimed, and (eager) that every rank finished.
        timeout: seconds an eager load may take at most (None: no limit). Past it, everything
            the load made is released and RestoreTimeoutError names the graph it waited for.
        digest: "sha256:<hex>": restore only the archive with this digest, as well as what
            FOUNDRY_ARCHIVE_DIGEST pins (another digest there: TrustSettingError). `foundry
            inspect` and SAVE print it.
        trusted_keys: public key files (or folders of *.pub), added to FOUNDRY_TRUSTED_KEYS's:
            restore only archives signed by one of them. Never empty ([] or "" is a
            TrustSettingError; None adds none). Checked, like the digest, right after the
            manifest is read, before any byte of the archive reaches the driver. For a
            prefetch()'s result, both must ask for no more than its own check made.

    Returns:
        The Restored graphs by key: `restored[8].replay()`, `restored[8].outputs["logits"]`,
        `restored.release()`.

    Raises:
        UntrustedArchiveError, FingerprintMismatchError, LayoutMismatchError (with the diff),
        TensorParallelError, ArchiveFormatError, DriverCallError, RestoreError: each after
        releasing everything.

    Example:
        >>> foundry_alloc.install()
        >>> engine = build_engine()                        # the same allocations as at SAVE
        >>> restored = foundry_trace.load("model.foundry")
        >>> restored[8].replay(); logits = restored[8].outputs["logits"]
    """
    if mode not in ("eager", "background", "lazy"):
        raise ValueError(f"mode {mode!r}: choose eager, background or lazy")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout={timeout}: give a positive number of seconds, or None")
    deadline = None if timeout is None else time.monotonic() + timeout
    with collection_deferred():
        if isinstance(archive, Restored):
            restored = archive
            _check_prefetched(restored, digest, trusted_keys)
        else:
            policy = TrustPolicy.from_environment().with_arguments(digest, trusted_keys)
            restored = _open(Path(archive), _Schedule(threads, builders, chunk_nodes), communicator, policy)
        restored.begin_load(communicator)
        _restore(restored, isinstance(archive, Restored), mode, upload, communicator, deadline, timeout)
    return restored


def _check_prefetched(restored: Restored, digest: str | None, trusted_keys: Iterable[str | Path] | None) -> None:
    """A prefetch() loaded the archive's modules under the policy it was given: load() may ask
    for no check that one did not make (the modules already reached the driver), and the check
    it asks for is run again on the open archive. Refused, or given a bad setting: the prefetch
    is released, as after any failed load()."""
    try:
        policy = TrustPolicy.from_environment().with_arguments(digest, trusted_keys)
        if not restored.policy.covers(policy):
            raise TrustSettingError(
                f"load() asks for {policy.describe()}, but prefetch() checked {restored.policy.describe()} before loading "
                f"{restored.archive.path}'s modules: give prefetch() the same digest= and trusted_keys= (or set "
                "FOUNDRY_ARCHIVE_DIGEST / FOUNDRY_TRUSTED_KEYS before it runs)"
            )
        policy.check(restored.archive)
    except BaseException:
        restored.release()
        raise


def _restore(
    restored: Restored, prefetched: bool, mode: Mode, upload: bool, communicator: Communicator | None, deadline: float | None,
    timeout: float | None,
) -> None:
    """load() past the open: the communicator checked, the graphs that can start early, the
    claim, the queue, and (eager) the wait."""
    try:
        with annotate("load"):
            manifest = restored.archive.manifest
            path = str(restored.archive.path)
            check_communicator(manifest.tensor_parallel, len(manifest.collectives), communicator, path, manifest.peer_window)
            if not prefetched:
                with _phase(restored, "first graphs"):
                    _start_early_graphs(restored, every=mode != "lazy", head=mode == "background")
            peers = communicator if manifest.peer_window is not None and manifest.tensor_parallel > 1 else None
            if peers is not None:
                peers.hold(restored)
                with _phase(restored, "agree"):
                    _agree_on_archive(peers, restored.archive.digest, path)
            _claim(restored, upload)
            if manifest.collectives:
                _bind_collectives(restored, communicator)
            if mode != "lazy":  # in serving order, each chunk right after the modules it still needs
                with _phase(restored, "queue"):
                    ordered = serving_order(manifest.graphs)
                    restored.pipeline.queue(ordered, head=mode == "background")
                    if upload:
                        for entry in ordered:
                            restored.pipeline.graph(entry)  # queues its upload
            if mode == "eager":
                with _phase(restored, "graphs"):
                    _wait_until(restored, deadline, timeout)
                if peers is not None:  # a rank that died while restoring stops every rank here
                    with _phase(restored, "agree"):
                        peers.agree("the end of LOAD", b"")
    except BaseException:
        restored.release(wait=deadline is None or time.monotonic() < deadline)
        raise


@contextmanager
def collection_deferred() -> Iterator[None]:
    """Python's cyclic garbage collector off while LOAD's own thread runs (automatic collection
    is restored after, where it was on; nothing is collected meanwhile, only later). LOAD
    allocates many objects while its background threads restore: that starts a full
    collection, which in a serving process (800k objects) holds the GIL for 0.1 s, and every
    thread that needs the GIL to hand the next module or chunk to the driver waits it out (on
    the H200, one such pause in every cold LOAD of the 2,211 piecewise graphs, also with the
    switch interval at 0.5 ms)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _wait_until(restored: Restored, deadline: float | None, timeout: float | None) -> None:
    """Waits for every graph, raising RestoreTimeoutError (after releasing) past the deadline."""
    for graph in list(restored.graphs.values()):
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            graph.wait(remaining)
        except RestoreTimeoutError:
            raise RestoreTimeoutError(
                f"LOAD did not finish within {timeout:.0f} s: graph {graph.key!r} was still restoring; everything the load "
                "made was released (a worker stuck in the driver is abandoned): load again or capture natively"
            ) from None
    restored.wait()


@contextmanager
def _phase(restored: Restored, name: str) -> Iterator[None]:
    start = time.perf_counter()
    with annotate(f"load.{name}"):
        yield
    restored.phases[name] = time.perf_counter() - start


class _Schedule(NamedTuple):
    """How the pipeline runs (load()'s arguments of that name)."""

    threads: int
    builders: int
    chunk_nodes: int


def _open(path: Path, schedule: _Schedule, communicator: Communicator | None, policy: TrustPolicy) -> Restored:
    """Opens the archive, checks the trust policy and the fingerprint, creates the events and the
    pool of threads."""
    import torch

    if foundry_alloc.installed() is None:
        raise RestoreError("LOAD needs the Foundry allocator with SAVE's range: call foundry_alloc.install() first")
    started = time.perf_counter()
    device = torch.cuda.current_device()
    context = current_context(device)
    opened = time.perf_counter()
    archive = Archive(path)
    phases = {"open": time.perf_counter() - opened}
    resources = LoadResources(device, communicator)
    try:
        policy.check(archive)  # before anything of the archive reaches the driver
        checked = time.perf_counter()
        with annotate("load.fingerprint"):
            check_fingerprint(archive.manifest.fingerprint, current_fingerprint())
        phases["fingerprint"] = time.perf_counter() - checked
        for _ in range(archive.manifest.events):
            resources.add_event(int(call(driver.cuEventCreate, driver.CUevent_flags.CU_EVENT_DISABLE_TIMING)))
        pipeline = Pipeline(
            archive, resources, threads=schedule.threads, chunk_nodes=schedule.chunk_nodes,
            builders=schedule.builders,
            context=context, started=started,
        )
    except BaseException:
        resources.release()
        archive.close()
        raise
    restored = Restored(archive, resources, pipeline, policy)
    restored.phases.update(phases)
    return restored


def _start_early_graphs(restored: Restored, every: bool, head: bool) -> None:
    """LOAD starts on the graphs a server replays first (its smallest batch: one graph, or all
    the pieces of that step) at once: their modules load, and they are built and instantiated,
    while LOAD checks the layout, agrees with its peers and claims the memory. With `every`
    (an eager or background LOAD, which restores every graph anyway), the other graphs follow
    them in serving order, so that no worker idles meanwhile (with `head`, a background LOAD's,
    the next batch sizes first, a chunk of their own: _pipeline.HEAD_SHARE). As for prefetch(),
    only graphs that need no live state; where their memsets or memcpys name the graph arena
    alone, that arena is claimed first. Where the first step cannot start, nothing does: no
    other graph may queue ahead of it."""
    graphs = restored.archive.manifest.graphs
    first = first_step(graphs)
    if not first:
        return
    restored.pipeline.load_modules_for(first)
    mapped = False
    if not all(builds_early(e, graph_memory_mapped=False) for e in first):
        if not all(builds_early(e, graph_memory_mapped=True) for e in first) or not _claim_graph_memory(restored):
            return
        mapped = True
    restored.pipeline.queue(first)
    if not every:
        return
    if not mapped and any(not builds_early(e, graph_memory_mapped=False) and builds_early(e, graph_memory_mapped=True) for e in graphs):
        mapped = _claim_graph_memory(restored)
    restored.pipeline.build_early(mapped, head)  # in serving order; the first step's, queued already, are skipped


def _claim_graph_memory(restored: Restored) -> bool:
    """Claims the recorded graph-arena memory ahead of the layout check; False (nothing
    claimed) where SAVE's engine held graph-arena blocks of its own at the restore point, or
    where this process holds graph-arena memory in the way (the layout check then names it)."""
    manifest = restored.archive.manifest
    if any(block.arena == foundry_alloc.GRAPH for block in manifest.restore_layout.allocations):
        return False
    claims = restored.resources.claims
    with _phase(restored, "graph memory"):
        try:
            for segment in manifest.memory:
                if segment.arena == foundry_alloc.GRAPH:
                    _claim_segment(restored, segment)
        except foundry_alloc.InvalidRequestError:  # the range is not free
            restored.resources.unclaim(since=claims)
            return False
    return True


def _claim_segment(restored: Restored, segment: MemorySegment) -> None:
    foundry_alloc.installed().claim(segment.address, segment.size, segment.arena, restored.device)
    restored.resources.add_claim(segment.address, segment.size, segment.arena)
    if segment.contents:
        data = restored.archive.blob(segment.contents)
        call(driver.cuMemcpyHtoD, segment.address, data, len(data))


def _claim(restored: Restored, upload: bool) -> None:
    """At the restore point: checks the live layout, claims the recorded memory (what prefetch
    did not) and writes its contents, and creates each graph's handle with its output views."""
    archive, pipeline = restored.archive, restored.pipeline
    manifest = archive.manifest
    with _phase(restored, "layout"):
        early = restored.resources.claimed_addresses()
        live = foundry_alloc.layout(restored.device)
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
    with _phase(restored, "outputs"):  # apart from "memory": torch holds the GIL while it makes the views
        pipeline.upload = upload
        owned = coalesce([(s.address, s.size) for s in manifest.memory] + [(a.address, a.size) for a in manifest.restore_layout.allocations])
        groups: dict[str, list[GraphEntry]] = {}
        for entry in serving_order(manifest.graphs):  # wait() restores a lazy load's rest in this order
            groups.setdefault(group_of(entry.key), []).append(entry)
        for step in groups.values():
            request = Step(pipeline, step)
            for entry in step:
                outputs = {o.name: output_view(o, owned) for o in entry.outputs}
                restored.graphs[entry.key] = RestoredGraph(entry, outputs, request, restored.release, device=restored.device)


def _bind_collectives(restored: Restored, communicator: Communicator) -> None:
    """A graph of each recorded collective on the live communicator (the builder clones it where
    the collective's node was). After _claim: the collectives' buffers must be mapped."""
    with _phase(restored, "collectives"):
        graphs = []
        for spec in restored.archive.manifest.collectives:
            graph = communicator.collective_graph(spec)
            restored.resources.add_collective_graph(graph)
            graphs.append(graph)
        restored.pipeline.bind_collectives(graphs)


def _agree_on_archive(communicator: PeerCommunicator, digest: str, path: str) -> None:
    """Every rank restores the same archive (its graphs address every rank's buffers alike):
    checked before any memory is claimed; a rank that left or does not come raises StallError
    on every rank."""
    digests = [d.decode(errors="replace") for d in communicator.agree("LOAD's archive", digest.encode())]
    others = {rank: d for rank, d in enumerate(digests) if d != digest}
    if others:
        shown = ", ".join(f"rank {rank} sha256:{d[:16]}" for rank, d in sorted(others.items()))
        raise TensorParallelError(
            f"rank {communicator.rank} of {communicator.world_size} loads {path} (sha256:{digest[:16]}), but {shown}: "
            "every rank must restore the same archive"
        )

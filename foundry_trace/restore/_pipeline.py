"""The work of LOAD after the checks, as tasks on a pool of threads: load each module (with its
variables and functions), then for each graph build, instantiate (and upload) it, each task
once, a graph only after the modules its kernels come from.

Graphs are queued in chunks of at most `chunk_nodes` nodes, in the order asked (serving order):
the chunk's modules, then all its builds, then, once they are done, all its instantiations
(_chunk.py). The driver serialises much of both kinds of call, and a build beside instantiations
runs several times slower than alone: by default (DEFAULT_CHUNK_NODES) every graph after the
first step's is one chunk, the driver alone's own order; where a server replays graphs while
LOAD restores the others (background, prefetch), a head of the archive's next sixteenth of nodes
(HEAD_SHARE) comes first, a chunk of its own. The chunk bounds the host memory held by built
graphs that wait for their instantiation (about 3 kB a node). By default
(`native_chunks`) a chunk is one call into the native runner (csrc/chunk_restore.cpp), which does
the same on threads of its own without returning to Python between graphs; chunks run side by
side while threads are free, their builds through one gate of `builders`. With
native_chunks=False, Python workers run them (PipelineHooks reach into those).

prefetch() also builds and instantiates, before the restore point, every graph whose nodes hold
addresses only as values (kernels, events, child graphs): an executable does not care whether
the memory its kernels will touch is mapped yet. The driver does check the memory of memset and
memcpy nodes, so a graph holding them is built early only where they name the graph arena alone
and prefetch mapped it; graphs with collective nodes wait for the restore point.

Modules are queued before any graph that needs them, largest first: by prefetch(), all of them
when the archive is opened (the engine's start leaves them time), the first step's as a batch
ahead of the others so that its graphs need not wait for every module; by load(), each chunk's just
before it, in serving order, so that the first graphs build while the modules of the later ones
load. They load on one thread of their own, one at a time: the driver serialises module loads.
The modules queued together (a chunk's, the first step's, or the rest of prefetch()'s) are one batch,
loaded in one native call (_modules.py), so the module thread does not wait for the GIL between
modules while LOAD's main thread runs Python; their graphs wait for the whole batch, as a chunk
waits for all its modules anyway. load() queues the smallest batch's
graphs and their modules at open, so that they restore while LOAD claims the memory. The pool
takes tasks in order and the module thread waits for nothing, so the pool cannot deadlock. The
driver calls release the GIL (cuda.bindings, and ctypes for the native builder), so the threads
work in parallel, with at most `builders` graphs built at a time. Every handle is
recorded in the load's resources (resources.py) the moment it exists, so that a failure
anywhere leaves nothing behind once the load is released.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from cuda.bindings import driver

from foundry_alloc.profiling import annotate
from foundry_trace import _native as native
from foundry_trace._driver import call
from foundry_trace.archive.format import Archive
from foundry_trace.archive.keys import first_step, serving_order
from foundry_trace.archive.manifest import GraphEntry
from foundry_trace.archive.records import FunctionRecord
from foundry_trace.errors import DriverCallError, RestoreError
from foundry_trace.restore._chunk import Chunk, settle
from foundry_trace.restore._modules import load_modules
from foundry_trace.restore._probing import PipelineHooks
from foundry_trace.restore._probing import current as current_probe
from foundry_trace.restore._resources import LoadResources

# Graphs LOAD builds at once, across all its chunks (one gate): the driver serialises builds, and
# a build beside instantiations slows both. Why 1: docs/measurements.md, "The pipeline's defaults".
DEFAULT_BUILDERS = 1

# Nodes of the graphs built before their instantiations start (one chunk), by default: all builds,
# then all instantiations, is the driver alone's own order and the fastest measured; the cap bounds
# the host memory that built graphs hold while they wait (about 3 kB a node, so about 3 GB).
# Why 1,048,576: docs/measurements.md, "The pipeline's defaults".
DEFAULT_CHUNK_NODES = 1 << 20

# A LOAD that serves while it restores (background, prefetch) queues its graphs with a head chunk
# of at most this share (1/HEAD_SHARE) of the archive's nodes first, in serving order, restored
# before the rest are built: a server replays those next (vLLM's 67 batch sizes: the next four),
# and one chunk of all made them wait for every build. An eager LOAD, which waits for all, keeps
# one chunk. Why 16: docs/measurements.md, "The pipeline's defaults".
HEAD_SHARE = 16


@dataclass(frozen=True)
class Span:
    """One task of LOAD, for the phase report and the timeline."""

    what: str  # e.g. "module 3", "graph 8"
    phase: str  # module, build, instantiate or upload
    worker: str
    start: float  # seconds since LOAD began
    end: float


class Pipeline:
    """The tasks of one LOAD on a pool of `threads` threads, at most `builders` graphs built at
    a time, graphs queued in chunks of at most `chunk_nodes` nodes (where asked, a head of at
    most 1/HEAD_SHARE of the archive's nodes first); every handle goes to `resources` the moment
    it exists."""

    def __init__(
        self, archive: Archive, resources: LoadResources, *, threads: int, builders: int, chunk_nodes: int, context: int,
        started: float, hooks: PipelineHooks | None = None, native_chunks: bool | None = None,
    ) -> None:
        probe = current_probe()  # the harness's seam (_probing.py); its defaults change nothing
        hooks = hooks if hooks is not None else probe.hooks
        native_chunks = probe.native_chunks if native_chunks is None else native_chunks
        if any(not isinstance(value, int) or isinstance(value, bool) for value in (threads, builders, chunk_nodes)):
            raise ValueError(f"threads={threads!r}, builders={builders!r}, chunk_nodes={chunk_nodes!r}: give each as a whole number")
        if threads < 1 or builders < 1:
            raise ValueError(f"threads={threads}, builders={builders}: a LOAD needs at least one of each")
        if chunk_nodes < 0:
            raise ValueError(f"chunk_nodes={chunk_nodes}: give 0 (each graph built and instantiated in one task) or more")
        if hooks is not None and native_chunks:
            raise ValueError("PipelineHooks step into the Python workers: pass native_chunks=False with them")
        self.archive = archive
        self.context = context
        self.upload = False  # set at the restore point, before any graph is requested
        self.spans: list[Span] = []
        self._chunk_nodes = chunk_nodes
        self._manifest = archive.manifest
        self._resources = resources
        self._started = started
        self._hooks = hooks or PipelineHooks()
        self._lock = threading.Lock()
        self._spans_lock = threading.Lock()
        self._threads = threads
        self._chunks: list[Chunk] = []
        self._modules: dict[int, Future] = {}
        self._graphs: dict[str, Future] = {}  # executables
        self._uploads: dict[str, Future] = {}
        self._functions_of: dict[int, list[int]] = {}
        for number, function in enumerate(self._manifest.functions):
            self._functions_of.setdefault(function.module, []).append(number)
        self._handles = native.Handles([0] * len(self._manifest.functions), resources.events)
        self.builders = builders  # the cap in force, for reports
        self.chunk_nodes = chunk_nodes  # the chunk in force, for reports
        self._builders = threading.BoundedSemaphore(builders)
        self._build_gate = native.BuildGate(builders) if native_chunks else None  # the same cap, natively
        # With native_chunks, each chunk is one call into the native runner on threads of its own,
        # as many as it has graphs up to `threads`; calls run side by side while the native
        # threads they use add up to `threads` at most.
        self._native_chunks = native_chunks
        self._native_free = threading.Condition()
        self._native_threads_free = threads
        self._native_tickets = 0  # one a chunk, in the order queued
        self._native_turn = 0  # the ticket whose call starts next
        self._chunk_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="foundry-chunks", initializer=self._start_worker)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="foundry-load", initializer=self._start_worker)
        # Modules load on a thread of their own, a batch at a time (see the module's docstring).
        self._module_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foundry-modules", initializer=self._start_worker)

    def _start_worker(self) -> None:
        call(driver.cuCtxSetCurrent, driver.CUcontext(self.context))  # worker threads start without one
        self._hooks.worker_started()

    def queued_graphs(self) -> list[str]:
        """Keys of the graphs queued so far."""
        with self._lock:
            return list(self._graphs)

    def load_all_modules(self) -> None:
        """Queues every module the graphs use: the first step's as a batch of their own (its
        graphs wait for those only, not for every module), then the others, largest first."""
        self.load_modules_for(first_step(self._manifest.graphs))
        self._queue_modules({m for entry in self._manifest.graphs for m in entry.modules})

    def load_modules_for(self, entries: Sequence[GraphEntry]) -> None:
        """Queues the modules these graphs need, as one batch (one native call)."""
        self._queue_modules({m for entry in entries for m in entry.modules})

    def _queue_modules(self, modules: set[int]) -> None:
        with self._lock:
            self._queue_modules_locked(modules)

    def _queue_modules_locked(self, modules: set[int]) -> None:
        fresh = sorted(modules - self._modules.keys(), key=lambda m: -self._manifest.modules[m].size)
        if not fresh:
            return
        futures: list[Future] = [Future() for _ in fresh]
        task = self._module_pool.submit(self._settle_modules, fresh, futures)  # refused after close(): nothing recorded
        task.add_done_callback(functools.partial(_settle_unrun, futures))
        self._modules.update(zip(fresh, futures, strict=True))

    def bind_collectives(self, graphs: list[int]) -> None:
        """The collective graphs by archive index; set before any graph that holds a collective
        node is queued (prefetch() queues only graphs without one)."""
        self._handles.set_collectives(graphs)

    def wait_for_modules(self) -> None:
        """Blocks until every queued module is loaded (re-raising a failure)."""
        with self._lock:
            futures = list(self._modules.values())
        for future in futures:
            future.result()

    def build_early(self, graph_memory_mapped: bool, head: bool) -> None:
        """Queues every graph that needs no live state (see the module's docstring), smallest
        batch first: a server's first requests come one or a few at a time, and a lazy LOAD's
        first replay would otherwise wait behind the largest graphs. The first step's go alone,
        ahead of the others (with `head`, a head first: see queue())."""
        early = [entry for entry in serving_order(self._manifest.graphs) if builds_early(entry, graph_memory_mapped)]
        first = {entry.key for entry in first_step(self._manifest.graphs)}
        self.queue([entry for entry in early if entry.key in first])
        self.queue(early, head=head)

    def graph(self, entry: GraphEntry) -> Future:
        """The future of a graph ready to replay: its executable, then uploaded if LOAD asked."""
        executable = self.executable(entry)
        if not self.upload:
            return executable
        with self._lock:
            future = self._uploads.get(entry.key)
            if future is None:
                future = self._uploads[entry.key] = self._pool.submit(self._upload, entry, executable)
            return future

    def executable(self, entry: GraphEntry) -> Future:
        """The future executable of a graph, queued the first time (alone, right after the
        modules it needs that are not queued yet)."""
        self.queue([entry])
        with self._lock:
            return self._graphs[entry.key]

    def queue(self, entries: Sequence[GraphEntry], head: bool = False) -> None:
        """Queues those of the graphs not queued yet, in this order, in chunks (see the module's
        docstring): chunks of at most `chunk_nodes`, the first of at most 1/HEAD_SHARE of the
        archive's nodes with `head`; each chunk right after the modules it needs that are not
        queued yet."""
        with self._lock:
            fresh = list({entry.key: entry for entry in entries if entry.key not in self._graphs}.values())
            head_nodes = sum(entry.nodes for entry in self._manifest.graphs) // HEAD_SHARE if head else None
            for entries_of_chunk in chunks(fresh, self._chunk_nodes, head_nodes):
                chunk = Chunk(entries_of_chunk)
                self._queue_modules_locked({m for entry in chunk.entries for m in entry.modules})
                for entry, future in zip(chunk.entries, chunk.executables, strict=True):
                    self._graphs[entry.key] = future
                self._chunks.append(chunk)
                if self._native_chunks:
                    self._chunk_pool.submit(self._run_chunk_natively, chunk, self._native_tickets)
                    self._native_tickets += 1
                    continue
                for _ in range(min(self._threads, len(chunk.entries))):
                    self._pool.submit(self._run_chunk, chunk)

    def close(self, wait: bool = True) -> None:
        """Stops the chunks and cancels queued tasks and, with `wait`, waits for running ones
        (their handles are then recorded). Without it, a task stuck in the driver is abandoned
        (LOAD's time-out). Graphs not restored by then are cancelled."""
        with self._lock:
            queued = list(self._chunks)
            modules = list(self._modules.values())
        for chunk in queued:
            chunk.stop()
        for future in modules:
            future.cancel()  # those whose batch has not started; a started batch settles its own
        with self._native_free:
            self._native_free.notify_all()  # native chunks waiting for their turn leave
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self._chunk_pool.shutdown(wait=wait, cancel_futures=True)
        self._module_pool.shutdown(wait=wait, cancel_futures=True)

    @contextmanager
    def _span(self, what: str, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        with annotate(f"load.{phase} {what}"):
            yield
        end = time.perf_counter()
        self._record(Span(what, phase, threading.current_thread().name, start - self._started, end - self._started))

    def _record(self, span: Span) -> None:
        with self._spans_lock:  # not self._lock, which queue() holds while it queues
            self.spans.append(span)

    def _settle_modules(self, indices: list[int], futures: list[Future]) -> None:
        """The module thread's task for one batch: loads those of its modules not cancelled
        (close()) and settles each one's future; after a failure the modules behind it load on,
        so a lazy LOAD loses only the graphs of the failed module."""
        pending = [(index, future) for index, future in zip(indices, futures, strict=True) if future.set_running_or_notify_cancel()]
        try:
            while pending:
                loaded, failure = self._load_modules([index for index, _ in pending])
                for _, future in pending[:loaded]:
                    future.set_result(None)
                if failure is None:
                    return
                pending[loaded][1].set_exception(failure)
                pending = pending[loaded + 1 :]
        except BaseException as error:  # no future may stay pending: graphs wait on them
            for _, future in pending:
                if not future.done():
                    future.set_exception(error)
            raise

    def _load_modules(self, indices: list[int]) -> tuple[int, BaseException | None]:
        """Loads the modules in order in one native call, until one fails: how many loaded, and
        why the next did not."""
        with annotate(f"load.modules {len(indices)}"):
            batch = load_modules(self.archive, indices, self._functions_for, self.context, self._resources)
        for index, loaded in zip(indices, batch.loaded, strict=False):
            for number, handle, param_bytes in zip(self._functions_of.get(index, []), loaded.functions, loaded.param_bytes, strict=True):
                self._handles.functions[number] = handle
                self._handles.param_bytes[number] = param_bytes  # checked at each build
            start, end = loaded.times
            self._record(Span(f"module {index}", "module", "modules", start - self._started, end - self._started))
        return len(batch.loaded), batch.failure

    def _functions_for(self, index: int) -> list[FunctionRecord]:
        return [self._manifest.functions[n] for n in self._functions_of.get(index, [])]

    def build(self, entry: GraphEntry) -> int:
        """Builds a graph's CUgraph (its modules must be loaded); the caller destroys it."""
        with self._span(f"graph {entry.key}", "build"):
            table, payload = self.archive.graph_blobs(entry)
            try:
                return native.build_graph(table, payload, self._handles, self.context, f"graph {entry.key!r}")
            except DriverCallError as error:
                raise DriverCallError(self._name_function(str(error))) from None

    def instantiate(self, graph: int, what: str) -> int:
        """Instantiates a built CUgraph; the caller owns (and destroys) the executable."""
        with self._hooks.around_instantiate():
            return native.instantiate(graph, self.context, what)

    def function_handle(self, index: int) -> int:
        """The CUfunction of the archive's function `index` (0 until its module is loaded): for
        tools that set a kernel node of an executable themselves (probes/exec_update.py sets the
        nodes of one graph's executable to another graph's parameters)."""
        return int(self._handles.functions[index])

    def _name_function(self, message: str) -> str:
        """Adds the kernel's name to a refusal that names a function index."""
        found = re.search(r"kernel function (\d+)", message)
        if found and int(found.group(1)) < len(self._manifest.functions):
            message = message.replace(found.group(0), f"kernel {self._manifest.functions[int(found.group(1))].name}")
        return message

    def _run_chunk(self, chunk: Chunk) -> None:
        """One runner of a chunk (chunk.py): builds while there are builds to take, then
        instantiates while there are instantiations to take."""
        while (index := chunk.take_build()) is not None:
            entry = chunk.entries[index]
            try:
                chunk.built(index, self._build(entry))
            except BaseException as error:  # the graph's instantiation raises it
                chunk.built(index, None, error)
        while (index := chunk.take_instantiation()) is not None:
            graph, error = chunk.wait_built(index)
            if error is None:
                try:
                    settle(chunk.executables[index], self._instantiate(chunk.entries[index], graph))
                    continue
                except BaseException as failure:
                    error = failure
            settle(chunk.executables[index], error=error)

    def _run_chunk_natively(self, chunk: Chunk, ticket: int) -> None:
        """A whole chunk in one call into the native runner (native.restore_chunk), once its
        modules are loaded; calls start in the order the chunks were queued (`ticket`).
        PipelineHooks do not reach inside it."""
        blobs, names, indices = [], [], []
        for index, entry in enumerate(chunk.entries):
            try:
                self._wait_for_modules_of(entry)
                blobs.append((self.archive.locate(entry.table), self.archive.locate(entry.payload)))  # read by the native call
            except BaseException as error:  # this graph fails; the others are restored
                settle(chunk.executables[index], error=error)
                continue
            names.append(f"graph {entry.key!r}")
            indices.append(index)
        wanted = max(1, min(self._threads, len(blobs)))
        with self._native_free:
            self._native_free.wait_for(lambda: chunk.stopped or (self._native_turn == ticket and self._native_threads_free >= wanted))
            if chunk.stopped:  # close(): chunks queued before this one may never run
                return
            self._native_turn += 1
            self._native_threads_free -= wanted
            self._native_free.notify_all()
        try:
            if not blobs:
                return
            with annotate(f"load.chunk {len(blobs)} graphs"):
                outcomes = native.restore_chunk(self.archive.fileno(), blobs, names, self._handles, self.context, wanted, self._build_gate)
        except BaseException as error:  # no driver: every graph of the chunk fails with it
            for index in indices:
                settle(chunk.executables[index], error=error)
            return
        finally:
            with self._native_free:
                self._native_threads_free += wanted
                self._native_free.notify_all()
        for index, outcome in zip(indices, outcomes, strict=True):
            if outcome.executable:
                self._resources.add_executable(outcome.executable)
            key = chunk.entries[index].key
            for phase, times in (("build", outcome.build), ("instantiate", outcome.instantiate)):
                if times is not None:
                    self._record(Span(f"graph {key}", phase, "native", times[0] - self._started, times[1] - self._started))
            error = outcome.error
            if isinstance(error, DriverCallError):
                error = DriverCallError(self._name_function(str(error)))
            settle(chunk.executables[index], outcome.executable, error)

    def _wait_for_modules_of(self, entry: GraphEntry) -> None:
        for module in entry.modules:
            self._modules[module].result()  # queued before the graph; re-raises its failure

    def _build(self, entry: GraphEntry) -> int:
        self._wait_for_modules_of(entry)
        with self._builders, self._hooks.around_build():
            graph = self.build(entry)
        self._resources.add_built_graph(graph)
        return graph

    def _instantiate(self, entry: GraphEntry, graph: int) -> int:
        if not self._resources.take_built_graph(graph):
            raise RestoreError(f"graph {entry.key!r}: the load was released while it was restoring")
        try:
            with self._span(f"graph {entry.key}", "instantiate"):
                executable = self.instantiate(graph, f"graph {entry.key!r}")
        finally:
            self._resources.destroy_built_graph(graph)
        self._resources.add_executable(executable)
        return executable

    def _upload(self, entry: GraphEntry, executable: Future) -> int:
        handle = executable.result()  # queued before this task: running or done
        with self._span(f"graph {entry.key}", "upload"):
            native.upload(handle, self.context, f"graph {entry.key!r}")
        return handle


def _settle_unrun(futures: list[Future], task: Future) -> None:
    """Settles the modules of a batch whose task never ran, which graphs would otherwise wait
    on for ever: cancelled where the module pool's shutdown cancelled it (a batch queued while
    close() ran), failed with the pool's error where the module thread could not start."""
    if task.cancelled():
        for future in futures:
            future.cancel()
        return
    error = task.exception()
    if error is not None:  # where _settle_modules ran and raised, it settled them all itself
        for future in futures:
            with suppress(InvalidStateError):
                future.set_exception(error)


def chunks(entries: Sequence[GraphEntry], chunk_nodes: int, head_nodes: int | None = None) -> Iterator[list[GraphEntry]]:
    """The entries in order, cut into runs of at most `chunk_nodes` nodes, the first of at most
    `head_nodes` where that is less (a larger graph alone; with 0, every graph alone)."""
    cap = chunk_nodes if head_nodes is None else min(head_nodes, chunk_nodes)
    chunk: list[GraphEntry] = []
    nodes = 0
    for entry in entries:
        if chunk and nodes + entry.nodes > cap:
            yield chunk
            chunk, nodes, cap = [], 0, chunk_nodes
        chunk.append(entry)
        nodes += entry.nodes
    if chunk:
        yield chunk


def builds_early(entry: GraphEntry, graph_memory_mapped: bool) -> bool:
    """Whether LOAD builds the graph before the restore point, as SAVE decided (entry.early,
    from its node kinds): "always", or "graph_memory" once the graph arena is mapped. An entry
    of an archive saved before SAVE decided it (None) waits for the restore point."""
    return entry.early == "always" or (graph_memory_mapped and entry.early == "graph_memory")


class Step:
    """The first use of any graph of a step (every piece of one batch size's step) queues the
    whole step, in order, once; each graph then waits for its own. A lazy load thus restores
    whole steps, and an eager wait over N pieces costs N calls into the pipeline, not N squared."""

    def __init__(self, pipeline: Pipeline, step: list[GraphEntry]) -> None:
        self.pipeline = pipeline
        self.step = step
        self.queued = False  # a race only queues twice: Pipeline.graph() is idempotent

    def request(self, entry: GraphEntry) -> Future:
        if not self.queued:
            self.queued = True
            self.pipeline.queue(self.step)
            for other in self.step:
                self.pipeline.graph(other)  # its upload, where asked
        return self.pipeline.graph(entry)

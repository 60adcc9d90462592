"""What LOAD hands back: the restored graphs by key, ready to replay on a torch stream, and the
handle that releases everything the load made."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator

from cuda.bindings import driver

from foundry_trace._driver import SUCCESS, raise_failure
from foundry_trace.archive.format import Archive
from foundry_trace.archive.keys import group_of
from foundry_trace.archive.manifest import GraphEntry
from foundry_trace.archive.signing import TrustPolicy
from foundry_trace.errors import FoundryTraceError, GraphReleasedError, RestoreError, RestoreTimeoutError
from foundry_trace.restore._pipeline import Pipeline, Span, Step
from foundry_trace.restore._resources import LoadResources, ReleaseSummary


class RestoredGraph:
    """One restored graph: replay() launches it; `outputs` are views of its recorded output
    buffers (valid while the load is not released).

    In background and lazy loads the graph may still be restoring: replay() and wait() then
    block until it is ready. A graph whose restore failed raises there, after the whole load was
    released (the message says what was released): the process is as it was before LOAD."""

    def __init__(
        self, entry: GraphEntry, outputs: dict[str, object], step: Step | None, fail: Callable[..., ReleaseSummary], *, device: int
    ) -> None:
        self.key = entry.key
        self.outputs = outputs
        self.device = device
        self._entry = entry
        self._step = step  # whose first request queues the whole step; None once released
        self._fail = fail
        self._executable: driver.CUgraphExec | None = None  # made once: replay() is the hot path

    def _released(self) -> None:
        self._executable = None
        self._step = None

    def ready(self) -> bool:
        """True once the executable exists (always, after an eager load)."""
        return self._executable is not None

    def wait(self, timeout: float | None = None) -> None:
        """Blocks until the graph can be replayed, queuing its restore first where it is lazy.
        `timeout`: seconds to wait at most (RestoreTimeoutError, the load released, after it)."""
        if self._executable is not None:
            return
        step = self._step
        if step is None:
            raise GraphReleasedError(f"graph {self.key!r} was released: load the archive again (or capture it natively)")
        future = step.request(self._entry)
        try:
            handle = future.result(timeout=timeout)
        except TimeoutError:
            released = self._fail(wait=False)
            raise RestoreTimeoutError(
                f"graph {self.key!r} was not restored within {timeout:.0f} s; released {released}: a driver call stalled "
                "(see the threads' stacks with faulthandler); load again or capture natively"
            ) from None
        except GraphReleasedError:
            raise
        except BaseException as error:
            released = self._fail()
            message = f"restoring graph {self.key!r} failed: {error}; released everything this load made ({released})"
            if isinstance(error, FoundryTraceError):
                raise type(error)(message) from error
            raise RestoreError(message) from error
        self._executable = driver.CUgraphExec(handle)

    @property
    def executable(self) -> int:
        """The CUgraphExec handle, once ready (waiting like replay()): for callers that launch it
        their own way (their own launcher, a CUDA API); valid until the load is released."""
        self.wait()
        return int(self._executable)

    def replay(self, stream: int | None = None) -> None:
        """Launches the graph on `stream` (default: torch's current stream on the graph's device).

        The hot path of a server: a piecewise step launches dozens of graphs with eager work
        between them, bound by the host at small batches. Through torch.cuda.current_stream()
        and call() a launch took about 32 us of host time on the H200, against torch's own
        CUDAGraph.replay() at about 10 us and a bare cuGraphLaunch at about 12 us (probe
        replay_overhead): so the stream comes from torch's raw accessor and the launch is called
        straight."""
        executable = self._executable
        if executable is None:
            self.wait()
            executable = self._executable
        status = driver.cuGraphLaunch(executable, _cu_stream(_raw_stream_of()(self.device) if stream is None else stream))[0]
        if status != SUCCESS:
            raise_failure("cuGraphLaunch", status)


@functools.cache
def _raw_stream_of() -> Callable[[int], int]:
    """torch's current stream on a device, as a raw handle: torch._C._cuda_getCurrentRawStream
    (no Python object per call; Triton's launcher uses it too) where this torch has it, else
    torch.cuda.current_stream(device).cuda_stream."""
    import torch

    fast = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return fast if fast is not None else lambda device: torch.cuda.current_stream(device).cuda_stream


@functools.lru_cache(maxsize=64)
def _cu_stream(handle: int) -> driver.CUstream:
    """One wrapper per stream handle (a server launches on a few streams, again and again)."""
    return driver.CUstream(handle)


class Restored:
    """The restored graphs of one archive, by key, in serving order (batch sizes ascending), and
    what LOAD holds for them. Index it by key (restored[8] or restored["8"]); release() (or
    leaving a `with` block) gives everything back.

    `phases` holds the wall seconds of each step of LOAD, `spans` every module and graph task
    (for timelines); `archive` and `pipeline` are open while the load is, for tools that study
    a restore (the benchmarks build graphs through pipeline.build to time the driver alone).
    `policy` is the trust policy the archive was checked with when it was opened (load() of a
    prefetch() refuses to ask for more than it)."""

    def __init__(self, archive: Archive, resources: LoadResources, pipeline: Pipeline, policy: TrustPolicy) -> None:
        self.archive = archive
        self.policy = policy
        self.pipeline = pipeline
        self.graphs: dict[str, RestoredGraph] = {}
        self.phases: dict[str, float] = {}
        self.resources = resources
        self._loaded = False
        self._released: ReleaseSummary | None = None
        self._release_lock = threading.Lock()

    @property
    def device(self) -> int:
        return self.resources.device

    @property
    def builders(self) -> int:
        """Graphs this load builds at a time: load()'s `builders` (LOAD's default: one)."""
        return self.pipeline.builders

    @property
    def chunk_nodes(self) -> int:
        """Nodes a chunk of this load holds at most (load()'s `chunk_nodes`); a larger graph is a chunk of its own."""
        return self.pipeline.chunk_nodes

    @property
    def spans(self) -> list[Span]:
        return list(self.pipeline.spans)

    def __getitem__(self, key: object) -> RestoredGraph:
        return self.graphs[str(key)]

    def __contains__(self, key: object) -> bool:
        return str(key) in self.graphs

    def __len__(self) -> int:
        return len(self.graphs)

    def __iter__(self) -> Iterator[str]:
        return iter(self.graphs)

    def group(self, batch: object) -> list[RestoredGraph]:
        """The graphs of one batch size's step, in order: one graph, or all its pieces
        ("8/00", "8/01", ...: a piecewise capture). A step is ready when all of them are."""
        return [graph for key, graph in self.graphs.items() if group_of(key) == str(batch)]

    def __enter__(self) -> Restored:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    @property
    def released(self) -> bool:
        """release() ran (itself, or after a failed load): no graph of this load runs any more."""
        return self._released is not None

    def begin_load(self, communicator: object) -> None:
        """Marks a prefetched Restored as being loaded (by load()), with this rank's communicator;
        refuses a second load or one after release: loading again would claim the memory twice,
        and the failure's clean-up would destroy the graphs already restored."""
        if self._loaded or self.graphs or self._released is not None:
            raise RestoreError("this Restored was loaded or released already: prefetch() the archive again")
        self._loaded = True
        self.resources.communicator = communicator

    def wait(self, timeout: float | None = None) -> None:
        """Blocks until every graph is ready (background and lazy loads restore the rest now)."""
        for graph in list(self.graphs.values()):
            graph.wait(timeout)
        self._finish_pipeline()

    def wait_for_modules(self) -> None:
        """Blocks until prefetch() has loaded every module (re-raising its failure, if any)."""
        self.pipeline.wait_for_modules()

    def busy_seconds(self) -> dict[str, float]:
        """Seconds spent in each kind of task, summed over threads."""
        totals: dict[str, float] = {}
        for span in self.spans:
            totals[span.phase] = totals.get(span.phase, 0.0) + span.end - span.start
        return totals

    def release(self, *, wait: bool = True) -> ReleaseSummary:
        """Stops pending work and destroys the executables, events and modules, and frees the
        claimed memory: afterwards the process is as before LOAD and may retry or capture.
        Returns what was released (the first call's summary on later calls). `wait=False`
        abandons a worker stuck in the driver rather than waiting for it (time-outs)."""
        with self._release_lock:
            if self._released is not None:
                return self._released
            self.pipeline.close(wait=wait)
            self._released = self.resources.release()
            self.archive.close()
            for graph in self.graphs.values():
                graph._released()
            self.graphs.clear()
            return self._released

    def _finish_pipeline(self) -> None:
        """Every graph is ready: the workers and the archive are no longer needed."""
        self.pipeline.close()
        self.archive.close()

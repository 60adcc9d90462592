"""The pipeline's chunks (CPU): a chunk's builds are all queued before its instantiations, every
built graph is destroyed once instantiated, and a failed or released load leaves none behind.

The driver is replaced by a subclass of Pipeline whose build, instantiate and module steps record
what they were asked (the real ones are covered by the GPU tests)."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures.thread import BrokenThreadPool
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundry_trace.restore import _resources as resources_module
from foundry_trace.restore._pipeline import (
    DEFAULT_CHUNK_NODES,
    HEAD_SHARE,
    Pipeline,
    PipelineHooks,
    chunks,
)
from foundry_trace.restore._resources import LoadResources


def _entry(key: str, nodes: int, modules: tuple[int, ...] = (0,)) -> SimpleNamespace:
    return SimpleNamespace(key=key, nodes=nodes, modules=modules)


@given(sizes=st.lists(st.integers(0, 5000), max_size=60), budget=st.integers(0, 20_000), head=st.none() | st.integers(0, 20_000))
def test_chunks_keep_the_order_and_stay_within_the_budget(sizes: list[int], budget: int, head: int | None) -> None:
    """The first chunk within the head's budget (where it is the smaller), every other within the
    chunks' budget; each as full as the next graph allows."""
    entries = [_entry(str(number), size) for number, size in enumerate(sizes)]
    cut = list(chunks(entries, budget, head))
    assert [entry for chunk in cut for entry in chunk] == entries
    for number, chunk in enumerate(cut):
        cap = budget if number or head is None else min(head, budget)
        assert chunk
        assert len(chunk) == 1 or sum(e.nodes for e in chunk) <= cap, "only a graph alone may exceed the budget"
        if number + 1 < len(cut):  # greedy: the next graph did not fit
            assert sum(e.nodes for e in chunk) + cut[number + 1][0].nodes > cap


class _Resources(LoadResources):
    """Records destroyed handles instead of calling the driver (and keeps the process's count
    of live handles right for the tests after this one)."""

    def __init__(self) -> None:
        super().__init__(device=0)
        self.destroyed: list[tuple[str, int]] = []

    def _destroy(self, kind: str, handle: int) -> None:
        self.destroyed.append((kind, handle))
        resources_module._count(kind, -1)


class _RecordingPipeline(Pipeline):
    """A pipeline of Python workers whose driver steps record their order; `fail` names a graph
    whose build fails."""

    def __init__(self, graphs: list[SimpleNamespace], *, threads: int, chunk_nodes: int, fail: str | None = None, modules: int = 1) -> None:
        manifest = SimpleNamespace(functions=[], modules=[SimpleNamespace(size=1)] * modules, graphs=graphs)
        self.calls: list[str] = []
        self.batches: list[list[int]] = []
        self.fail = fail
        self._calls_lock = threading.Lock()
        self._next = iter(range(1, 1 << 30))
        super().__init__(
            SimpleNamespace(manifest=manifest), _Resources(), threads=threads, builders=threads, chunk_nodes=chunk_nodes,
            context=0, started=0.0, native_chunks=False,
        )

    def _start_worker(self) -> None:
        pass

    def _load_modules(self, indices: list[int]) -> tuple[int, BaseException | None]:
        self.batches.append(list(indices))
        for index in indices:
            self._log(f"module {index}")
        return len(indices), None

    def build(self, entry: SimpleNamespace, table: bytes | None = None) -> int:
        self._log(f"build {entry.key}")
        if entry.key == self.fail:
            raise RuntimeError(f"build of {entry.key} failed")
        return 1000 + int(entry.key)

    def instantiate(self, graph: int, what: str) -> int:
        self._log(f"instantiate {graph - 1000}")
        return 2000 + graph - 1000

    def _log(self, what: str) -> None:
        with self._calls_lock:
            self.calls.append(what)


def test_one_thread_builds_each_chunk_then_instantiates_it() -> None:
    graphs = [_entry(str(n), 10) for n in range(5)]
    pipeline = _RecordingPipeline(graphs, threads=1, chunk_nodes=30)
    pipeline.queue(graphs)
    executables = [pipeline.executable(entry).result() for entry in graphs]
    pipeline.close()
    assert executables == [2000 + n for n in range(5)]
    assert pipeline.calls == [
        "module 0", "build 0", "build 1", "build 2", "instantiate 0", "instantiate 1", "instantiate 2",
        "build 3", "build 4", "instantiate 3", "instantiate 4",
    ]
    resources = pipeline._resources
    assert sorted(handle for kind, handle in resources.destroyed if kind == "built graphs") == [1000 + n for n in range(5)]
    assert resources.release().built_graphs == 0


class _SlowBuildPipeline(_RecordingPipeline):
    """Builds that log their end too, the chunk's last one slow: an instantiation that started
    beside it would show in the log before its end."""

    slow = "3"

    def build(self, entry: SimpleNamespace, table: bytes | None = None) -> int:
        graph = super().build(entry, table)
        if entry.key == self.slow:
            time.sleep(0.05)
        self._log(f"built {entry.key}")
        return graph


@pytest.mark.parametrize("threads", [2, 4])
def test_no_instantiation_runs_beside_a_build_of_its_chunk(threads: int) -> None:
    graphs = [_entry(str(n), 10) for n in range(8)]
    pipeline = _SlowBuildPipeline(graphs, threads=threads, chunk_nodes=40)
    pipeline.queue(graphs)
    for entry in graphs:
        pipeline.executable(entry).result()
    pipeline.close()
    for chunk in (range(4), range(4, 8)):
        ends = [pipeline.calls.index(f"built {n}") for n in chunk]
        starts = [pipeline.calls.index(f"instantiate {n}") for n in chunk]
        assert max(ends) < min(starts), pipeline.calls


def test_a_chunk_of_0_nodes_restores_each_graph_in_one_task() -> None:
    graphs = [_entry(str(n), 10) for n in range(3)]
    pipeline = _RecordingPipeline(graphs, threads=1, chunk_nodes=0)
    pipeline.queue(graphs)
    pipeline.executable(graphs[-1]).result()
    pipeline.close()
    assert pipeline.calls == ["module 0", "build 0", "instantiate 0", "build 1", "instantiate 1", "build 2", "instantiate 2"]


def test_queuing_again_queues_nothing_twice() -> None:
    graphs = [_entry(str(n), 10) for n in range(4)]
    pipeline = _RecordingPipeline(graphs, threads=2, chunk_nodes=100)
    pipeline.queue(graphs[:2])
    pipeline.queue(graphs)
    pipeline.queue(graphs[::-1])
    for entry in graphs:
        pipeline.executable(entry).result()
    pipeline.close()
    assert sorted(pipeline.calls) == sorted(["module 0"] + [f"{step} {n}" for n in range(4) for step in ("build", "instantiate")])


@pytest.mark.parametrize("threads", [1, 4])
def test_a_failed_build_leaves_no_built_graph_behind(threads: int) -> None:
    graphs = [_entry(str(n), 10) for n in range(8)]
    pipeline = _RecordingPipeline(graphs, threads=threads, chunk_nodes=1000, fail="5")
    pipeline.queue(graphs)
    with pytest.raises(RuntimeError, match="build of 5 failed"):
        pipeline.executable(graphs[5]).result()
    pipeline.close()
    resources = pipeline._resources
    summary = resources.release()
    built = [handle for kind, handle in resources.destroyed if kind == "built graphs"]
    attempted = [int(call.split()[1]) for call in pipeline.calls if call.startswith("build")]
    assert 5 in attempted
    assert sorted(built) == sorted(1000 + n for n in attempted if n != 5), "every graph that was built is destroyed once"
    assert summary.executables == sum(call.startswith("instantiate") for call in pipeline.calls)  # close() cancels the rest


def test_release_destroys_graphs_built_but_not_instantiated() -> None:
    resources = _Resources()
    resources.add_built_graph(7)
    resources.add_built_graph(8)
    assert resources.take_built_graph(7)  # a worker instantiates it: it destroys it itself
    summary = resources.release()
    assert summary.built_graphs == 1 and resources.destroyed == [("built graphs", 8)]
    assert not resources.take_built_graph(8), "a worker must not instantiate what release() destroyed"
    resources.add_built_graph(9)  # a build an abandoned worker finished after the release
    assert resources.destroyed[-1] == ("built graphs", 9)


def test_closing_stops_the_chunk_and_cancels_the_graphs_not_restored() -> None:
    graphs = [_entry(str(n), 10) for n in range(6)]
    entered, go = threading.Event(), threading.Event()

    class Blocking(_RecordingPipeline):
        def build(self, entry: SimpleNamespace, table: bytes | None = None) -> int:
            if entry.key == "1":
                entered.set()
                go.wait(10)
            return super().build(entry, table)

    pipeline = Blocking(graphs, threads=1, chunk_nodes=1000)
    pipeline.queue(graphs)
    assert entered.wait(10)
    closing = threading.Thread(target=pipeline.close)
    closing.start()
    futures = [pipeline.executable(entry) for entry in graphs]
    while not futures[-1].cancelled():
        closing.join(0.01)
    go.set()
    closing.join(10)
    assert not closing.is_alive(), "close() must not wait for the rest of the chunk"
    assert all(future.cancelled() for future in futures), "no graph was instantiated: all are cancelled"
    assert pipeline.calls == ["module 0", "build 0", "build 1"], "the runner leaves at its next take"
    summary = pipeline._resources.release()
    assert summary.built_graphs == 2 and summary.executables == 0


def test_hooks_with_the_native_runner_are_refused_before_any_thread_starts() -> None:
    manifest = SimpleNamespace(functions=[], modules=[], graphs=[])
    with pytest.raises(ValueError, match="native_chunks=False"):
        Pipeline(SimpleNamespace(manifest=manifest), _Resources(), threads=2, builders=2, chunk_nodes=0, context=0, started=0.0, hooks=PipelineHooks())


@pytest.mark.parametrize(("threads", "builders", "chunk_nodes", "message"), [
    (8, None, 4096, "builders=None"), (8, 1, 4096.0, "chunk_nodes=4096.0"), (True, 1, 0, "threads=True"), ("8", 1, 0, "threads='8'"),
    (0, 1, 0, "at least one of each"), (8, 0, 0, "at least one of each"), (8, 1, -1, "chunk_nodes=-1"),
])
def test_a_schedule_that_is_not_whole_numbers_is_refused_by_name(threads: object, builders: object, chunk_nodes: object, message: str) -> None:
    manifest = SimpleNamespace(functions=[], modules=[], graphs=[])
    with pytest.raises(ValueError, match=re.escape(message)):
        Pipeline(SimpleNamespace(manifest=manifest), _Resources(), threads=threads, builders=builders, chunk_nodes=chunk_nodes, context=0,
                 started=0.0, native_chunks=False)


def test_load_defers_garbage_collection_and_restores_the_collectors_state() -> None:
    import gc

    from foundry_trace.restore.load import collection_deferred

    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            with collection_deferred():
                assert not gc.isenabled()
            assert gc.isenabled() == enabled
            with pytest.raises(RuntimeError), collection_deferred():
                raise RuntimeError("a failed load")
            assert gc.isenabled() == enabled
        finally:
            gc.enable()


def test_modules_queued_together_load_as_one_batch_and_none_twice() -> None:
    graphs = [_entry("1", 10, (0, 1)), _entry("2", 10, (1, 2)), _entry("4", 10, (3,))]
    pipeline = _RecordingPipeline(graphs, threads=2, chunk_nodes=100, modules=4)
    pipeline.load_modules_for(graphs[:2])  # the first step's graphs: one batch, one native call
    pipeline.queue(graphs)  # one chunk: only the module not queued yet
    for future in [pipeline.executable(entry) for entry in graphs]:
        future.result(timeout=10)
    pipeline.close()
    assert pipeline.batches == [[0, 1, 2], [3]], pipeline.batches



def test_all_modules_load_the_first_steps_batch_first_so_its_graphs_wait_for_those_only() -> None:
    graphs = [_entry("8", 10, (0, 2)), _entry("1", 10, (1, 2)), _entry("2", 10, (3,))]
    pipeline = _RecordingPipeline(graphs, threads=1, chunk_nodes=100, modules=4)
    pipeline.load_all_modules()  # prefetch(): batch 1's graph is the first step
    pipeline.wait_for_modules()
    pipeline.close()
    assert pipeline.batches == [[1, 2], [0, 3]], pipeline.batches


def test_a_module_batch_queued_while_close_runs_is_settled_and_none_after_it() -> None:
    graphs = [_entry("1", 10, (0,)), _entry("2", 10, (1,)), _entry("3", 10, (2,))]
    busy, go = threading.Event(), threading.Event()

    class Busy(_RecordingPipeline):
        def _load_modules(self, indices: list[int]) -> tuple[int, BaseException | None]:
            busy.set()
            go.wait(10)
            return super()._load_modules(indices)

    pipeline = Busy(graphs, threads=1, chunk_nodes=100, modules=3)
    pipeline.load_modules_for(graphs[:1])
    assert busy.wait(10)

    class QueueingMeanwhile(threading.Condition):
        def __enter__(self) -> bool:  # close() has taken its snapshot: a lazy graph's first use queues now
            pipeline.load_modules_for(graphs[1:2])
            return super().__enter__()

    pipeline._native_free = QueueingMeanwhile()
    pipeline.close(wait=False)  # its pool's shutdown cancels the batch of module 1 before it runs
    go.set()
    pipeline._module_pool.shutdown()
    assert pipeline._modules[0].done() and pipeline._modules[1].cancelled(), "a graph waiting on module 1 would wait for ever"
    with pytest.raises(RuntimeError, match="after shutdown"):
        pipeline.load_modules_for(graphs[2:])
    assert 2 not in pipeline._modules, "a batch the closed pool refused is not recorded for graphs to wait on"


def test_a_module_batch_whose_thread_cannot_start_fails_its_modules() -> None:
    graphs = [_entry("1", 10, (0, 1))]

    class NoModuleThread(_RecordingPipeline):
        def _start_worker(self) -> None:
            raise RuntimeError("the context cannot be made current")

    pipeline = NoModuleThread(graphs, threads=1, chunk_nodes=100, modules=2)
    pipeline.load_modules_for(graphs)
    for module in (0, 1):
        assert isinstance(pipeline._modules[module].exception(timeout=10), BrokenThreadPool)
    pipeline.close()


class _NativePipeline(Pipeline):
    """A pipeline of native chunks whose modules load at once and whose context is never made
    current (the chunk calls themselves are the test's)."""

    def __init__(self, graphs: list[SimpleNamespace], *, threads: int, chunk_nodes: int) -> None:
        manifest = SimpleNamespace(functions=[], modules=[SimpleNamespace(size=1)], graphs=graphs)
        archive = SimpleNamespace(manifest=manifest, locate=lambda digest: b"blob", fileno=lambda: -1)
        super().__init__(archive, _Resources(), threads=threads, builders=1, chunk_nodes=chunk_nodes, context=0, started=0.0)

    def _start_worker(self) -> None:
        pass

    def _load_modules(self, indices: list[int]) -> tuple[int, BaseException | None]:
        return len(indices), None


def _chunk_calls(monkeypatch: pytest.MonkeyPatch, chunk_nodes: int, mode: str = "eager") -> tuple[list[int], int]:
    """Forty 100-node graphs restored on 4 threads, queued as a load() in `mode` does (the first
    step alone, then all), or as prefetch() does (build_early): the graphs of each native call,
    in order, and the most calls that ran at once."""
    from foundry_trace import _native as native

    sizes: list[int] = []
    running, most = [0], [0]
    lock = threading.Lock()

    def restore_chunk(archive, blobs, names, handles, context, threads, gate):  # noqa: ANN001, ANN202 - native.restore_chunk's
        with lock:
            sizes.append(len(blobs))
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.03)
        with lock:
            running[0] -= 1
        now = time.perf_counter()
        return [native.GraphOutcome(3000 + len(sizes) * 100 + n, None, (now, now), (now, now)) for n in range(len(blobs))]

    monkeypatch.setattr(native, "restore_chunk", restore_chunk)
    graphs = [SimpleNamespace(key=str(n + 1), nodes=100, modules=(0,), table=f"t{n}", payload=f"p{n}", early="always") for n in range(40)]
    pipeline = _NativePipeline(graphs, threads=4, chunk_nodes=chunk_nodes)
    if mode == "prefetch":
        pipeline.build_early(graph_memory_mapped=False, head=True)
    else:
        pipeline.queue(graphs[:1])  # the first step, at open
        pipeline.queue(graphs, head=mode == "background")  # the rest
    for entry in graphs:
        pipeline.executable(entry).result(timeout=10)
    pipeline.close()
    return sizes, most[0]


@pytest.mark.parametrize("mode", ["eager", "background", "prefetch"])
def test_by_default_the_first_step_then_every_other_graph_in_one_chunk(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """LOAD's default order is the driver alone's within each chunk: the first step's graphs,
    then every other build and their instantiations (one native call, which holds every thread);
    where a server replays while LOAD restores (background, prefetch), a head of a sixteenth of
    the nodes (250 of 4,000: 2 graphs) before those. Small chunks run side by side within the
    threads."""
    head = 0 if mode == "eager" else 4000 // HEAD_SHARE // 100
    sizes, _ = _chunk_calls(monkeypatch, DEFAULT_CHUNK_NODES, mode)
    assert sizes == [1, *([head] if head else []), 40 - 1 - head]
    sizes, most = _chunk_calls(monkeypatch, 100, mode)
    assert sizes == [1] * 40 and most > 1

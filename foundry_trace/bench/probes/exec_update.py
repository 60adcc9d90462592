"""Below the driver's floor? Instantiate once per topology and update the others (issue 35, item 4).

A cold LOAD builds and instantiates every graph, at about 5.5 us a node and 99 us a graph on the
driver (qwen3-235b-rank). Graphs of one topology (topology.py: the same node kinds and edges in
the same order) differ only in their nodes' parameters, so an executable of one can be turned
into another's by cuGraphExecUpdate instead of being instantiated from its own graph. The
reference system found such updated executables replay 11-13 % slower (the update clears
constant-prefetch bits); Foundry adopts a path only if replay stays within 1 % and every output
bit-identical. This probe measures, on an archive, what each path costs cold and what its
executables replay like:

  shapes (first line, no GPU)  the topology classes of the node tables (checked against the
                templates SAVE stored) and the nodes a SAVE could drop without changing any
                output (node_reduction.py: counted, not dropped)
  cold-STRATEGY every graph's executable made in a fresh process (the engine built, the modules
                loaded untimed, as the driver-alone reference does), serially on one thread,
                timed by kind of driver work:
      instantiate   each graph built and instantiated (what LOAD does: the baseline)
      graph-update  per class the representative built and instantiated; each other graph gets
                    an instantiation of the representative's built graph, updated in place from
                    its own built graph (cuGraphExecUpdate_v2, its result info kept)
      node-update   per class only the representative built; each other graph gets an
                    instantiation of it whose changed nodes are set from its node table
                    (cuGraphExecKernelNodeSetParams, ...MemsetNodeSetParams,
                    ...MemcpyNodeSetParams, ...EventRecordNodeSetEvent, ...EventWaitNodeSetEvent)
      shared        every graph built, one executable per class instantiated (a server would
                    update it at each switch of batch size: the replay variant times a switch)
                A graph a path cannot update (the driver refuses, or a change the node path
                cannot express) is instantiated from its own build instead, and named.
  replay        in one fresh process, every graph's executable made four ways: instantiated,
                graph-update, node-update, and self-update (its own instantiation updated from
                its own graph: does an update slow replay even where nothing changes?); each
                step's outputs on fixed inputs compared bit for bit with SAVE's references and
                with the instantiated executable's (verify.py's digests); replay latency of
                each updated kind against the instantiated one at b = 1, 64, 256 (verify.py's
                alternating rounds and medians, the workload's effort); and the seconds one
                cuGraphExecUpdate takes to switch a graph-update executable to another graph of
                its class and back.

Every line carries the device fields of the process that measured (results.device_fields).
The default runs replay first (what decides adoption: outputs bit-identical, replay within 1 %;
a call cut short by its time limit keeps it), then the four cold strategies three rounds,
alternating:

  python -m foundry_trace.bench.roles save WORKLOAD A.foundry [--layers N]
  python -m foundry_trace.bench.probes.exec_update A.foundry [VARIANT ...] [--rounds N]
"""

from __future__ import annotations

import ctypes
import functools
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from foundry_alloc.profiling import annotate
from foundry_trace._driver import (
    CU_LAUNCH_PARAM_BUFFER_POINTER,
    CU_LAUNCH_PARAM_BUFFER_SIZE,
    CU_LAUNCH_PARAM_END,
    SUCCESS,
    call,
    raise_failure,
)
from foundry_trace.archive.format import Archive
from foundry_trace.archive.records import EventRecordNode, EventWaitNode, KernelNode, MemcpyNode, MemsetNode
from foundry_trace.bench.probes.node_reduction import archive_reduction
from foundry_trace.bench.probes.topology import (
    NodeChanges,
    TopologyClass,
    classes_report,
    node_changes,
    stored_topologies,
    topology_classes,
)
from foundry_trace.bench.probes.variants import engine_of, probe_main, timed
from foundry_trace.errors import DriverCallError

if TYPE_CHECKING:
    from foundry_trace.archive.manifest import GraphEntry
    from foundry_trace.archive.records import GraphBody, Node
    from foundry_trace.bench.verify import Effort
    from foundry_trace.bench.workloads.registry import Engine
    from foundry_trace.restore import Restored
    from foundry_trace.restore._pipeline import Pipeline

MODULE = "foundry_trace.bench.probes.exec_update"

STRATEGIES = ("instantiate", "graph-update", "node-update", "shared")
COLD_ROUNDS = 3
VARIANTS = ("replay", *tuple(f"cold-{strategy}" for strategy in STRATEGIES) * COLD_ROUNDS)
LATENCY_BATCHES = (1, 64, 256)
UPDATED_KINDS = ("graph-update", "node-update", "self-update")  # each against "instantiated"
SWITCHES = 5  # round trips timed per switched graph
UPDATE_SUCCESS = 0  # CU_GRAPH_EXEC_UPDATE_SUCCESS
NODE_TYPES = {  # CUgraphNodeType's names of each node-table kind
    "kernel": "CU_GRAPH_NODE_TYPE_KERNEL", "memset": "CU_GRAPH_NODE_TYPE_MEMSET", "memcpy": "CU_GRAPH_NODE_TYPE_MEMCPY",
    "event_record": "CU_GRAPH_NODE_TYPE_EVENT_RECORD", "event_wait": "CU_GRAPH_NODE_TYPE_WAIT_EVENT",
    "empty": "CU_GRAPH_NODE_TYPE_EMPTY", "graph": "CU_GRAPH_NODE_TYPE_GRAPH", "collective": "CU_GRAPH_NODE_TYPE_GRAPH",
}


def shapes(archive: str) -> dict[str, object]:
    """The first line, read from the node tables without a GPU: topology classes and the
    nodes a SAVE could drop."""
    with Archive(archive) as opened:
        classes = topology_classes(opened, LATENCY_BATCHES)
        return {
            "variant": "shapes",
            "topology": classes_report(classes, stored_topologies(opened)),
            "reduction": archive_reduction(opened),
        }


# -- the driver calls the update paths make ---------------------------------------------------


class _UpdateResultInfo(ctypes.Structure):
    """CUgraphExecUpdateResultInfo_v1: the result, and the nodes an error names."""

    _fields_ = [("result", ctypes.c_int), ("error_node", ctypes.c_void_p), ("error_from_node", ctypes.c_void_p)]


@functools.cache
def _update_entry() -> Callable[..., int] | None:
    """cuGraphExecUpdate_v2 straight from the driver library: cuda.bindings hands back no result
    info when the call fails, and the info is what says why the driver refused an update. None
    where the library does not export it by that name (update() then asks cuda.bindings)."""
    function = getattr(ctypes.CDLL("libcuda.so.1"), "cuGraphExecUpdate_v2", None)
    if function is not None:
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(_UpdateResultInfo)]
        function.restype = ctypes.c_int
    return function


def update(executable: int, graph: int) -> str | None:
    """Updates `executable` in place from `graph` (of its topology); None where the update was
    made, else why not: the result's name and the refused node's type."""
    from cuda.bindings import driver

    entry = _update_entry()
    if entry is None:
        status, info = driver.cuGraphExecUpdate(driver.CUgraphExec(executable), driver.CUgraph(graph))
        if status == SUCCESS and info is not None and info.result == driver.CUgraphExecUpdateResult.CU_GRAPH_EXEC_UPDATE_SUCCESS:
            return None
        return f"{status.name}: {info.result.name if info is not None else 'no result info'}"
    info = _UpdateResultInfo()
    status = entry(executable, graph, ctypes.byref(info))
    if status == 0 and info.result == UPDATE_SUCCESS:
        return None
    reason = f"{driver.CUresult(status).name}: {driver.CUgraphExecUpdateResult(info.result).name}"
    if info.error_node:
        error, kind = driver.cuGraphNodeGetType(driver.CUgraphNode(info.error_node))
        reason += f" at a {kind.name if error == SUCCESS else 'node'}"
    return reason


def graph_nodes(graph: int, body: GraphBody) -> list[object]:
    """The built graph's top-level CUgraphNodes in node-table order. The driver returns them in
    creation order, which is table order; checked node by node (type, and a kernel's grid and
    block), so that a driver that orders them otherwise is caught, not trusted."""
    from cuda.bindings import driver

    _, count = call(driver.cuGraphGetNodes, driver.CUgraph(graph), 0)
    nodes, _ = call(driver.cuGraphGetNodes, driver.CUgraph(graph), count)
    if len(nodes) != len(body.nodes):
        raise ValueError(f"the built graph holds {len(nodes)} nodes, its table {len(body.nodes)}")
    for index, (node, record) in enumerate(zip(nodes, body.nodes, strict=True)):
        kind = call(driver.cuGraphNodeGetType, node)
        if kind.name != NODE_TYPES[record.kind]:
            raise ValueError(f"node {index}: the driver lists a {kind.name} where the table holds a {record.kind} node")
        if isinstance(record, KernelNode):
            params = call(driver.cuGraphKernelNodeGetParams, node)
            if (params.gridDimX, params.gridDimY, params.gridDimZ, params.blockDimX, params.blockDimY, params.blockDimZ) != (
                *record.grid, *record.block
            ):
                raise ValueError(f"node {index}: the driver's kernel node has another launch shape than the table's")
    return nodes


def set_node(executable: int, node: object, record: Node, pipeline: Pipeline, events: list[int]) -> None:
    """Sets one node of `executable` (`node`: its node in the graph it was instantiated from) to
    `record`'s parameters, as LOAD's builder would have created it (graph_build.cpp)."""
    from cuda.bindings import driver

    handle, context = driver.CUgraphExec(executable), driver.CUcontext(pipeline.context)
    if isinstance(record, KernelNode):
        params = driver.CUDA_KERNEL_NODE_PARAMS()
        params.func = driver.CUfunction(pipeline.function_handle(record.function))
        params.gridDimX, params.gridDimY, params.gridDimZ = record.grid
        params.blockDimX, params.blockDimY, params.blockDimZ = record.block
        params.sharedMemBytes = record.shared_bytes
        arguments = ctypes.create_string_buffer(record.arguments, len(record.arguments))
        size = ctypes.c_size_t(len(record.arguments))
        extra = (ctypes.c_void_p * 5)(CU_LAUNCH_PARAM_BUFFER_POINTER, ctypes.addressof(arguments), CU_LAUNCH_PARAM_BUFFER_SIZE,
                                      ctypes.addressof(size), CU_LAUNCH_PARAM_END)
        if record.arguments:
            params.extra = ctypes.addressof(extra)  # arguments, size and extra outlive the call: locals
        call(driver.cuGraphExecKernelNodeSetParams, handle, node, params)
    elif isinstance(record, MemsetNode):
        params = driver.CUDA_MEMSET_NODE_PARAMS()
        params.dst, params.pitch, params.value = record.destination, record.pitch, record.value
        params.elementSize, params.width, params.height = record.element_size, record.width, record.height
        call(driver.cuGraphExecMemsetNodeSetParams, handle, node, params, context)
    elif isinstance(record, MemcpyNode):
        call(driver.cuGraphExecMemcpyNodeSetParams, handle, node, _copy_params(record), context)
    elif isinstance(record, EventRecordNode):
        call(driver.cuGraphExecEventRecordNodeSetEvent, handle, node, driver.CUevent(events[record.event]))
    elif isinstance(record, EventWaitNode):
        call(driver.cuGraphExecEventWaitNodeSetEvent, handle, node, driver.CUevent(events[record.event]))
    else:
        raise ValueError(f"a {record.kind} node cannot be set on an executable node by node")


def _copy_params(record: MemcpyNode) -> object:
    """CUDA_MEMCPY3D of a device-to-device copy record."""
    from cuda.bindings import driver

    copy = driver.CUDA_MEMCPY3D()
    copy.srcMemoryType = copy.dstMemoryType = driver.CUmemorytype.CU_MEMORYTYPE_DEVICE
    copy.srcDevice, copy.srcPitch, copy.srcHeight = record.source, record.source_pitch, record.source_height
    copy.srcXInBytes, copy.srcY, copy.srcZ = record.source_offset
    copy.dstDevice, copy.dstPitch, copy.dstHeight = record.destination, record.destination_pitch, record.destination_height
    copy.dstXInBytes, copy.dstY, copy.dstZ = record.destination_offset
    copy.WidthInBytes, copy.Height, copy.Depth = record.extent
    return copy


# -- making executables, timed by kind of work --------------------------------------------------


@dataclass
class Clock:
    """Seconds of each kind of work, summed over the graphs."""

    seconds: Counter = field(default_factory=Counter)

    @contextmanager
    def __call__(self, kind: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] += time.perf_counter() - start


@dataclass
class Source:
    """A class's graph that others are made from: built once, its records and its nodes (None
    with `unusable` where the node path cannot use it)."""

    key: str
    graph: int
    body: GraphBody | None = None
    nodes: list[object] | None = None
    unusable: str | None = None


class Maker:
    """Makes executables of an archive's graphs every way the probe compares, on the lazy load's
    pipeline (modules loaded, memory claimed), timing each kind of driver work, and destroys
    what it made."""

    def __init__(self, restored: Restored, clock: Clock) -> None:
        self.restored = restored
        self.pipeline = restored.pipeline
        self.entries: dict[str, GraphEntry] = {entry.key: entry for entry in restored.archive.manifest.graphs}
        self.clock = clock
        self.sources: dict[str, Source] = {}
        self.fallbacks: list[dict[str, str]] = []
        self.results: Counter = Counter()

    def build(self, key: str) -> int:
        with self.clock("build"):
            return self.pipeline.build(self.entries[key])

    def instantiate(self, graph: int, key: str) -> int:
        with self.clock("instantiate"):
            return self.pipeline.instantiate(graph, f"graph {key!r}")

    def destroy_graph(self, graph: int) -> None:
        from foundry_trace import _native as native

        with self.clock("destroy"):
            native.destroy_graph(graph)

    def body(self, key: str) -> GraphBody:
        with self.clock("decode"):
            return self.restored.archive.graph(self.entries[key])

    def source(self, key: str, with_nodes: bool) -> Source:
        """The built graph of `key` as a source of other executables (built once)."""
        source = self.sources.get(key)
        if source is None:
            source = self.sources[key] = Source(key, self.build(key))
        if with_nodes and source.body is None:
            source.body = self.body(key)
            try:
                with self.clock("node_handles"):
                    source.nodes = graph_nodes(source.graph, source.body)
            except (ValueError, DriverCallError) as error:
                source.unusable = str(error)
        return source

    def release_sources(self) -> None:
        for source in self.sources.values():
            self.destroy_graph(source.graph)
        self.sources.clear()

    def fall_back(self, key: str, why: str, own: int | None = None) -> int:
        """`key`'s executable instantiated from its own build, where an update path could not
        make it (named in the report)."""
        self.fallbacks.append({"key": key, "why": why[:300]})
        graph = own if own is not None else self.build(key)
        executable = self.instantiate(graph, key)
        if own is None:
            self.destroy_graph(graph)
        return executable

    def by_graph_update(self, key: str, source: Source, own: int) -> int | None:
        """An instantiation of `source` updated in place from `key`'s built graph `own`; None
        (nothing left behind) where the driver refused, its reason counted."""
        from foundry_trace import _native as native

        executable = self.instantiate(source.graph, key)
        with self.clock("update"):
            refused = update(executable, own)
        self.results[refused or "CU_GRAPH_EXEC_UPDATE_SUCCESS"] += 1
        if refused is None:
            return executable
        native.destroy_executable(executable)
        return None

    def by_node_update(self, key: str, source: Source) -> tuple[int | None, str | None]:
        """An instantiation of `source` whose changed nodes are set to `key`'s records; (None,
        why) where the node path cannot make it."""
        from foundry_trace import _native as native

        if source.unusable is not None or source.body is None or source.nodes is None:
            return None, f"source {source.key!r}: {source.unusable}"
        target = self.body(key)
        changes: NodeChanges = node_changes(source.body, target)
        if changes.blockers:
            return None, "; ".join(changes.blockers[:3])
        executable = self.instantiate(source.graph, key)
        events = self.restored.resources.events
        try:
            with self.clock("set_nodes"):
                for index in changes.changed:
                    set_node(executable, source.nodes[index], target.nodes[index], self.pipeline, events)
        except DriverCallError as error:
            native.destroy_executable(executable)
            return None, str(error)
        self.results.update({f"set {kind}": count for kind, count in changes.by_kind.items()})
        return executable, None


def destroy_executables(executables: list[int]) -> None:
    from foundry_trace import _native as native

    for executable in set(executables):
        native.destroy_executable(executable)


def make_all(maker: Maker, classes: list[TopologyClass], strategy: str) -> dict[str, int]:
    """Every graph's executable made the `strategy`'s way (`shared`: one a class), by key."""
    made: dict[str, int] = {}
    for cls in classes:
        with annotate(f"exec_update {strategy} class of {len(cls.keys)}"):
            if strategy == "instantiate":
                for key in cls.keys:
                    own = maker.build(key)
                    made[key] = maker.instantiate(own, key)
                    maker.destroy_graph(own)
            elif strategy == "shared":
                source = maker.source(cls.representative, with_nodes=False)
                made[cls.representative] = maker.instantiate(source.graph, cls.representative)
                for key in cls.others:
                    maker.destroy_graph(maker.build(key))  # a switch updates from this graph: it must be built
            elif strategy == "graph-update":
                source = maker.source(cls.representative, with_nodes=False)
                made[cls.representative] = maker.instantiate(source.graph, cls.representative)
                for key in cls.others:
                    own = maker.build(key)
                    made[key] = maker.by_graph_update(key, source, own) or maker.fall_back(key, "update refused", own)
                    maker.destroy_graph(own)
            elif strategy == "node-update":
                source = maker.source(cls.representative, with_nodes=True)
                made[cls.representative] = maker.instantiate(source.graph, cls.representative)
                for key in cls.others:
                    executable, why = maker.by_node_update(key, source)
                    made[key] = executable if executable is not None else maker.fall_back(key, why or "")
            else:
                raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
            maker.release_sources()
    return made


def cold(restored: Restored, classes: list[TopologyClass], strategy: str) -> dict[str, object]:
    """One strategy's executables for every graph, cold (the first made in this process)."""
    clock = Clock()
    maker = Maker(restored, clock)
    with annotate(f"exec_update cold {strategy}"):
        made, use = timed(lambda: make_all(maker, classes, strategy))
    destroy_executables(list(made.values()))
    seconds = {kind: round(value, 4) for kind, value in sorted(clock.seconds.items())}
    return {
        "strategy": strategy,
        "graphs": sum(len(c.keys) for c in classes),
        "classes": len(classes),
        "executables": len(made),
        "total_s": use["wall_s"],
        "driver_s": round(sum(v for k, v in clock.seconds.items() if k != "decode"), 4),
        "seconds": seconds,
        "update_results": dict(maker.results),
        "fallbacks": len(maker.fallbacks),
        "first_fallbacks": maker.fallbacks[:12],
        "resources": use,
    }


# -- the replay variant: every kind of executable, outputs and latency --------------------------


class Launch:
    """One executable as engine.restored_step reads a restored graph: replay() and outputs."""

    def __init__(self, key: str, executable: int, outputs: dict[str, object]) -> None:
        from cuda.bindings import driver

        self.key = key
        self.outputs = outputs
        self._executable = driver.CUgraphExec(executable)

    def replay(self) -> None:
        import torch
        from cuda.bindings import driver

        status = driver.cuGraphLaunch(self._executable, driver.CUstream(torch.cuda.current_stream().cuda_stream))[0]
        if status != SUCCESS:
            raise_failure("cuGraphLaunch", status)


class Executables:
    """Executables by key, indexed like a Restored (restored[key], restored.graphs)."""

    def __init__(self, executables: dict[str, int], restored: Restored) -> None:
        self.graphs = {key: Launch(key, executable, restored.graphs[key].outputs) for key, executable in executables.items()}

    def __getitem__(self, key: object) -> Launch:
        return self.graphs[str(key)]


@dataclass
class Step:
    """One batch size's graphs made every way: executables by kind then key, how many of them
    each updated kind really updated, and the built graphs kept for switching."""

    batch: int
    made: dict[str, dict[str, int]]
    updated: Counter
    own: dict[str, int]

    def all_executables(self) -> list[int]:
        return [executable for by_key in self.made.values() for executable in by_key.values()]


def make_step(maker: Maker, batch: int, keys: list[str], class_of: dict[str, TopologyClass], keep_graphs: bool) -> Step:
    """Every graph of one step made instantiated and by each update path (from its class's
    representative, or for the representative itself from another member), a graph that a
    path could not update standing in by its instantiated executable (so the step is whole)."""
    made: dict[str, dict[str, int]] = {kind: {} for kind in ("instantiated", *UPDATED_KINDS)}
    updated: Counter = Counter()
    own_graphs: dict[str, int] = {}
    for key in keys:
        own = maker.build(key)
        made["instantiated"][key] = maker.instantiate(own, key)
        cls = class_of[key]
        source_key = cls.representative if key != cls.representative else next(iter(cls.others), None)
        if source_key is not None:
            by_graph = maker.by_graph_update(key, maker.source(source_key, with_nodes=True), own)
            by_nodes, why = maker.by_node_update(key, maker.sources[source_key])
            if why is not None:
                maker.fallbacks.append({"key": key, "why": why[:300]})
            for kind, executable in (("graph-update", by_graph), ("node-update", by_nodes)):
                if executable is not None:
                    made[kind][key] = executable
                    updated[kind] += 1
        itself = maker.instantiate(own, key)
        refused = update(itself, own)
        if refused is None:
            made["self-update"][key] = itself
            updated["self-update"] += 1
        else:
            maker.fallbacks.append({"key": key, "why": f"self-update: {refused}"})
            destroy_executables([itself])
        for kind in UPDATED_KINDS:
            made[kind].setdefault(key, made["instantiated"][key])
        if keep_graphs:
            own_graphs[key] = own
        else:
            maker.destroy_graph(own)
    return Step(batch, made, updated, own_graphs)


def step_digests(engine: Engine, restored: Restored, step: Step) -> dict[str, str]:
    """The step's output digest on fixed inputs through each kind's executables (verify.py's
    digests), for the instantiated kind and each kind that updated any of its graphs. Every
    kind's executables write the same output tensors, so each kind's run starts with them
    poisoned: an executable that leaves an output unwritten (an update that kept its source's
    output address) shows the poison, not the bits of the kind before it."""
    from foundry_trace.bench.verify import restored_digests

    digests = {}
    for kind, by_key in step.made.items():
        if kind == "instantiated" or step.updated[kind]:
            poison_outputs(restored, by_key)
            digests[kind] = restored_digests(engine, Executables(by_key, restored), [step.batch])[str(step.batch)]
    return digests


def poison_outputs(restored: Restored, keys: Iterable[str]) -> None:
    """Fills every output of the graphs `keys` with NaN (-1 where not floating point)."""
    for key in keys:
        for output in restored.graphs[key].outputs.values():
            output.fill_(float("nan") if output.is_floating_point() else -1)


def bitwise(digests: dict[int, dict[str, str]], saved: dict[str, dict[str, object]] | None) -> dict[str, object]:
    """Each kind's outputs against the instantiated executables' and SAVE's references: the
    batches that differ (SAVE's nondeterministic batches set apart, as verify.py does), and
    `bitwise_equal`, None for a kind that updated no graph (no batch of it compared)."""
    from foundry_trace.bench.verify import differing_from_saved

    report: dict[str, object] = {}
    for kind in ("instantiated", *UPDATED_KINDS):
        of_kind = {str(batch): by_kind[kind] for batch, by_kind in digests.items() if kind in by_kind}
        against_instantiated = sorted(int(b) for b, d in of_kind.items() if d != digests[int(b)]["instantiated"])
        entry: dict[str, object] = {"batches": len(of_kind), "differ_from_instantiated": against_instantiated}
        if saved is not None:
            entry["differ_from_saved"] = differing_from_saved(of_kind, saved)
            entry["nondeterministic_saved"] = sorted(int(b) for b in of_kind if not saved[b]["deterministic"])
        entry["bitwise_equal"] = (not against_instantiated and not entry.get("differ_from_saved")) if of_kind else None
        report[kind] = entry
    return report


def step_latency(engine: Engine, restored: Restored, step: Step, effort: Effort) -> dict[str, object]:
    """Replay latency of each updated kind's step against the instantiated one's (verify.py's
    alternating rounds and medians), for the kinds that updated any of its graphs."""
    from foundry_trace.bench.verify import latency_pair

    instantiated, _ = engine.restored_step(Executables(step.made["instantiated"], restored), step.batch)
    latency: dict[str, object] = {}
    for kind in UPDATED_KINDS:
        if step.updated[kind]:
            updated, _ = engine.restored_step(Executables(step.made[kind], restored), step.batch)
            pair = latency_pair(instantiated, updated, None, effort)
            latency[kind] = {"instantiated_ms": pair["native_ms"], "updated_ms": pair["restored_ms"], "delta_pct": pair["delta_pct"]}
    return latency


def switch_seconds(maker: Maker, step: Step, class_of: dict[str, TopologyClass]) -> dict[str, object] | None:
    """Median seconds of one cuGraphExecUpdate switching a graph-update executable to its
    source's graph and back (what serving from one executable per class pays per switch)."""
    import torch

    torch.cuda.synchronize()  # no launch of the executable may be running while it changes
    samples: list[float] = []
    for key, own in step.own.items():
        cls = class_of[key]
        source_key = cls.representative if key != cls.representative else next(iter(cls.others), None)
        executable = step.made["graph-update"].get(key)
        if source_key is None or executable is None or executable == step.made["instantiated"][key]:
            continue
        for _ in range(SWITCHES):
            for graph in (maker.sources[source_key].graph, own):
                start = time.perf_counter()
                refused = update(executable, graph)
                samples.append(time.perf_counter() - start)
                if refused is not None:
                    return {"refused": refused}
    return {"median_ms": 1e3 * statistics.median(samples), "switches": len(samples)} if samples else None


def replay(engine: Engine, restored: Restored, classes: list[TopologyClass], effort: Effort) -> dict[str, object]:
    """The replay variant: every graph made every way, outputs compared, latency timed."""
    import torch

    from foundry_trace.archive.keys import group_of
    from foundry_trace.bench.verify import restored_batches, saved_references

    saved = saved_references(restored.archive.manifest)
    class_of = {key: cls for cls in classes for key in cls.keys}
    maker = Maker(restored, Clock())
    digests: dict[int, dict[str, str]] = {}
    kept: list[Step] = []
    updated: Counter = Counter()
    for batch in restored_batches(restored):
        keys = [key for key in restored.graphs if group_of(key) == str(batch)]
        timed_batch = batch in LATENCY_BATCHES
        with annotate(f"exec_update replay make {batch}"):
            step = make_step(maker, batch, keys, class_of, keep_graphs=timed_batch)
        updated.update(step.updated)
        with annotate(f"exec_update replay digests {batch}"):
            digests[batch] = step_digests(engine, restored, step)
        if timed_batch:
            kept.append(step)
        else:
            torch.cuda.synchronize()
            destroy_executables(step.all_executables())
    latency, switches = {}, {}
    for step in kept:
        with annotate(f"exec_update replay latency {step.batch}"):
            latency[str(step.batch)] = step_latency(engine, restored, step, effort)
        with annotate(f"exec_update replay switch {step.batch}"):
            switches[str(step.batch)] = switch_seconds(maker, step, class_of)
    torch.cuda.synchronize()
    for step in kept:
        destroy_executables(step.all_executables())
        for graph in step.own.values():
            maker.destroy_graph(graph)
    maker.release_sources()
    return {
        "updated_graphs": dict(updated),
        "bitwise": bitwise(digests, saved),
        "latency": latency,
        "switch": switches,
        "update_results": dict(maker.results),
        "not_updated": len(maker.fallbacks),
        "first_not_updated": maker.fallbacks[:12],
    }


def child(archive: str, variant: str) -> dict[str, object]:
    import foundry_alloc

    foundry_alloc.install()
    import torch

    from foundry_trace.bench.driver_alone import modules_loaded
    from foundry_trace.bench.results import device_fields
    from foundry_trace.bench.verify import effort_of

    name, options, engine = engine_of(archive)  # kept alive: LOAD compares its memory with SAVE's
    torch.cuda.synchronize()
    head = {"variant": variant, "workload": name, "options": {k: str(v) for k, v in options.items()}, **device_fields()}
    with modules_loaded(archive) as lazy:
        classes = topology_classes(lazy.archive, LATENCY_BATCHES)
        head["class_sizes"] = [len(cls.keys) for cls in classes]
        if variant == "replay":
            return {**head, **replay(engine, lazy, classes, effort_of(name))}
        if variant.startswith("cold-"):
            return {**head, **cold(lazy, classes, variant.removeprefix("cold-"))}
    raise ValueError(f"unknown variant {variant!r}: cold-STRATEGY ({', '.join(STRATEGIES)}) or replay")


if __name__ == "__main__":
    probe_main(MODULE, child, VARIANTS, prologue=shapes)

"""The exec-update probe's CPU side (issue 35, item 4): topology classes from node tables, what
differs node by node, the nodes a SAVE could drop, and how each strategy makes executables
(its GPU run is tools/gpu-check's exec-update:W)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from foundry_trace.archive._node_table import encode
from foundry_trace.archive.format import Archive
from foundry_trace.archive.records import (
    ChildGraphNode,
    Edge,
    EmptyNode,
    EventRecordNode,
    EventWaitNode,
    FunctionRecord,
    GraphBody,
    KernelNode,
    MemcpyNode,
    MemsetNode,
    ModuleRecord,
)
from foundry_trace.bench.probes import exec_update
from foundry_trace.bench.probes.node_reduction import archive_candidates, reduction_report, sequence_points
from foundry_trace.bench.probes.topology import TopologyClass, node_changes, topology_classes, topology_of

from .archive_samples import _digest, _manifest, graph_bodies, graph_entry, write_archive

BASE = 0x200000000000


def kernel(function: int = 0, grid: int = 4, arguments: bytes = b"\0" * 8, attributes: dict | None = None) -> KernelNode:
    return KernelNode(function=function, grid=(grid, 1, 1), block=(128, 1, 1), shared_bytes=0, arguments=arguments, attributes=attributes or {})


def memset(destination: int, width: int, height: int = 1, pitch: int = 0, value: int = 0) -> MemsetNode:
    return MemsetNode(destination=destination, pitch=pitch, value=value, element_size=4, width=width, height=height)


def copy(source: int, destination: int, size: int) -> MemcpyNode:
    return MemcpyNode(
        source=source, source_pitch=0, source_height=0, source_offset=(0, 0, 0), destination=destination, destination_pitch=0,
        destination_height=0, destination_offset=(0, 0, 0), extent=(size, 1, 1),
    )


def chain(*nodes) -> GraphBody:  # noqa: ANN002 - nodes
    """A single-stream capture: each node after the one before."""
    return GraphBody(nodes=tuple(nodes), edges=tuple(Edge(source=i, destination=i + 1) for i in range(len(nodes) - 1)))


def archive_of(tmp_path: Path, bodies: dict[str, GraphBody]) -> Path:
    """An archive (in the test's folder) holding `bodies` under their keys."""
    module = b"\x7fELF" + bytes(64)
    functions = (FunctionRecord(module=0, name="_Z1av"), FunctionRecord(module=0, name="_Z1bv"))
    blobs: list[bytes] = [module]
    templates: list[str] = []
    graphs = tuple(graph_entry(key, body, functions, blobs, templates) for key, body in bodies.items())
    modules = (ModuleRecord(digest=_digest(module), size=len(module), loaded_size=len(module), entries=2),)
    manifest = _manifest(modules, functions, tuple(templates), graphs, (), events=9)
    path = tmp_path / "shapes.foundry"
    write_archive(path, manifest, blobs)
    return path


# -- topology --------------------------------------------------------------------------------


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(graph_bodies(3, depth=2))
def test_the_topology_read_from_a_table_is_the_encoders(body: GraphBody) -> None:
    encoded = encode(body)
    assert topology_of(encoded.table) == encoded.topology


def test_graphs_with_the_same_kinds_and_edges_share_a_class_whatever_their_parameters(tmp_path: Path) -> None:
    step = chain(memset(BASE, 64), kernel(0, 4), kernel(1, 8), EventRecordNode(event=1))
    path = archive_of(tmp_path, {
        "1": step,
        "2": chain(memset(BASE + 4096, 128), kernel(1, 16, b"\1" * 8), kernel(0, 2), EventRecordNode(event=2)),  # parameters differ
        "4": chain(memset(BASE, 64), kernel(0, 4), EventRecordNode(event=1), kernel(1, 8)),  # kinds in another order
        "8": GraphBody(nodes=step.nodes, edges=(Edge(source=0, destination=1), Edge(source=0, destination=2), Edge(source=2, destination=3))),
        "64": chain(memset(BASE, 32), kernel(0, 64), kernel(1, 64), EventRecordNode(event=3)),
    })
    with Archive(path) as archive:
        classes = topology_classes(archive, avoid=(1, 64))
        report = exec_update.shapes(str(path))
    assert sorted(cls.keys for cls in classes) == [("1", "2", "64"), ("4",), ("8",)]
    assert classes[0].representative == "2"  # the first graph whose batch is not timed
    assert classes[0].others == ("1", "64")
    topology = report["topology"]
    assert (topology["classes"], topology["singletons"], topology["updatable_graphs"]) == (3, 2, 2)
    assert topology["agrees_with_templates"] is True


def test_a_class_takes_its_first_graph_where_every_batch_is_timed(tmp_path: Path) -> None:
    body = chain(kernel(0, 4), kernel(1, 8))
    path = archive_of(tmp_path, {"64": body, "1": chain(kernel(0, 2), kernel(1, 2))})
    with Archive(path) as archive:
        (cls,) = topology_classes(archive, avoid=(1, 64))
    assert cls.keys == ("1", "64") and cls.representative == "1"


def test_node_changes_names_the_changed_nodes_and_what_the_node_path_cannot_set() -> None:
    source = chain(memset(BASE, 64), kernel(0, 4), kernel(1, 8), copy(BASE, BASE + 4096, 256), EventWaitNode(event=1))
    target = chain(memset(BASE, 128), kernel(0, 4), kernel(0, 8), copy(BASE, BASE + 8192, 256), EventWaitNode(event=2))
    changes = node_changes(source, target)
    assert changes.changed == (0, 2, 3, 4)
    assert changes.by_kind == Counter({"memset": 1, "kernel": 1, "memcpy": 1, "event_wait": 1})
    assert changes.blockers == ()
    attributed = chain(memset(BASE, 64), kernel(0, 4, attributes={1: b"\1" * 64}), kernel(1, 8), copy(BASE, BASE + 4096, 256), EventWaitNode(event=1))
    flat = chain(memset(BASE, 64, height=2, pitch=256), kernel(0, 4), kernel(1, 8), copy(BASE, BASE + 4096, 256), EventWaitNode(event=1))
    assert [b.split(":")[0] for b in node_changes(source, attributed).blockers] == ["node 1"]
    assert "2D memset" in node_changes(source, flat).blockers[0]
    nested = GraphBody(nodes=(ChildGraphNode(graph=chain(kernel(0, 4))),), edges=())
    other = GraphBody(nodes=(ChildGraphNode(graph=chain(kernel(0, 8))),), edges=())
    assert "graph node differs" in node_changes(nested, other).blockers[0]
    assert node_changes(source, source).changed == ()
    with pytest.raises(ValueError, match="as many nodes"):
        node_changes(source, chain(kernel(0, 4)))


# -- node reduction --------------------------------------------------------------------------


def test_sequence_points_are_the_nodes_ordered_against_all_others() -> None:
    diamond = GraphBody(
        nodes=(kernel(), kernel(), kernel(), kernel(), kernel()),
        edges=(Edge(source=0, destination=1), Edge(source=0, destination=2), Edge(source=1, destination=3), Edge(source=2, destination=3),
               Edge(source=3, destination=4)),
    )
    assert sequence_points(diamond) == {0, 3, 4}
    assert sequence_points(chain(kernel(), kernel(), kernel())) == {0, 1, 2}


def _rules(found: dict) -> dict[str, list[tuple[str, int]]]:  # noqa: ANN001
    rules: dict[str, list[tuple[str, int]]] = {}
    for key, candidates in found.items():
        for candidate in candidates:
            rules.setdefault(candidate.rule, []).append((key, candidate.node))
    return rules


def test_each_rule_counts_the_node_it_proves_dead_in_a_single_stream_graph() -> None:
    body = chain(
        memset(BASE, 64),                  # 0: overwritten by 1 before anything reads it
        memset(BASE, 128),                 # 1: read by the kernel next: kept
        kernel(),                          # 2
        EventRecordNode(event=3),          # 3: its only wait is redundant: unobserved once that goes
        EventWaitNode(event=3),            # 4: waits for the record just before it
        EmptyNode(),                       # 5
        copy(BASE, BASE + 4096, 0),        # 6: zero bytes
        kernel(),                          # 7
    )
    found = archive_candidates({"8": body})
    assert _rules(found) == {
        "overwritten_before_read": [("8", 0)], "redundant_wait": [("8", 4)], "unobserved_record": [("8", 3)],
        "empty": [("8", 5)], "zero_bytes": [("8", 6)],
    }
    assert all(not isinstance(body.nodes[c.node], KernelNode) for c in found["8"])
    report = reduction_report({"8": body})
    assert report["droppable"] == 5 and report["nodes"] == 8
    assert report["edges_added"] == 4  # each dropped node of a chain joins its two neighbours (the first has none before it)


def test_a_copy_is_kept_where_anything_may_read_it_first() -> None:
    kept = {
        "read by the copy that rewrites it": chain(memset(BASE + 4096, 16), copy(BASE + 4096, BASE + 4000, 256)),
        "not rewritten by the copy after": chain(memset(BASE, 64), copy(BASE, BASE + 4096, 256)),
        "partly rewritten": chain(memset(BASE, 64), memset(BASE, 32)),
        "a kernel between": chain(memset(BASE, 64), kernel(), memset(BASE, 64)),
        "beside a kernel": GraphBody(
            nodes=(kernel(), memset(BASE, 64), memset(BASE, 64), kernel()),
            edges=(Edge(source=0, destination=1), Edge(source=1, destination=2), Edge(source=0, destination=3)),
        ),
        "a kernel beside it, joined before the rewrite": GraphBody(
            nodes=(kernel(), kernel(), memset(BASE, 64), memset(BASE, 64)),
            edges=(Edge(source=0, destination=2), Edge(source=1, destination=3), Edge(source=2, destination=3)),
        ),
        "too many rows": chain(memset(BASE, 1, height=5000, pitch=16), memset(BASE, 1 << 20)),
    }
    for why, body in kept.items():
        assert "overwritten_before_read" not in _rules(archive_candidates({"1": body})), why
    rewritten_by_copy = chain(copy(BASE + 8192, BASE, 64), copy(BASE + 4096, BASE, 256))
    assert _rules(archive_candidates({"1": rewritten_by_copy})) == {"overwritten_before_read": [("1", 0)]}


def test_events_other_graphs_use_are_kept() -> None:
    pair = chain(kernel(), EventRecordNode(event=2), EventWaitNode(event=2), kernel())
    recorded_elsewhere = archive_candidates({"1": pair, "2": chain(EventRecordNode(event=2), kernel())})
    assert "redundant_wait" not in _rules(recorded_elsewhere)
    waited_elsewhere = archive_candidates({"1": chain(kernel(), EventRecordNode(event=5)), "2": chain(EventWaitNode(event=5), kernel())})
    assert "unobserved_record" not in _rules(waited_elsewhere)
    forked = GraphBody(
        nodes=(kernel(), EventRecordNode(event=2), EventWaitNode(event=2), kernel()),
        edges=(Edge(source=0, destination=1), Edge(source=1, destination=2), Edge(source=0, destination=3)),
    )
    assert "redundant_wait" not in _rules(archive_candidates({"1": forked}))


def test_inside_a_child_graph_only_an_ordered_child_counts_overwrites() -> None:
    child = chain(memset(BASE, 64), memset(BASE, 64))
    ordered = chain(kernel(), ChildGraphNode(graph=child), kernel())
    beside = GraphBody(nodes=(kernel(), ChildGraphNode(graph=child), kernel()), edges=(Edge(source=0, destination=1),))
    assert [(c.rule, c.path, c.node) for c in archive_candidates({"1": ordered})["1"]] == [("overwritten_before_read", (1,), 0)]
    assert archive_candidates({"1": beside})["1"] == []


# -- the strategies' plans -------------------------------------------------------------------


class PlanningMaker:
    """Stands in for exec_update.Maker without a driver: counts what each strategy asks of it."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.sources: dict[str, object] = {}
        self.fallbacks: list[dict[str, str]] = []
        self.handles = iter(range(1000, 10**6))

    def build(self, key: str) -> int:
        self.calls["build"] += 1
        return next(self.handles)

    def instantiate(self, graph: int, key: str) -> int:
        self.calls["instantiate"] += 1
        return next(self.handles)

    def destroy_graph(self, graph: int) -> None:
        self.calls["destroy_graph"] += 1

    def source(self, key: str, with_nodes: bool) -> exec_update.Source:
        if key not in self.sources:
            self.sources[key] = exec_update.Source(key, self.build(key))
        return self.sources[key]

    def release_sources(self) -> None:
        self.calls["destroy_graph"] += len(self.sources)
        self.sources.clear()

    def by_graph_update(self, key: str, source: exec_update.Source, own: int) -> int | None:
        self.calls["update"] += 1
        return None if key == "refused" else self.instantiate(source.graph, key)

    def by_node_update(self, key: str, source: exec_update.Source) -> tuple[int | None, str | None]:
        self.calls["set_nodes"] += 1
        return (self.instantiate(source.graph, key), None) if key != "refused" else (None, "attributes differ")

    def fall_back(self, key: str, why: str, own: int | None = None) -> int:
        self.calls["fallback"] += 1
        graph = own if own is not None else self.build(key)
        executable = self.instantiate(graph, key)
        if own is None:
            self.destroy_graph(graph)
        return executable


CLASSES = [TopologyClass("a", ("1", "2", "4", "refused"), "2", 10), TopologyClass("b", ("8",), "8", 10)]


@pytest.mark.parametrize(("strategy", "builds", "instantiations", "executables"), [
    ("instantiate", 5, 5, 5),
    ("graph-update", 5, 5, 5),   # the representatives' graphs once, every other graph's for its update
    ("node-update", 3, 5, 5),    # the representatives and the graph the node path cannot make
    ("shared", 5, 2, 2),         # one executable a class
])
def test_each_strategy_makes_every_executable_with_the_builds_it_needs(strategy: str, builds: int, instantiations: int, executables: int) -> None:
    maker = PlanningMaker()
    made = exec_update.make_all(maker, CLASSES, strategy)
    assert (maker.calls["build"], maker.calls["instantiate"], len(made)) == (builds, instantiations, executables)
    assert maker.calls["destroy_graph"] == builds  # nothing built is left behind
    assert maker.calls["fallback"] == (1 if strategy in ("graph-update", "node-update") else 0)
    with pytest.raises(ValueError, match="unknown strategy"):
        exec_update.make_all(maker, CLASSES, "clone")


def test_a_step_holds_every_graph_of_every_kind_updated_wherever_its_class_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exec_update, "update", lambda executable, graph: None)
    monkeypatch.setattr(exec_update, "destroy_executables", lambda executables: None)
    classes = [TopologyClass("a", ("1", "2", "4"), "2", 10), TopologyClass("b", ("8",), "8", 10)]
    class_of = {key: cls for cls in classes for key in cls.keys}
    maker = PlanningMaker()
    step = exec_update.make_step(maker, 2, ["2", "8"], class_of, keep_graphs=True)
    assert set(step.made) == {"instantiated", "graph-update", "node-update", "self-update"}
    assert all(set(by_key) == {"2", "8"} for by_key in step.made.values())
    assert step.made["graph-update"]["2"] != step.made["instantiated"]["2"]  # the representative, from another graph of its class
    assert set(maker.sources) == {"1"}
    assert step.made["graph-update"]["8"] == step.made["node-update"]["8"] == step.made["instantiated"]["8"]  # alone in its class
    assert step.updated == Counter({"graph-update": 1, "node-update": 1, "self-update": 2})
    assert set(step.own) == {"2", "8"} and maker.calls["destroy_graph"] == 0
    untimed = exec_update.make_step(maker, 4, ["4"], class_of, keep_graphs=False)
    assert untimed.own == {} and maker.calls["destroy_graph"] == 1


def test_bitwise_names_the_batches_an_updated_kind_changes() -> None:
    digests = {
        1: {"instantiated": "a", "graph-update": "a", "node-update": "a", "self-update": "a"},
        2: {"instantiated": "b", "graph-update": "x", "self-update": "b"},
        4: {"instantiated": "c", "self-update": "c"},
    }
    saved = {"1": {"digest": "a", "deterministic": True}, "2": {"digest": "b", "deterministic": True},
             "4": {"digest": "z", "deterministic": False}}
    report = exec_update.bitwise(digests, saved)
    assert report["graph-update"] == {"batches": 2, "differ_from_instantiated": [2], "differ_from_saved": [2],
                                      "nondeterministic_saved": [], "bitwise_equal": False}
    assert report["node-update"]["bitwise_equal"] is True and report["node-update"]["batches"] == 1
    assert report["self-update"]["nondeterministic_saved"] == [4] and report["self-update"]["bitwise_equal"] is True
    assert report["instantiated"]["differ_from_saved"] == []


class _Output:
    """Stands in for a restored graph: its output tensor (on the CPU), shared by every kind's executable."""

    def __init__(self, size: int) -> None:
        import torch

        self.outputs = {"logits": torch.zeros(size, dtype=torch.bfloat16)}


class _Launches:
    """Stands in for exec_update.Executables: executable 1 writes the step's right output, executable 2
    (an update that left the output node pointing elsewhere) writes nothing."""

    def __init__(self, executables: dict[str, int], restored: object) -> None:
        self.executables, self.restored = executables, restored

    def __getitem__(self, key: object) -> object:
        output = self.restored.graphs[str(key)].outputs["logits"]
        executable = self.executables[str(key)]

        class Launch:
            outputs = {"logits": output}

            @staticmethod
            def replay() -> None:
                if executable == 1:
                    output.fill_(3.0)

        return Launch


class _Engine:
    def prepare(self, batch: int, seed: int) -> None:
        pass

    def restored_step(self, restored: object, batch: int) -> tuple[object, object]:
        graph = restored[batch]
        return graph.replay, graph.outputs["logits"]


def test_an_executable_that_writes_nothing_is_not_taken_for_the_one_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind's executables write the same output tensor: an update that leaves the output
    unwritten must not show the instantiated executable's bits as its own."""

    class Restored:
        graphs = {"4": _Output(8)}

    monkeypatch.setattr(exec_update, "Executables", _Launches)
    step = exec_update.Step(4, {"instantiated": {"4": 1}, "graph-update": {"4": 2}, "node-update": {"4": 1}, "self-update": {"4": 1}},
                            Counter({"graph-update": 1}), {})
    digests = exec_update.step_digests(_Engine(), Restored(), step)
    assert set(digests) == {"instantiated", "graph-update"}
    assert digests["graph-update"] != digests["instantiated"]


def test_a_kind_that_updated_no_graph_has_no_bitwise_verdict() -> None:
    report = exec_update.bitwise({1: {"instantiated": "a"}, 2: {"instantiated": "b"}}, None)
    assert report["graph-update"] == {"batches": 0, "differ_from_instantiated": [], "bitwise_equal": None}
    assert report["instantiated"]["bitwise_equal"] is True


def test_the_default_runs_replay_before_the_cold_rounds() -> None:
    """A device call cut short by its time limit keeps what decides adoption (outputs, latency)."""
    assert exec_update.VARIANTS[0] == "replay" and exec_update.VARIANTS.count("cold-instantiate") == exec_update.COLD_ROUNDS

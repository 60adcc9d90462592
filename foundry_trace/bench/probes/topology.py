"""Which graphs of an archive cuGraphExecUpdate could turn into one another (issue 35, item 4).

The driver updates an executable in place from a graph of the same topology: as many nodes
directly in the graph, paired in creation order, each of the same type, with the same
dependencies paired in edge order (cuGraphExecUpdate's TOPOLOGY_CHANGED and NODE_TYPE_CHANGED
conditions). LOAD creates a graph's nodes in node-table order and its edges in table order, so
two graphs whose tables hold the same node kinds and the same edges, in the same order, body by
body (child graphs included), are candidates: the parameters of their nodes may differ, their
shape may not. That is the node table's own `topology` digest (the encoder's, which SAVE stores
as each graph's template), recomputed here from the tables themselves so the probe does not
take the manifest's word for it.

Within a topology class the driver may still refuse a node (a 2D memset changed, launch
attributes changed, ...): `node_changes` names what differs between two graphs of a class, and
which differences the per-node update path (cuGraphExec*SetParams) cannot express at all.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from foundry_trace.archive._node_table import BODY, EDGE, HEADER, NODE
from foundry_trace.archive.format import Archive
from foundry_trace.archive.keys import batch_of, serving_order
from foundry_trace.archive.records import ChildGraphNode, CollectiveNode, GraphBody, KernelNode, MemsetNode, Node


def topology_of(table: bytes) -> str:
    """The topology digest of a node table (one the native check accepted): for each body in
    table order, its node kind codes and its edge entries in table order, then a separator;
    the recipe of the encoder's EncodedGraph.topology, so equal digests mean equal kinds and
    edges in the same order (the test holds the two to each other)."""
    _magic, _version, body_count, node_count, _edge_count = HEADER.unpack_from(table, 0)
    nodes_at = HEADER.size + body_count * BODY.size
    edges_at = nodes_at + node_count * NODE.size
    shape = hashlib.sha256()
    for body in range(body_count):
        first_node, nodes, first_edge, edges = BODY.unpack_from(table, HEADER.size + body * BODY.size)
        start = nodes_at + first_node * NODE.size
        shape.update(table[start : start + nodes * NODE.size : NODE.size])  # each node entry's first byte: its kind
        shape.update(table[edges_at + first_edge * EDGE.size : edges_at + (first_edge + edges) * EDGE.size])
        shape.update(b"|")
    return shape.hexdigest()


@dataclass(frozen=True)
class TopologyClass:
    """Graphs of one topology, in serving order, and the one instantiated for all of them."""

    topology: str
    keys: tuple[str, ...]
    representative: str
    nodes: int  # work nodes of each graph (the entry's count)

    @property
    def others(self) -> tuple[str, ...]:
        return tuple(key for key in self.keys if key != self.representative)


def topology_classes(archive: Archive, avoid: tuple[int, ...] = ()) -> list[TopologyClass]:
    """The archive's graphs grouped by the topology of their node tables, largest class first.
    Each class's representative is its first graph in serving order whose batch is not in
    `avoid` (the batch sizes whose replay is timed: a representative is instantiated, never
    updated, so it would have no updated executable to time), else its first graph."""
    by_topology: dict[str, list[str]] = {}
    nodes: dict[str, int] = {}
    for entry in serving_order(archive.manifest.graphs):
        table, _payload = archive.graph_blobs(entry)
        digest = topology_of(table)
        by_topology.setdefault(digest, []).append(entry.key)
        nodes[digest] = entry.nodes
    classes = []
    for digest, keys in by_topology.items():
        preferred = [key for key in keys if batch_of(key) not in avoid]
        classes.append(TopologyClass(digest, tuple(keys), (preferred or keys)[0], nodes[digest]))
    return sorted(classes, key=lambda c: (-len(c.keys), c.keys[0]))


def classes_report(classes: list[TopologyClass], stored: dict[str, str] | None = None) -> dict[str, object]:
    """What the probe prints of the classes: how many graphs share a topology, and the most
    executables an update path could avoid instantiating from their own graphs (a class of n
    graphs: n - 1). `stored`: each key's template digest as SAVE stored it in the manifest; the
    classes must agree with it (the same digest, computed by the encoder then and here now)."""
    report: dict[str, object] = {
        "graphs": sum(len(c.keys) for c in classes),
        "classes": len(classes),
        "singletons": sum(1 for c in classes if len(c.keys) == 1),
        "updatable_graphs": sum(len(c.others) for c in classes),
        "class_sizes": [len(c.keys) for c in classes],
        "members": [{"representative": c.representative, "keys": list(c.keys), "nodes": c.nodes} for c in classes],
    }
    if stored is not None:
        report["agrees_with_templates"] = all(stored[key] == c.topology for c in classes for key in c.keys)
    return report


def stored_topologies(archive: Archive) -> dict[str, str]:
    """Each graph's template digest as SAVE stored it (the encoder's topology at SAVE)."""
    return {entry.key: archive.manifest.templates[entry.template] for entry in archive.manifest.graphs}


@dataclass(frozen=True)
class NodeChanges:
    """How a graph differs from its class's representative, node by node (top-level nodes, in
    table order): the indices whose records differ, counted by kind, and `blockers`, the
    differences the per-node update path cannot make (there the graph is instantiated from its
    own build instead)."""

    changed: tuple[int, ...]
    by_kind: Counter = field(default_factory=Counter)
    blockers: tuple[str, ...] = ()


def node_changes(source: GraphBody, target: GraphBody) -> NodeChanges:
    """What turning an executable of `source` into one of `target` node by node takes (the two
    of one topology class). A node path sets each changed node's parameters on the executable
    (cuGraphExecKernelNodeSetParams, ...Memset..., ...Memcpy..., ...EventRecordNodeSetEvent,
    ...EventWaitNodeSetEvent); it cannot change a kernel's launch attributes (no executable
    setter exists: only a whole-graph update carries them), a 2D memset (the driver updates 1D
    memsets only), or a child graph or collective (their bodies would need building)."""
    if len(source.nodes) != len(target.nodes):
        raise ValueError(f"graphs of one topology have as many nodes: {len(source.nodes)} and {len(target.nodes)}")
    changed, kinds, blockers = [], Counter(), []
    for index, (old, new) in enumerate(zip(source.nodes, target.nodes, strict=True)):
        if old == new:
            continue
        changed.append(index)
        kinds[new.kind] += 1
        reason = _node_path_blocker(old, new)
        if reason is not None:
            blockers.append(f"node {index}: {reason}")
    return NodeChanges(tuple(changed), kinds, tuple(blockers))


def _node_path_blocker(old: Node, new: Node) -> str | None:
    """Why a changed node cannot be set on an executable node by node, or None where it can."""
    if isinstance(new, KernelNode) and isinstance(old, KernelNode) and new.attributes != old.attributes:
        return "launch attributes differ (no executable-side setter)"
    if isinstance(new, MemsetNode) and isinstance(old, MemsetNode) and (new.height > 1 or old.height > 1):
        return "a 2D memset differs (the driver updates 1D memsets only)"
    if isinstance(new, (ChildGraphNode, CollectiveNode)):
        return f"a {new.kind} node differs (its graph would need building)"
    return None

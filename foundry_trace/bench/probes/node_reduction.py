"""Nodes a SAVE could drop without changing any output bit (issue 35, item 4): counted only.

A cold LOAD pays the driver about 5.5 us a node, so every node SAVE did not store is time saved
at every restore. This module counts, from decoded node tables, the nodes that provably do
nothing observable; it changes nothing (SAVE stores every node). Each rule is conservative:
where the records do not prove a node is dead (a kernel's effects, which its arguments do not
describe), it is kept. A dropped node's predecessors would be joined to its successors, so every
ordering between the remaining nodes stays as it was; `edges_added` counts those joins (less
the edges that exist already).

The rules, and why each keeps every output:

- `empty`: an empty node does no work; it only orders. Joining its predecessors to its
  successors keeps every ordering it carried.
- `zero_bytes`: a memset or memcpy of zero bytes (a zero width, height or depth) writes nothing.
- `overwritten_before_read`: a memset or memcpy M whose every written byte is written again by
  the very next node W (a memset, or a memcpy that does not read those bytes), where M and W
  are both ordered against every other node of the graph (a "sequence point": all earlier
  nodes are its ancestors and all later ones its descendants; a single-stream capture is a
  chain of them). No node runs between M and W or beside them, so nothing can read M's bytes
  before W replaces them. Kernels between would break it (what a kernel reads is unknown), so
  only adjacent pairs count. Inside a child graph the rule applies only where the child-graph
  node is itself such a point of its parent (recursively).
- `redundant_wait`: an event wait on e that directly follows the record of e, both sequence
  points, where no other graph of the archive records e: the wait waits for work that the
  edge from the record already orders before it. (LOAD creates the archive's events itself and
  hands them to no caller, so only the archive's own graphs record or wait on them.)
- `unobserved_record`: an event record of e where no graph of the archive waits on e (after the
  redundant waits are gone): nothing can observe the event, since only the archive's graphs
  hold it.

Kernels are never candidates: an "empty" kernel cannot be told from its launch record (its code
is in the module, its effects are not in the table).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from foundry_trace.archive._node_table import topological_order
from foundry_trace.archive.format import Archive
from foundry_trace.archive.records import (
    ChildGraphNode,
    EmptyNode,
    EventRecordNode,
    EventWaitNode,
    GraphBody,
    MemcpyNode,
    MemsetNode,
    Node,
    walk_nodes,
)

RULES = ("empty", "zero_bytes", "overwritten_before_read", "redundant_wait", "unobserved_record")
MAX_ROWS = 4096  # rows of a 2D/3D copy or memset worked out byte range by byte range; larger ones are not candidates

Ranges = list[tuple[int, int]]  # [start, end) byte ranges


@dataclass(frozen=True)
class Candidate:
    """One node a SAVE could drop: which rule, where (the body's path of child-node indices
    from the top, and the node's index there), and the edges joining its neighbours would add
    (were it dropped alone)."""

    rule: str
    path: tuple[int, ...]
    node: int
    edges_added: int


@dataclass(frozen=True)
class EventUse:
    """Which graphs of an archive record and wait on each event (by archive event index)."""

    recorders: dict[int, frozenset[str]]
    waits: Counter  # waits on each event, all graphs together


def event_use(bodies: dict[str, GraphBody]) -> EventUse:
    """The recorders and waits of every event over the archive's graphs (child graphs included)."""
    recorders: dict[int, set[str]] = {}
    waits: Counter = Counter()
    for key, body in bodies.items():
        for node in walk_nodes(body.nodes):
            if isinstance(node, EventRecordNode):
                recorders.setdefault(node.event, set()).add(key)
            elif isinstance(node, EventWaitNode):
                waits[node.event] += 1
    return EventUse({event: frozenset(keys) for event, keys in recorders.items()}, waits)


def sequence_points(body: GraphBody) -> set[int]:
    """The nodes ordered against every other node of the body: all nodes before them in a
    topological order are their ancestors, all after it their descendants. Ancestor and
    descendant sets are bit sets (a few thousand nodes a graph: cheap)."""
    count = len(body.nodes)
    order = topological_order(count, body.edges)
    position = {node: index for index, node in enumerate(order)}
    predecessors: list[list[int]] = [[] for _ in range(count)]
    successors: list[list[int]] = [[] for _ in range(count)]
    for edge in body.edges:
        predecessors[edge.destination].append(edge.source)
        successors[edge.source].append(edge.destination)
    ancestors, descendants = [0] * count, [0] * count
    for node in order:
        for source in predecessors[node]:
            ancestors[node] |= ancestors[source] | (1 << source)
    for node in reversed(order):
        for destination in successors[node]:
            descendants[node] |= descendants[destination] | (1 << destination)
    return {
        node for node in range(count)
        if ancestors[node].bit_count() == position[node] and descendants[node].bit_count() == count - 1 - position[node]
    }


def written_ranges(node: Node) -> Ranges | None:
    """The bytes a memset or memcpy writes, as ranges; None where it is too many rows to list
    (or not a copy at all)."""
    if isinstance(node, MemsetNode):
        row = node.width * node.element_size
        if node.height > MAX_ROWS:
            return None
        return _merged([(node.destination + y * node.pitch, node.destination + y * node.pitch + row) for y in range(node.height)])
    if isinstance(node, MemcpyNode):
        return _copy_ranges(node.destination, node.destination_pitch, node.destination_height, node.destination_offset, node.extent)
    return None


def read_ranges(node: MemcpyNode) -> Ranges | None:
    """The bytes a memcpy reads; None where too many rows to list."""
    return _copy_ranges(node.source, node.source_pitch, node.source_height, node.source_offset, node.extent)


def _copy_ranges(base: int, pitch: int, height: int, offset: tuple[int, int, int], extent: tuple[int, int, int]) -> Ranges | None:
    """A 3D device copy's rows: row (y, z) starts at base + ((oz + z) * height + oy + y) * pitch + ox
    (CUDA_MEMCPY3D's addressing) and is `width` bytes long."""
    width, rows, depth = extent
    if rows * depth > MAX_ROWS:
        return None
    ox, oy, oz = offset
    return _merged([
        (start, start + width)
        for z in range(depth)
        for y in range(rows)
        for start in (base + ((oz + z) * height + oy + y) * pitch + ox,)
    ])


def _merged(ranges: Ranges) -> Ranges:
    merged: Ranges = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _covers(outer: Ranges, inner: Ranges) -> bool:
    """Every byte of `inner` lies in `outer` (both merged)."""
    return all(any(start <= s and e <= end for start, end in outer) for s, e in inner)


def _overlap(a: Ranges, b: Ranges) -> bool:
    return any(s < end and start < e for s, e in a for start, end in b)


def _writes_nothing(node: Node) -> bool:
    if isinstance(node, MemsetNode):
        return node.width == 0 or node.height == 0
    if isinstance(node, MemcpyNode):
        return 0 in node.extent
    return False


def _overwritten_by(node: Node, following: Node) -> bool:
    """`node` (a memset or memcpy) writes only bytes that `following` writes again without
    reading them first."""
    if not isinstance(node, (MemsetNode, MemcpyNode)) or not isinstance(following, (MemsetNode, MemcpyNode)):
        return False
    written, rewritten = written_ranges(node), written_ranges(following)
    if not written or rewritten is None or not _covers(rewritten, written):
        return False
    if isinstance(following, MemcpyNode):
        read = read_ranges(following)
        return read is not None and not _overlap(read, written)
    return True


def body_candidates(
    key: str, body: GraphBody, events: EventUse, removed_waits: Counter, path: tuple[int, ...] = (), ordered: bool = True
) -> list[Candidate]:
    """The candidates of one body (and its child graphs), except unobserved records, which need
    every graph's redundant waits first (archive_candidates). `ordered`: whether this body runs
    with nothing beside it (the top body; a child graph whose node is a sequence point of an
    ordered body). `removed_waits` gains the redundant waits found, by event."""
    points = sequence_points(body) if ordered else set()
    order = topological_order(len(body.nodes), body.edges)
    following = dict(zip(order, order[1:]))
    preceding = dict(zip(order[1:], order))
    found: list[Candidate] = []
    for index, node in enumerate(body.nodes):
        rule = _rule_of(key, body, index, (preceding.get(index), following.get(index)), points, events)
        if rule is not None:
            if rule == "redundant_wait":
                removed_waits[node.event] += 1
            found.append(Candidate(rule, path, index, _edges_added(body, index)))
        if isinstance(node, ChildGraphNode):
            found += body_candidates(key, node.graph, events, removed_waits, (*path, index), ordered and index in points)
    return found


def _rule_of(
    key: str, body: GraphBody, index: int, neighbours: tuple[int | None, int | None], points: set[int], events: EventUse
) -> str | None:
    """The first rule that makes node `index` droppable, or None. `neighbours`: the nodes just
    before and after it in topological order; `points`: the body's sequence points (none where
    the body may run beside other work)."""
    node = body.nodes[index]
    if isinstance(node, EmptyNode):
        return "empty"
    if _writes_nothing(node):
        return "zero_bytes"
    before, after = neighbours
    if index not in points:
        return None
    if after in points and _overwritten_by(node, body.nodes[after]):
        return "overwritten_before_read"
    if (
        isinstance(node, EventWaitNode) and before in points and events.recorders.get(node.event) == frozenset({key})
        and isinstance(body.nodes[before], EventRecordNode) and body.nodes[before].event == node.event
    ):
        return "redundant_wait"
    return None


def _edges_added(body: GraphBody, index: int) -> int:
    """Edges a drop of node `index` adds: each predecessor joined to each successor, less the
    joins that exist already."""
    before = {e.source for e in body.edges if e.destination == index}
    after = {e.destination for e in body.edges if e.source == index}
    existing = {(e.source, e.destination) for e in body.edges}
    return sum(1 for b in before for a in after if (b, a) not in existing)


def _records(body: GraphBody, path: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], int, EventRecordNode]]:
    for index, node in enumerate(body.nodes):
        if isinstance(node, EventRecordNode):
            yield path, index, node
        elif isinstance(node, ChildGraphNode):
            yield from _records(node.graph, (*path, index))


def _body_at(body: GraphBody, path: tuple[int, ...]) -> GraphBody:
    for index in path:
        body = body.nodes[index].graph
    return body


def archive_candidates(bodies: dict[str, GraphBody]) -> dict[str, list[Candidate]]:
    """Every graph's candidates (`bodies`: each graph's decoded records, by key)."""
    events = event_use(bodies)
    removed: Counter = Counter()
    found = {key: body_candidates(key, body, events, removed) for key, body in bodies.items()}
    for key, body in bodies.items():
        for path, index, node in _records(body):
            if events.waits[node.event] - removed[node.event] <= 0:
                found[key].append(Candidate("unobserved_record", path, index, _edges_added(_body_at(body, path), index)))
    return found


def reduction_report(bodies: dict[str, GraphBody]) -> dict[str, object]:
    """What the probe prints: nodes in all, candidates by rule, and the graphs with most."""
    found = archive_candidates(bodies)
    nodes = sum(body.count_nodes() for body in bodies.values())
    by_rule = Counter(candidate.rule for candidates in found.values() for candidate in candidates)
    droppable = sum(by_rule.values())
    return {
        "nodes": nodes,
        "droppable": droppable,
        "droppable_fraction": droppable / nodes if nodes else 0.0,
        "by_rule": {rule: by_rule[rule] for rule in RULES},
        "edges_added": sum(c.edges_added for candidates in found.values() for c in candidates),
        "most": sorted(((key, len(c)) for key, c in found.items() if c), key=lambda item: -item[1])[:8],
    }


def archive_reduction(archive: Archive) -> dict[str, object]:
    """reduction_report() of an archive's graphs, decoded by the archive's codec."""
    return reduction_report({entry.key: archive.graph(entry) for entry in archive.manifest.graphs})

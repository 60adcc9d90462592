"""The node table: how SAVE stores one graph, and what LOAD's native builder reads.

A graph is two blobs: the table (fixed-size node and edge entries, nodes in topological order so
each node is created with its dependencies in one driver call) and the payload (kernel argument
buffers and launch attributes, memset and memcpy parameters), which nodes address by offset.
foundry_trace/csrc/graph_table.hpp documents the layout; the structs below must agree with it.
The native check (native.check_table) validates a table before anything decodes or builds it.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from collections import Counter
from dataclasses import dataclass

from pydantic import ValidationError

from foundry_trace._native import check_table
from foundry_trace.archive.manifest import EarlyBuild
from foundry_trace.archive.records import (
    LAUNCH_ATTRIBUTE_BYTES,
    ChildGraphNode,
    CollectiveNode,
    Edge,
    EmptyNode,
    EventRecordNode,
    EventWaitNode,
    GraphBody,
    KernelNode,
    MemcpyNode,
    MemsetNode,
    Node,
)
from foundry_trace.errors import ArchiveFormatError

MAGIC = b"FNDGRPH1"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")
BODY = struct.Struct("<IIII")
NODE = struct.Struct("<BBHI3I3IIIQ")
_NODE_HEAD = struct.Struct("<BBHI")  # kind, reserved, attribute count, index
_NODE_KIND_AND_INDEX = struct.Struct("<B3xI40x")  # a whole node entry: its kind and index only
EDGE = struct.Struct("<IIBBBx")
MEMSET = struct.Struct("<QQIIQQ")
MEMCPY = struct.Struct("<15Q")
ATTRIBUTE = struct.Struct(f"<II{LAUNCH_ATTRIBUTE_BYTES}s")
KINDS = ("kernel", "memset", "memcpy", "event_record", "event_wait", "empty", "graph", "collective")
_KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}
PAYLOAD_ALIGNMENT = 8
# Child graphs nested below a graph, at most (kMaxGraphDepth of graph_table.hpp): captured graphs
# nest them a few levels at most, and the records nest as deep (walk_nodes recurses through them).
MAX_GRAPH_DEPTH = 64
# The launch attributes (CUlaunchAttributeID) the native check accepts: those whose values are
# plain numbers (launch_attribute_allowed in graph_table.cpp says why the others are refused).
LAUNCH_ATTRIBUTES = frozenset({1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 14, 16, 17, 18})


@dataclass(frozen=True)
class EncodedGraph:
    table: bytes
    payload: bytes
    topology: str  # digest of node kinds and edges: graphs with equal topology share a template


def encode(body: GraphBody) -> EncodedGraph:
    """The table and payload of a graph (its child graphs become further bodies of the table)."""
    return _Encoder().encode(body)


class _Encoder:
    def __init__(self) -> None:
        self._bodies: list[GraphBody] = []
        self._nodes: list[bytes] = []
        self._edges: list[bytes] = []
        self._directory: list[bytes] = []
        self._payload = bytearray()
        self._offsets: dict[bytes, int] = {}  # equal payloads are stored once
        self._shape = hashlib.sha256()

    def encode(self, top: GraphBody) -> EncodedGraph:
        self._bodies.append(top)
        index = 0
        while index < len(self._bodies):  # breadth first: a child is always a later body
            self._body(self._bodies[index])
            index += 1
        header = HEADER.pack(MAGIC, VERSION, len(self._bodies), len(self._nodes), len(self._edges))
        table = b"".join([header, *self._directory, *self._nodes, *self._edges])
        return EncodedGraph(table=table, payload=bytes(self._payload), topology=self._shape.hexdigest())

    def _body(self, body: GraphBody) -> None:
        order = topological_order(len(body.nodes), body.edges)
        position = {old: new for new, old in enumerate(order)}
        edges = sorted(
            (position[e.destination], position[e.source], e.from_port, e.to_port, e.type) for e in body.edges
        )
        self._directory.append(BODY.pack(len(self._nodes), len(order), len(self._edges), len(edges)))
        for old in order:
            self._nodes.append(self._node(body.nodes[old]))
        for destination, source, from_port, to_port, kind in edges:
            self._edges.append(EDGE.pack(source, destination, from_port, to_port, kind))
        self._shape.update(bytes(_KIND_CODE[body.nodes[old].kind] for old in order))
        self._shape.update(b"".join(self._edges[-len(edges) :]) if edges else b"")
        self._shape.update(b"|")

    def _node(self, node: Node) -> bytes:
        code = _KIND_CODE[node.kind]
        if isinstance(node, KernelNode):
            attributes = b"".join(ATTRIBUTE.pack(k, 0, v) for k, v in sorted(node.attributes.items()))
            padding = b"\0" * (-len(node.arguments) % PAYLOAD_ALIGNMENT)
            offset = self._store(node.arguments + padding + attributes if attributes else node.arguments)
            return NODE.pack(
                code, 0, len(node.attributes), node.function, *node.grid, *node.block, node.shared_bytes,
                len(node.arguments), offset,
            )
        if isinstance(node, MemsetNode):
            data = MEMSET.pack(node.destination, node.pitch, node.value, node.element_size, node.width, node.height)
            return NODE.pack(code, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, len(data), self._store(data))
        if isinstance(node, MemcpyNode):
            data = MEMCPY.pack(
                node.source, node.source_pitch, node.source_height, *node.source_offset,
                node.destination, node.destination_pitch, node.destination_height, *node.destination_offset,
                *node.extent,
            )
            return NODE.pack(code, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, len(data), self._store(data))
        if isinstance(node, (EventRecordNode, EventWaitNode)):
            return NODE.pack(code, 0, 0, node.event, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if isinstance(node, CollectiveNode):
            return NODE.pack(code, 0, 0, node.collective, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if isinstance(node, ChildGraphNode):
            self._bodies.append(node.graph)
            return NODE.pack(code, 0, 0, len(self._bodies) - 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        return NODE.pack(code, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    def _store(self, data: bytes) -> int:
        offset = self._offsets.get(data)
        if offset is None:
            self._payload += b"\0" * (-len(self._payload) % PAYLOAD_ALIGNMENT)
            offset = self._offsets[data] = len(self._payload)
            self._payload += data
        return offset


def topological_order(count: int, edges: tuple[Edge, ...]) -> list[int]:
    """Node indices with every source before its destinations, otherwise in their original order
    (which is already topological for captured graphs)."""
    incoming = [0] * count
    outgoing: list[list[int]] = [[] for _ in range(count)]
    for edge in edges:
        incoming[edge.destination] += 1
        outgoing[edge.source].append(edge.destination)
    ready = [i for i in range(count) if incoming[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for successor in outgoing[node]:
            incoming[successor] -= 1
            if incoming[successor] == 0:
                heapq.heappush(ready, successor)
    if len(order) != count:
        raise ValueError("the graph has a cycle")
    return order


def node_kinds(table: bytes) -> frozenset[str]:
    """The kinds of node a table holds (child graphs included), read from the kind byte of each
    node entry. The table may be unchecked: a code out of range reads as "invalid" (the native
    check, before any build, names the fault)."""
    if len(table) < HEADER.size:
        return frozenset({"invalid"})
    _magic, _version, body_count, node_count, _edge_count = HEADER.unpack_from(table, 0)
    nodes_at = HEADER.size + body_count * BODY.size
    codes = set(table[nodes_at : nodes_at + node_count * NODE.size : NODE.size])
    return frozenset(KINDS[code] if code < len(KINDS) else "invalid" for code in codes)


# Graphs of these kinds only are built before the restore point (prefetch): their nodes hold
# addresses as plain values. The driver checks a memset's or memcpy's memory when the node is
# added (it refuses unmapped memory), so graphs with COPY_KINDS are built early only where that
# memory is mapped; a collective needs the live communicator, so those wait for the restore point.
BUILT_BEFORE_RESTORE_POINT = frozenset({"kernel", "event_record", "event_wait", "empty", "graph"})
COPY_KINDS = frozenset({"memset", "memcpy"})


def early_build(kinds: frozenset[str], copy_arenas: tuple[str, ...], graph_arena: str) -> EarlyBuild:
    """When LOAD may build a graph of these node kinds whose memsets and memcpys name
    `copy_arenas` (decided at SAVE, stored in its entry): kernels, events and child graphs
    always; memsets and memcpys that all name the graph arena once prefetch has mapped it;
    collectives, and copies naming other memory, never before the restore point."""
    if kinds <= BUILT_BEFORE_RESTORE_POINT:
        return "always"
    if set(copy_arenas) <= {graph_arena} and kinds <= BUILT_BEFORE_RESTORE_POINT | COPY_KINDS:
        return "graph_memory"
    return "never"


def decode(table: bytes, payload: bytes, functions: int, events: int, collectives: int = 0) -> GraphBody:
    """The records of a table, after the native check has accepted it."""
    check_table(table, payload, functions, events, collectives)
    try:
        return _decode(table, payload)
    except ValidationError as error:  # a value the check leaves to the driver, e.g. huge arguments
        raise ArchiveFormatError(f"archive: node table holds an invalid node: {error.errors()[0]['msg']}") from None


@dataclass(frozen=True)
class Census:
    """What a table expands to, each child graph counted once per use (as the driver copies
    it), computed without expanding: `nodes` that do work (child-graph nodes themselves not
    counted, as operation_count), node `kinds` (child-graph nodes included, as walk_nodes
    yields them), `launches` per function index and `collectives` per collective index."""

    nodes: int
    kinds: Counter
    launches: Counter
    collectives: Counter


def census(table: bytes) -> Census:
    """The census of a table the native check accepted. Each node entry is read once and each
    body is weighed by how many times its graph is used (bodies name only later bodies), so the
    cost follows the table's size, never what it expands to: a shared child graph is counted,
    not walked."""
    _magic, _version, body_count, node_count, _edge_count = HEADER.unpack_from(table, 0)
    nodes_at = HEADER.size + body_count * BODY.size
    entries = list(_NODE_KIND_AND_INDEX.iter_unpack(table[nodes_at : nodes_at + node_count * NODE.size]))
    uses = [0] * body_count
    uses[0] = 1
    kinds: Counter = Counter()
    launches: Counter = Counter()
    collectives: Counter = Counter()
    graph, kernel, collective = _KIND_CODE["graph"], _KIND_CODE["kernel"], _KIND_CODE["collective"]
    for body in range(body_count):
        first_node, count, _first_edge, _edges = BODY.unpack_from(table, HEADER.size + body * BODY.size)
        weight = uses[body]
        if weight == 0:
            continue
        for code, index in entries[first_node : first_node + count]:
            kinds[KINDS[code]] += weight
            if code == graph:
                uses[index] += weight
            elif code == kernel:
                launches[index] += weight
            elif code == collective:
                collectives[index] += weight
    return Census(nodes=sum(kinds.values()) - kinds["graph"], kinds=kinds, launches=launches, collectives=collectives)


def _decode(table: bytes, payload: bytes) -> GraphBody:
    _magic, _version, body_count, node_count, _edge_count = HEADER.unpack_from(table, 0)
    nodes_at = HEADER.size + body_count * BODY.size
    edges_at = nodes_at + node_count * NODE.size
    directory = [BODY.unpack_from(table, HEADER.size + i * BODY.size) for i in range(body_count)]
    depth = _nesting(table, nodes_at, directory)
    if depth > MAX_GRAPH_DEPTH:
        raise ArchiveFormatError(
            f"archive: node table: child graphs nest {depth} deep (at most {MAX_GRAPH_DEPTH}): "
            "the archive is corrupted; save it again"
        )
    bodies: dict[int, GraphBody] = {}
    for index in reversed(range(body_count)):  # children are later bodies: decode them first
        first_node, nodes, first_edge, edge_count = directory[index]
        records = [_record(NODE.unpack_from(table, nodes_at + (first_node + i) * NODE.size), payload, bodies) for i in range(nodes)]
        edges = []
        for i in range(edge_count):
            source, destination, from_port, to_port, kind = EDGE.unpack_from(table, edges_at + (first_edge + i) * EDGE.size)
            edges.append(Edge(source=source, destination=destination, from_port=from_port, to_port=to_port, type=kind))
        bodies[index] = GraphBody(nodes=tuple(records), edges=tuple(edges))
    return bodies[0]


def _nesting(table: bytes, nodes_at: int, directory: list[tuple[int, int, int, int]]) -> int:
    """How deep child graphs nest, from the last body up (a child is a later body), before any
    record exists: records that nest deeper than the cap are what must never be built."""
    graph = _KIND_CODE["graph"]
    depth = [0] * len(directory)
    for index in reversed(range(len(directory))):
        first_node, nodes, _first_edge, _edge_count = directory[index]
        for i in range(first_node, first_node + nodes):
            code, _reserved, _attributes, child = _NODE_HEAD.unpack_from(table, nodes_at + i * NODE.size)
            if code == graph:
                depth[index] = max(depth[index], depth[child] + 1)
    return max(depth)


def _record(entry: tuple, payload: bytes, bodies: dict[int, GraphBody]) -> Node:
    code, _reserved, attribute_count, index, gx, gy, gz, bx, by, bz, shared, size, offset = entry
    kind = KINDS[code]
    if kind == "kernel":
        attributes_at = offset + size + (-size % PAYLOAD_ALIGNMENT)
        attributes = {}
        for a in range(attribute_count):
            attribute, _, value = ATTRIBUTE.unpack_from(payload, attributes_at + a * ATTRIBUTE.size)
            attributes[attribute] = value
        return KernelNode(
            function=index, grid=(gx, gy, gz), block=(bx, by, bz), shared_bytes=shared,
            arguments=payload[offset : offset + size], attributes=attributes,
        )
    if kind == "memset":
        destination, pitch, value, element_size, width, height = MEMSET.unpack_from(payload, offset)
        return MemsetNode(destination=destination, pitch=pitch, value=value, element_size=element_size, width=width, height=height)
    if kind == "memcpy":
        v = MEMCPY.unpack_from(payload, offset)
        return MemcpyNode(
            source=v[0], source_pitch=v[1], source_height=v[2], source_offset=v[3:6],
            destination=v[6], destination_pitch=v[7], destination_height=v[8], destination_offset=v[9:12],
            extent=v[12:15],
        )
    if kind == "event_record":
        return EventRecordNode(event=index)
    if kind == "event_wait":
        return EventWaitNode(event=index)
    if kind == "graph":
        return ChildGraphNode(graph=bodies[index])
    if kind == "collective":
        return CollectiveNode(collective=index)
    return EmptyNode()

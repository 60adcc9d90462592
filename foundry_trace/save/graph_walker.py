"""Turns a CUgraph into plain records: nodes with every parameter, edges with their edge data.

Kernel arguments are read as the driver holds them (kernelParams or the `extra` buffer form) and
stored in the layout the function's parameters have on the device (cuFuncGetParamInfo), so a
restore can hand them back in one buffer. Nodes that cannot be persisted are refused by kind.
A memset into a RecordingCommunicator's marker is a collective (collectives.py), not a memset.
"""

from __future__ import annotations

import ctypes

from cuda.bindings import driver

from foundry_trace._driver import (
    CU_LAUNCH_PARAM_BUFFER_POINTER,
    CU_LAUNCH_PARAM_BUFFER_SIZE,
    CU_LAUNCH_PARAM_END,
    call,
    host_bytes,
    host_pointers,
    try_call,
)
from foundry_trace.archive._node_table import LAUNCH_ATTRIBUTES, MAX_GRAPH_DEPTH
from foundry_trace.archive.records import (
    LAUNCH_ATTRIBUTE_BYTES,
    ChildGraphNode,
    CollectiveNode,
    CollectiveSpec,
    Edge,
    EmptyNode,
    EventRecordNode,
    EventWaitNode,
    GraphBody,
    KernelNode,
    MemcpyNode,
    MemsetNode,
    Node,
    PeerWindowRecord,
)
from foundry_trace.errors import TensorParallelError, UnsupportedNodeError
from foundry_trace.parallel.collectives import marker_collective
from foundry_trace.parallel.peer import PeerCommunicator
from foundry_trace.parallel.peer_kernels import owner_of
from foundry_trace.save.modules import FunctionTable

NodeType = driver.CUgraphNodeType
# Attributes that cannot be read from (or are meaningless on) a kernel node.
_SKIPPED_ATTRIBUTES = {"CU_LAUNCH_ATTRIBUTE_IGNORE", "CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT", "CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT"}
_NODE_ATTRIBUTES = [a for a in driver.CUlaunchAttributeID if a.name not in _SKIPPED_ATTRIBUTES]
_ZERO_ATTRIBUTE = bytes(LAUNCH_ATTRIBUTE_BYTES)
_REFUSAL_HINTS = {
    "CU_GRAPH_NODE_TYPE_HOST": "a host callback (Python code) runs at replay and cannot be saved: move it out of the captured region",
    "CU_GRAPH_NODE_TYPE_CONDITIONAL": "conditional nodes are not supported yet: capture each branch as its own graph",
    "CU_GRAPH_NODE_TYPE_MEM_ALLOC": "graph-owned allocations (cudaMallocAsync in capture) are not supported: allocate through PyTorch",
    "CU_GRAPH_NODE_TYPE_MEM_FREE": "graph-owned allocations (cudaFreeAsync in capture) are not supported: allocate through PyTorch",
}


class GraphWalker:
    """Walks graphs, registering functions in `functions` and events in its own numbering."""

    def __init__(self, functions: FunctionTable) -> None:
        self._functions = functions
        self._events: dict[int, int] = {}
        self._param_layouts: dict[int, list[tuple[int, int]]] = {}
        self._default_attributes: dict[int, dict[int, bytes]] = {}
        self._collectives: dict[CollectiveSpec, int] = {}
        self.tensor_parallel: int | None = None  # the degree of the collectives seen, if any
        self.peer_window: PeerWindowRecord | None = None  # the window of the peer all-reduces seen, if any

    @property
    def event_count(self) -> int:
        return len(self._events)

    def walk(self, graph: int, where: str, depth: int = 0) -> tuple[GraphBody, int, int]:
        """The graph's records, and the node and edge counts the driver reports (children included).
        Refuses what LOAD would refuse: child graphs nested deeper than MAX_GRAPH_DEPTH."""
        if depth > MAX_GRAPH_DEPTH:
            raise UnsupportedNodeError(
                f"{where}: child graphs nest more than {MAX_GRAPH_DEPTH} deep, which LOAD refuses: flatten the capture"
            )
        handle = driver.CUgraph(graph)
        count = call(driver.cuGraphGetNodes, handle, 0)[1]
        nodes = call(driver.cuGraphGetNodes, handle, count)[0] if count else []
        position = {int(n): i for i, n in enumerate(nodes)}
        records: list[Node] = []
        driver_nodes, driver_edges = len(nodes), 0
        for index, node in enumerate(nodes):
            record = self._node(node, f"{where}, node {index}", depth)
            if isinstance(record, tuple):
                record, child_nodes, child_edges = record
                driver_nodes += child_nodes - 1
                driver_edges += child_edges
            records.append(record)
        edges = self._edges(handle, position)
        return GraphBody(nodes=tuple(records), edges=tuple(edges)), driver_nodes, driver_edges + len(edges)

    def _edges(self, graph: driver.CUgraph, position: dict[int, int]) -> list[Edge]:
        result = driver.cuGraphGetEdges(graph, 0)
        count = result[-1]
        if not count:
            return []
        result = call(driver.cuGraphGetEdges, graph, count)
        sources, destinations = result[0], result[1]
        data = result[2] if len(result) > 3 else [None] * len(sources)
        edges = []
        for source, destination, edge_data in zip(sources, destinations, data):
            edges.append(
                Edge(
                    source=position[int(source)],
                    destination=position[int(destination)],
                    from_port=int(edge_data.from_port) if edge_data is not None else 0,
                    to_port=int(edge_data.to_port) if edge_data is not None else 0,
                    type=int(edge_data.type) if edge_data is not None else 0,
                )
            )
        return edges

    def _node(self, node: driver.CUgraphNode, where: str, depth: int):  # noqa: ANN202 - Node or (Node, nodes, edges)
        kind = call(driver.cuGraphNodeGetType, node)
        if kind == NodeType.CU_GRAPH_NODE_TYPE_KERNEL:
            return self._kernel(node, where)
        if kind == NodeType.CU_GRAPH_NODE_TYPE_MEMSET:
            p = call(driver.cuGraphMemsetNodeGetParams, node)
            marker = marker_collective(int(p.dst), int(p.value))
            if marker is not None:
                return self._collective(*marker, where)
            return MemsetNode(
                destination=int(p.dst), pitch=int(p.pitch), value=int(p.value), element_size=int(p.elementSize),
                width=int(p.width), height=int(p.height),
            )
        if kind == NodeType.CU_GRAPH_NODE_TYPE_MEMCPY:
            return self._memcpy(node, where)
        if kind == NodeType.CU_GRAPH_NODE_TYPE_EMPTY:
            return EmptyNode()
        if kind == NodeType.CU_GRAPH_NODE_TYPE_EVENT_RECORD:
            return EventRecordNode(event=self._event(call(driver.cuGraphEventRecordNodeGetEvent, node)))
        if kind == NodeType.CU_GRAPH_NODE_TYPE_WAIT_EVENT:
            return EventWaitNode(event=self._event(call(driver.cuGraphEventWaitNodeGetEvent, node)))
        if kind == NodeType.CU_GRAPH_NODE_TYPE_GRAPH:
            child = call(driver.cuGraphChildGraphNodeGetGraph, node)
            body, nodes, edges = self.walk(int(child), f"{where} (child graph)", depth + 1)
            return ChildGraphNode(graph=body), nodes, edges
        name = NodeType(kind).name
        hint = _REFUSAL_HINTS.get(name, "Foundry cannot persist this node kind")
        raise UnsupportedNodeError(f"{where} is a {name.removeprefix('CU_GRAPH_NODE_TYPE_').lower()} node: {hint}")

    def _defaults(self, function: int, params: driver.CUDA_KERNEL_NODE_PARAMS) -> dict[int, bytes]:
        """The attributes a fresh node of this function has without being told any: LOAD builds
        such a node, so only the attributes that differ need a driver call there (captured nodes
        carry a cluster scheduling policy and a memory-sync domain map on every node, at their
        defaults). Found by adding one scratch node per function."""
        known = self._default_attributes.get(function)
        if known is None:
            scratch = call(driver.cuGraphCreate, 0)
            try:
                fresh = try_call(driver.cuGraphAddKernelNode, scratch, None, 0, params)
                known = _attributes(fresh) if fresh is not None else {}
            finally:
                call(driver.cuGraphDestroy, scratch)
            self._default_attributes[function] = known
        return known

    def _collective(self, spec: CollectiveSpec, degree: int, where: str) -> CollectiveNode:
        self._degree(degree, where)
        if self.peer_window is not None:
            raise TensorParallelError(f"{where}: an NCCL recorder's collective beside peer all-reduces: record with one communicator")
        return CollectiveNode(collective=self._collectives.setdefault(spec, len(self._collectives)))

    def _peer_all_reduce(self, communicator: PeerCommunicator, where: str) -> None:
        """A kernel of a PeerCommunicator: a plain kernel node; the archive records its window."""
        self._degree(communicator.world_size, where)
        if self._collectives or self.peer_window not in (None, communicator.window_record):
            raise TensorParallelError(f"{where}: all-reduces of two communicators in one recording: record with one communicator")
        self.peer_window = communicator.window_record

    def _degree(self, degree: int, where: str) -> None:
        if self.tensor_parallel not in (None, degree):
            raise TensorParallelError(
                f"{where}: collectives of tensor parallelism {self.tensor_parallel} and {degree} in one recording: "
                "record each degree into its own archive"
            )
        self.tensor_parallel = degree

    @property
    def collectives(self) -> tuple[CollectiveSpec, ...]:
        """The collectives seen, in the numbering of their nodes."""
        return tuple(self._collectives)

    def _event(self, event: driver.CUevent) -> int:
        return self._events.setdefault(int(event), len(self._events))

    def _kernel(self, node: driver.CUgraphNode, where: str) -> KernelNode:
        p = call(driver.cuGraphKernelNodeGetParams, node)
        function = int(p.func)
        communicator = owner_of(function)
        if isinstance(communicator, PeerCommunicator):
            self._peer_all_reduce(communicator, where)
        arguments = self._arguments(function, int(p.kernelParams or 0), int(p.extra or 0), where)
        defaults = self._defaults(function, p)
        attributes = {}
        for attribute, raw in _attributes(node).items():
            if raw != defaults.get(attribute, _ZERO_ATTRIBUTE):
                if attribute not in LAUNCH_ATTRIBUTES:
                    raise UnsupportedNodeError(
                        f"{where}: launch attribute {driver.CUlaunchAttributeID(attribute).name} holds a handle of this "
                        "process (an event or a device-updatable node), which LOAD cannot restore: capture without it"
                    )
                attributes[attribute] = raw
        return KernelNode(
            function=self._functions.index(function, where),
            grid=(int(p.gridDimX), int(p.gridDimY), int(p.gridDimZ)),
            block=(int(p.blockDimX), int(p.blockDimY), int(p.blockDimZ)),
            shared_bytes=int(p.sharedMemBytes),
            arguments=arguments,
            attributes=attributes,
        )

    def _layout(self, function: int) -> list[tuple[int, int]]:
        """(offset, size) of each parameter of the function."""
        layout = self._param_layouts.get(function)
        if layout is None:
            layout = []
            handle = driver.CUfunction(function)
            while (info := try_call(driver.cuFuncGetParamInfo, handle, len(layout))) is not None:
                layout.append((int(info[0]), int(info[1])))
            self._param_layouts[function] = layout
        return layout

    def _arguments(self, function: int, kernel_params: int, extra: int, where: str) -> bytes:
        layout = self._layout(function)
        total = max((offset + size for offset, size in layout), default=0)
        if kernel_params:
            buffer = bytearray(total)
            for (offset, size), pointer in zip(layout, host_pointers(kernel_params, len(layout))):
                buffer[offset : offset + size] = host_bytes(pointer, size)
            return bytes(buffer)
        if extra:
            return _extra_buffer(extra, where)
        if total:
            raise UnsupportedNodeError(f"{where}: a kernel with {len(layout)} parameters but no argument data")
        return b""

    def _memcpy(self, node: driver.CUgraphNode, where: str) -> MemcpyNode:
        p = call(driver.cuGraphMemcpyNodeGetParams, node)
        device = driver.CUmemorytype.CU_MEMORYTYPE_DEVICE
        if p.srcMemoryType != device or p.dstMemoryType != device:
            raise UnsupportedNodeError(
                f"{where} is a copy from {driver.CUmemorytype(p.srcMemoryType).name} to "
                f"{driver.CUmemorytype(p.dstMemoryType).name}: only device-to-device copies can be saved "
                "(host addresses do not survive the process); stage host data in a device tensor before capture"
            )
        return MemcpyNode(
            source=int(p.srcDevice), source_pitch=int(p.srcPitch), source_height=int(p.srcHeight),
            source_offset=(int(p.srcXInBytes), int(p.srcY), int(p.srcZ)),
            destination=int(p.dstDevice), destination_pitch=int(p.dstPitch), destination_height=int(p.dstHeight),
            destination_offset=(int(p.dstXInBytes), int(p.dstY), int(p.dstZ)),
            extent=(int(p.WidthInBytes), int(p.Height), int(p.Depth)),
        )


def _extra_buffer(extra: int, where: str) -> bytes:
    """The argument buffer of the `extra` launch form: {BUFFER_POINTER, p, BUFFER_SIZE, &n, END}."""
    pointer = size = None
    for index in range(0, 16, 2):
        key, value = host_pointers(extra + index * ctypes.sizeof(ctypes.c_void_p), 2)
        if key == CU_LAUNCH_PARAM_END:
            break
        if key == CU_LAUNCH_PARAM_BUFFER_POINTER:
            pointer = value
        elif key == CU_LAUNCH_PARAM_BUFFER_SIZE:
            size = ctypes.c_size_t.from_address(value).value
    if pointer is None or size is None:
        raise UnsupportedNodeError(f"{where}: a kernel launched with an `extra` list that holds no argument buffer")
    return host_bytes(pointer, size)


def _attributes(node: driver.CUgraphNode) -> dict[int, bytes]:
    """Every launch attribute a kernel node reports, as raw CUlaunchAttributeValue bytes."""
    found = {}
    for attribute in _NODE_ATTRIBUTES:
        value = try_call(driver.cuGraphKernelNodeGetAttribute, node, attribute)
        if value is not None:
            found[int(attribute)] = host_bytes(value.getPtr(), LAUNCH_ATTRIBUTE_BYTES)
    return found

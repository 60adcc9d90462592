"""Rebuilds CUgraphs from archive records through the driver: one call per node, then all edges.

Kernel arguments go back in one buffer (the `extra` launch form) in the layout SAVE read them in,
so no pointer inside them is touched: addresses are equal because the layout is.
"""

from __future__ import annotations

import ctypes

from cuda.bindings import driver

from .driver import (
    CU_LAUNCH_PARAM_BUFFER_POINTER,
    CU_LAUNCH_PARAM_BUFFER_SIZE,
    CU_LAUNCH_PARAM_END,
    LAUNCH_ATTRIBUTE_BYTES,
    call,
)
from .records import (
    ChildGraphNode,
    EmptyNode,
    EventRecordNode,
    EventWaitNode,
    GraphBody,
    KernelNode,
    MemcpyNode,
    MemsetNode,
)



class GraphBuilder:
    """Holds what node creation needs: functions by archive index, events by archive number,
    argument blobs by digest, and the context memset/memcpy nodes name."""

    def __init__(self, functions: list[driver.CUfunction], events: list[driver.CUevent], blob, context: driver.CUcontext) -> None:  # noqa: ANN001
        self._functions = functions
        self._events = events
        self._blob = blob
        self._arguments: dict[str, bytes] = {}  # many nodes share one blob: read and verify it once
        self._context = context

    def build(self, body: GraphBody) -> driver.CUgraph:
        graph = call(driver.cuGraphCreate, 0)
        try:
            nodes = [self._add(graph, node) for node in body.nodes]
            if body.edges:
                data = []
                for edge in body.edges:
                    item = driver.CUgraphEdgeData()
                    item.from_port, item.to_port, item.type = edge.from_port, edge.to_port, edge.type
                    data.append(item)
                call(
                    driver.cuGraphAddDependencies,
                    graph,
                    [nodes[e.source] for e in body.edges],
                    [nodes[e.destination] for e in body.edges],
                    data,
                    len(body.edges),
                )
        except BaseException:
            driver.cuGraphDestroy(graph)
            raise
        return graph

    def _add(self, graph: driver.CUgraph, node) -> driver.CUgraphNode:  # noqa: ANN001 - a Node
        if isinstance(node, KernelNode):
            return self._kernel(graph, node)
        if isinstance(node, MemsetNode):
            p = driver.CUDA_MEMSET_NODE_PARAMS()
            p.dst, p.pitch, p.value, p.elementSize, p.width, p.height = (
                node.destination, node.pitch, node.value, node.element_size, node.width, node.height,
            )
            return call(driver.cuGraphAddMemsetNode, graph, None, 0, p, self._context)
        if isinstance(node, MemcpyNode):
            p = driver.CUDA_MEMCPY3D()
            p.srcMemoryType = p.dstMemoryType = driver.CUmemorytype.CU_MEMORYTYPE_DEVICE
            p.srcDevice, p.srcPitch, p.srcHeight = node.source, node.source_pitch, node.source_height
            p.srcXInBytes, p.srcY, p.srcZ = node.source_offset
            p.dstDevice, p.dstPitch, p.dstHeight = node.destination, node.destination_pitch, node.destination_height
            p.dstXInBytes, p.dstY, p.dstZ = node.destination_offset
            p.WidthInBytes, p.Height, p.Depth = node.extent
            return call(driver.cuGraphAddMemcpyNode, graph, None, 0, p, self._context)
        if isinstance(node, EventRecordNode):
            return call(driver.cuGraphAddEventRecordNode, graph, None, 0, self._events[node.event])
        if isinstance(node, EventWaitNode):
            return call(driver.cuGraphAddEventWaitNode, graph, None, 0, self._events[node.event])
        if isinstance(node, EmptyNode):
            return call(driver.cuGraphAddEmptyNode, graph, None, 0)
        if isinstance(node, ChildGraphNode):
            child = self.build(node.graph)
            try:
                return call(driver.cuGraphAddChildGraphNode, graph, None, 0, child)  # the driver clones it
            finally:
                driver.cuGraphDestroy(child)
        raise TypeError(f"unknown node record {node!r}")

    def _kernel(self, graph: driver.CUgraph, node: KernelNode) -> driver.CUgraphNode:
        arguments = self._arguments.get(node.arguments)
        if arguments is None:
            arguments = self._arguments[node.arguments] = bytes(self._blob(node.arguments))
        buffer = ctypes.create_string_buffer(arguments, max(len(arguments), 1))
        size = ctypes.c_size_t(len(arguments))
        extra = (ctypes.c_void_p * 5)(
            CU_LAUNCH_PARAM_BUFFER_POINTER, ctypes.addressof(buffer), CU_LAUNCH_PARAM_BUFFER_SIZE, ctypes.addressof(size), CU_LAUNCH_PARAM_END
        )
        p = driver.CUDA_KERNEL_NODE_PARAMS()
        p.func = self._functions[node.function]
        p.gridDimX, p.gridDimY, p.gridDimZ = node.grid
        p.blockDimX, p.blockDimY, p.blockDimZ = node.block
        p.sharedMemBytes = node.shared_bytes
        p.extra = ctypes.addressof(extra) if arguments else 0
        created = call(driver.cuGraphAddKernelNode, graph, None, 0, p)
        for attribute, raw in node.attributes.items():
            value = driver.CUkernelNodeAttrValue()
            ctypes.memmove(value.getPtr(), bytes.fromhex(raw), LAUNCH_ATTRIBUTE_BYTES)
            call(driver.cuGraphKernelNodeSetAttribute, created, driver.CUkernelNodeAttrID(attribute), value)
        return created

"""Random but valid archive contents, for round-trip and corruption tests."""

from __future__ import annotations

import hashlib

import hypothesis.strategies as st

import foundry_alloc as fa
from foundry_trace.archive._node_table import LAUNCH_ATTRIBUTES, encode
from foundry_trace.archive.format import ArchiveWriter
from foundry_trace.archive.manifest import Fingerprint, GraphEntry, Manifest, OutputTensor
from foundry_trace.archive.records import (
    ChildGraphNode,
    CollectiveNode,
    CollectiveSpec,
    Edge,
    EmptyNode,
    EventRecordNode,
    EventWaitNode,
    FunctionRecord,
    GraphBody,
    KernelNode,
    MemcpyNode,
    MemorySegment,
    MemsetNode,
    ModuleRecord,
    walk_nodes,
)

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
u32 = st.integers(min_value=0, max_value=(1 << 32) - 1)
small = st.integers(min_value=0, max_value=1 << 20)
dim3 = st.tuples(small, small, small)


COLLECTIVES = tuple(
    CollectiveSpec(operation="all_reduce", reduction="sum", dtype=dtype, count=4096 * (n + 1), address=0x200000000000 + n * 0x10000)
    for n, dtype in enumerate(("bfloat16", "float32", "float16"))
)


def _manifest(modules, functions, templates, graphs, memory, *, events: int) -> Manifest:  # noqa: ANN001
    """A manifest saved on an H100 with an empty restore layout; blobs are indexed by the writer."""
    layout = fa.Layout(device=0, base=0x200000000000, size=1 << 40, granularity=2 << 20, allocations=())
    return Manifest(
        created="2026-11-24T00:00:00+00:00",
        fingerprint=Fingerprint(
            gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", driver="580.159.04", cuda_driver_api=13000,
            torch="2.11.0+cu130", torch_cuda="13.0", allocator_base=0x200000000000, allocator_size=1 << 40,
            restore_layout=layout.fingerprint(),
        ),
        restore_layout=layout,
        modules=modules,
        functions=functions,
        templates=templates,
        graphs=graphs,
        memory=memory,
        events=events,
        tensor_parallel=2,
        collectives=COLLECTIVES,
        blobs={},
    )


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@st.composite
def kernel_nodes(draw: st.DrawFn, functions: int) -> KernelNode:
    return KernelNode(
        function=draw(st.integers(min_value=0, max_value=functions - 1)),
        grid=draw(dim3),
        block=draw(dim3),
        shared_bytes=draw(small),
        arguments=draw(st.binary(max_size=256)),
        attributes=draw(st.dictionaries(st.sampled_from(sorted(LAUNCH_ATTRIBUTES)), st.binary(min_size=64, max_size=64), max_size=3)),
    )


def simple_nodes(draw: st.DrawFn, functions: int):  # noqa: ANN201
    return draw(
        st.one_of(
            kernel_nodes(functions),
            st.builds(MemsetNode, destination=u64, pitch=u64, value=u32, element_size=st.sampled_from([1, 2, 4]), width=u64, height=u64),
            st.builds(
                MemcpyNode, source=u64, source_pitch=u64, source_height=u64, source_offset=st.tuples(u64, u64, u64),
                destination=u64, destination_pitch=u64, destination_height=u64, destination_offset=st.tuples(u64, u64, u64),
                extent=st.tuples(u64, u64, u64),
            ),
            st.builds(EventRecordNode, event=st.integers(min_value=0, max_value=8)),
            st.builds(EventWaitNode, event=st.integers(min_value=0, max_value=8)),
            st.builds(CollectiveNode, collective=st.integers(min_value=0, max_value=len(COLLECTIVES) - 1)),
            st.just(EmptyNode()),
        )
    )


@st.composite
def graph_bodies(draw: st.DrawFn, functions: int, depth: int = 1) -> GraphBody:
    """A graph as captures make them: a DAG whose node order is topological, no repeated edge."""
    nodes = [simple_nodes(draw, functions) for _ in range(draw(st.integers(min_value=1, max_value=12)))]
    if depth and draw(st.booleans()):
        nodes.append(ChildGraphNode(graph=draw(graph_bodies(functions, depth - 1))))
    count = len(nodes)
    pairs = draw(
        st.lists(
            st.tuples(st.integers(min_value=0, max_value=count - 1), st.integers(min_value=0, max_value=count - 1))
            .filter(lambda p: p[0] < p[1]),
            max_size=2 * count,
            unique=True,
        )
    )
    edges = [Edge(source=a, destination=b, type=draw(st.integers(min_value=0, max_value=1))) for a, b in pairs]
    return GraphBody(nodes=tuple(nodes), edges=tuple(edges))


def canonical(body: GraphBody) -> GraphBody:
    """The body as the node table stores it: edges sorted by destination, then source."""
    nodes = tuple(n.model_copy(update={"graph": canonical(n.graph)}) if isinstance(n, ChildGraphNode) else n for n in body.nodes)
    edges = tuple(sorted(body.edges, key=lambda e: (e.destination, e.source, e.from_port, e.to_port, e.type)))
    return GraphBody(nodes=nodes, edges=edges)


def graph_entry(key: str, body: GraphBody, functions: tuple[FunctionRecord, ...], blobs: list[bytes], templates: list[str], outputs=()) -> GraphEntry:  # noqa: ANN001
    """The manifest entry of `body`, its table and payload appended to `blobs`."""
    encoded = encode(body)
    blobs += [encoded.table, encoded.payload]
    if encoded.topology not in templates:
        templates.append(encoded.topology)
    used = {functions[n.function].module for n in walk_nodes(body.nodes) if isinstance(n, KernelNode)}
    return GraphEntry(
        key=key, template=templates.index(encoded.topology), table=_digest(encoded.table), payload=_digest(encoded.payload),
        modules=tuple(sorted(used)), outputs=outputs, nodes=body.count_nodes(), edges=body.count_edges(),
        driver_nodes=body.count_nodes(), driver_edges=body.count_edges(),
    )


@st.composite
def archive_contents(draw: st.DrawFn) -> tuple[Manifest, list[bytes], list[GraphBody]]:
    """A manifest (blobs not yet indexed), the blobs it references, and each graph's records."""
    blobs: list[bytes] = []
    module_bytes = [draw(st.binary(min_size=1, max_size=2048)) for _ in range(draw(st.integers(min_value=1, max_value=3)))]
    blobs += module_bytes
    modules = tuple(ModuleRecord(digest=_digest(b), size=len(b), loaded_size=len(b), entries=1) for b in module_bytes)
    functions = tuple(
        FunctionRecord(
            module=draw(st.integers(min_value=0, max_value=len(modules) - 1)), name=f"kernel_{i}",
            attributes={"CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES": i},
        )
        for i in range(draw(st.integers(min_value=1, max_value=4)))
    )
    bodies = [draw(graph_bodies(len(functions))) for _ in range(draw(st.integers(min_value=1, max_value=4)))]
    templates: list[str] = []
    graphs = [
        graph_entry(
            str(index), body, functions, blobs, templates,
            (OutputTensor(name="out", address=0x200000000000, dtype="float32", shape=(index + 1, 8), stride=(8, 1)),),
        )
        for index, body in enumerate(bodies)
    ]
    contents = draw(st.binary(max_size=512))
    blobs.append(contents)
    memory = (
        MemorySegment(address=0x200000000000, size=2 << 20, arena="graph"),
        MemorySegment(address=0x200000200000, size=max(1, len(contents)), arena="engine", contents=_digest(contents)),
    )
    manifest = _manifest(modules, functions, tuple(templates), tuple(graphs), memory, events=9)
    return manifest, blobs, bodies


def write_archive(path, manifest: Manifest, blobs: list[bytes]):  # noqa: ANN001, ANN201
    writer = ArchiveWriter(path)
    contents = {segment.contents for segment in manifest.memory if segment.contents}
    for blob in blobs:
        writer.add_blob(blob, compress=_digest(blob) in contents)  # as SAVE stores them
    return writer.finish(manifest.model_copy(update={"blobs": writer.blobs}))


def fixed_contents() -> tuple[Manifest, list[bytes]]:
    """One small archive's contents, the same every time: a graph of a kernel, a memset and a
    child graph, two modules (one compressible), carried memory."""
    modules_bytes = [b"\x7fELF" + bytes(range(256)) * 4, b"\0" * 8192]
    contents = b"state" * 100
    modules = tuple(ModuleRecord(digest=_digest(b), size=len(b), loaded_size=len(b), entries=1) for b in modules_bytes)
    functions = (FunctionRecord(module=0, name="_Z6kernelPf"),)
    child = GraphBody(nodes=(EmptyNode(),), edges=())
    body = GraphBody(
        nodes=(
            KernelNode(function=0, grid=(4, 1, 1), block=(128, 1, 1), shared_bytes=0, arguments=b"\1\2\3\4" * 16),
            MemsetNode(destination=0x200000000000, pitch=0, value=0, element_size=4, width=256, height=1),
            ChildGraphNode(graph=child),
        ),
        edges=(Edge(source=0, destination=1), Edge(source=1, destination=2, type=1)),
    )
    blobs = [*modules_bytes, contents]
    templates: list[str] = []
    entry = graph_entry("1", body, functions, blobs, templates)
    manifest = _manifest(
        modules,
        functions,
        tuple(templates),
        (entry,),
        (MemorySegment(address=0x200000400000, size=len(contents), arena="engine", contents=_digest(contents)),),
        events=0,
    )
    return manifest, blobs

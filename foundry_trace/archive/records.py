"""Plain records of captured graphs: what the graph walker produces, what the node table
(node_table.py) encodes for the archive, and what it decodes for `foundry inspect` and the tests.

Module binaries and memory contents are not held here but referenced by the SHA-256 digest of a
blob of the archive, so identical blobs are stored once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field

Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
U64 = Annotated[int, Field(ge=0, lt=1 << 64)]
Dim3 = tuple[U64, U64, U64]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


U32 = Annotated[int, Field(ge=0, lt=1 << 32)]
LAUNCH_ATTRIBUTE_BYTES = 64  # sizeof(CUlaunchAttributeValue)


class KernelNode(_Record):
    """A kernel launch: function (index into the archive's functions), launch shape, the argument
    buffer laid out as the function's parameters are (cuFuncGetParamInfo), and every launch
    attribute that differs from its default, as the raw bytes of CUlaunchAttributeValue."""

    kind: Literal["kernel"] = "kernel"
    function: Annotated[int, Field(ge=0)]
    grid: tuple[U32, U32, U32]
    block: tuple[U32, U32, U32]
    shared_bytes: U32
    arguments: Annotated[bytes, Field(max_length=1 << 20)]
    attributes: dict[U32, Annotated[bytes, Field(min_length=LAUNCH_ATTRIBUTE_BYTES, max_length=LAUNCH_ATTRIBUTE_BYTES)]] = {}


class MemsetNode(_Record):
    kind: Literal["memset"] = "memset"
    destination: U64
    pitch: U64
    value: U32
    element_size: Literal[1, 2, 4]
    width: U64
    height: U64


class MemcpyNode(_Record):
    """A device-to-device copy (CUDA_MEMCPY3D with device pointers on both sides)."""

    kind: Literal["memcpy"] = "memcpy"
    source: U64
    source_pitch: U64
    source_height: U64
    source_offset: tuple[U64, U64, U64]
    destination: U64
    destination_pitch: U64
    destination_height: U64
    destination_offset: tuple[U64, U64, U64]
    extent: tuple[U64, U64, U64]  # width in bytes, height, depth


class EventRecordNode(_Record):
    kind: Literal["event_record"] = "event_record"
    event: Annotated[int, Field(ge=0)]  # events are numbered per archive; restore creates fresh ones


class EventWaitNode(_Record):
    kind: Literal["event_wait"] = "event_wait"
    event: Annotated[int, Field(ge=0)]


class EmptyNode(_Record):
    kind: Literal["empty"] = "empty"


class CollectiveNode(_Record):
    """A collective of a tensor-parallel step, recorded at SAVE without a peer (collectives.py);
    LOAD puts a graph of the same collective on the live communicator in its place."""

    kind: Literal["collective"] = "collective"
    collective: Annotated[int, Field(ge=0)]  # index into the archive's collectives


CollectiveDtype = Literal["float32", "float16", "bfloat16"]
ELEMENT_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}


class CollectiveSpec(_Record):
    """What one collective does, in the terms a communicator needs to issue it again: in place on
    `count` elements of `dtype` at `address` (the same in every rank, as layouts are)."""

    operation: Literal["all_reduce"]
    reduction: Literal["sum"]
    dtype: CollectiveDtype
    count: Annotated[int, Field(gt=0, lt=1 << 40)]
    address: U64

    @property
    def size_bytes(self) -> int:
        return self.count * ELEMENT_BYTES[self.dtype]


PEER_KERNEL_PREFIX = "foundry_peer_"  # parallel/peer_all_reduce.cu's kernels: foundry_peer_<algorithm>_<dtype>


class PeerWindowRecord(_Record):
    """The peer window a tensor-parallel archive's all-reduce kernels address (their arguments
    hold its base; parallel/window.py): every rank's LOAD must map the same one."""

    base: U64
    stride: U64
    buffer_bytes: U64


class ChildGraphNode(_Record):
    kind: Literal["graph"] = "graph"
    graph: GraphBody


Node = Annotated[
    Union[KernelNode, MemsetNode, MemcpyNode, EventRecordNode, EventWaitNode, EmptyNode, CollectiveNode, ChildGraphNode],
    Field(discriminator="kind"),
]


class Edge(_Record):
    """source -> destination, with the edge data of CUDA 12.3+ (programmatic/PDL edges)."""

    source: Annotated[int, Field(ge=0)]
    destination: Annotated[int, Field(ge=0)]
    from_port: Annotated[int, Field(ge=0, lt=256)] = 0
    to_port: Annotated[int, Field(ge=0, lt=256)] = 0
    type: Annotated[int, Field(ge=0, lt=256)] = 0


class GraphBody(_Record):
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def count_nodes(self) -> int:
        return operation_count(self.nodes)

    def count_edges(self) -> int:
        return len(self.edges) + sum(n.graph.count_edges() for n in self.nodes if isinstance(n, ChildGraphNode))


ChildGraphNode.model_rebuild()


def walk_nodes(nodes: tuple[Node, ...]) -> Iterator[Node]:
    """Every node, depth first: a child-graph node, then the nodes of its graph."""
    for node in nodes:
        yield node
        if isinstance(node, ChildGraphNode):
            yield from walk_nodes(node.graph.nodes)


def operation_count(nodes: tuple[Node, ...]) -> int:
    """Nodes that do work, child graphs flattened (a child-graph node itself does not count):
    the count the graph walker takes from the driver, so equal counts mean nothing was lost."""
    return sum(1 for node in walk_nodes(nodes) if not isinstance(node, ChildGraphNode))


# Function attributes that users set on kernels (cuFuncSetAttribute) and a reload must set again.
SettableFunctionAttribute = Literal[
    "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES",
    "CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT",
    "CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH",
    "CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT",
    "CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH",
    "CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED",
    "CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE",
]
SETTABLE_FUNCTION_ATTRIBUTES: tuple[str, ...] = get_args(SettableFunctionAttribute)


class FunctionRecord(_Record):
    """A kernel function: its module (index into the archive's modules) and entry name, and the
    function attributes its users set (e.g. the dynamic shared memory limit) that a reload must
    set again."""

    module: Annotated[int, Field(ge=0)]
    name: Annotated[str, Field(min_length=1, max_length=4096)]
    attributes: dict[SettableFunctionAttribute, Annotated[int, Field(ge=-(1 << 31), lt=1 << 32)]] = {}


VariableName = Annotated[str, Field(min_length=1, max_length=4096)]


class ModuleRecord(_Record):
    """A module binary (as stored: a fatbin keeps only the images this GPU can load, a cubin
    may be trimmed to the kernels the graphs use), and the contents at SAVE of the module-scope
    variables (__device__/__constant__) that differ from a freshly loaded copy's, less the words
    that each load fills in with addresses in the module (module_image.py)."""

    digest: Digest
    size: U64
    loaded_size: U64  # the binary as the process loaded it
    entries: Annotated[int, Field(ge=0)]  # entry functions in the binary
    trimmed: bool = False  # the other entries removed (binary/compact.py) or cut to stubs (binary/trim.py)
    variables: Annotated[dict[VariableName, Digest], Field(max_length=65536)] = {}
    # Of a stored variable, the offsets of its 8-byte words that LOAD leaves as its load filled them.
    relocated: Annotated[
        dict[VariableName, Annotated[tuple[Annotated[int, Field(ge=0, lt=1 << 32, multiple_of=8)], ...], Field(max_length=1 << 20)]],
        Field(max_length=65536),
    ] = {}


class MemorySegment(_Record):
    """Memory the graphs use that the engine will not re-create at LOAD: graph-pool blocks (no
    contents needed: graphs write them before reading) and blocks created after the restore
    point (with their contents where they are small enough to matter and be carried)."""

    address: U64
    size: Annotated[int, Field(gt=0, lt=1 << 64)]
    arena: Annotated[str, Field(min_length=1, max_length=31)]
    contents: Digest | None = None


"""The manifest of an archive: pydantic models (JSON, no pickle), each field bounded, and the
checks of every field against the others that a reader runs before anything uses them.

Caps fit real archives with a wide margin (the 8B-shaped workload: 67 graphs, 173 modules, 244
functions, about 500 blobs and a manifest of a few hundred kB; vLLM's piecewise capture: a few
thousand graphs). The cost of reading one is bounded by the archive's size, never by what it
claims (docs/security.md, "Cost bounds"): the manifest inflates to at most
manifest_allowance(file size), every list is capped, and so are the nodes all graphs expand to.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from foundry_alloc.arenas import ARENA_NAME_PATTERN, MAX_ARENAS
from foundry_alloc.config import PEER_SLOTS
from foundry_alloc.layout import Layout
from foundry_trace.archive.records import (
    U64,
    CollectiveSpec,
    Digest,
    FunctionRecord,
    MemorySegment,
    ModuleRecord,
    PeerWindowRecord,
)
from foundry_trace.errors import ArchiveFormatError

FORMAT_VERSION = 3  # 3: an optional signature block may follow the manifest (signing.py)
READABLE_VERSIONS = (2, 3)
MAX_MANIFEST_BYTES = 64 << 20  # decompressed, whatever the archive's size
MANIFEST_FLOOR = 1 << 20  # and at most this plus
MANIFEST_PER_ARCHIVE_BYTE = 2  # this many bytes per byte of the archive file (real ones: under 1)
MAX_RAW_BLOB_BYTES = 4 << 30  # a module binary, a node table or payload as stored
MAX_ZLIB_BLOB_BYTES = 256 << 20  # memory contents once inflated (SAVE carries blocks of 1 MiB at most)
MAX_ZLIB_RATIO = 1100  # zlib cannot inflate more than about 1032:1
MAX_GRAPH_BLOB_RATIO = 32  # a compressed node table or payload: real ones compress 3-10x
MAX_GRAPHS = 65536
MAX_MODULES = 65536
MAX_FUNCTIONS = 1 << 16
MAX_SEGMENTS = 1 << 16
MAX_MODULES_PER_GRAPH = 1 << 12
MAX_GRAPH_MODULE_REFS = 1 << 20  # module indices of all graphs together
MAX_LAYOUT_ALLOCATIONS = 1 << 17  # the engine's blocks at the restore point
MAX_ARCHIVE_NODES = 1 << 24  # what all graphs expand to, each child graph counted once per use
MAX_BLOBS = 1 << 17
MAX_EVENTS = 65536
MAX_COLLECTIVES = 65536
MAX_PER_GRAPH = 256  # outputs, references
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/#+=@-]{0,127}$"  # printable ASCII: batch sizes, piece names, key#n


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BlobRef(_Model):
    offset: U64
    stored: U64  # bytes in the file
    size: Annotated[int, Field(ge=0, le=MAX_RAW_BLOB_BYTES)]  # bytes once decoded
    codec: Literal["raw", "zlib"] = "raw"


class Fingerprint(_Model):
    """Everything that must match between the SAVE process and a LOAD process."""

    gpu: Annotated[str, Field(max_length=256)]
    compute_capability: Annotated[str, Field(max_length=16)]
    driver: Annotated[str, Field(max_length=64)] | None  # kernel driver version, e.g. 580.159.04
    cuda_driver_api: int  # cuDriverGetVersion, e.g. 13000
    torch: Annotated[str, Field(max_length=128)]
    torch_cuda: Annotated[str, Field(max_length=64)] | None
    allocator_base: U64
    allocator_size: U64
    restore_layout: Annotated[str, Field(max_length=128)]  # fingerprint of the engine's layout at the restore point


class OutputTensor(_Model):
    name: Annotated[str, Field(max_length=256)]
    address: U64
    dtype: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]  # a torch dtype's name, e.g. float32
    shape: Annotated[tuple[Annotated[int, Field(ge=0, lt=1 << 40)], ...], Field(max_length=16)]
    stride: Annotated[tuple[Annotated[int, Field(ge=0, lt=1 << 40)], ...], Field(max_length=16)]


class OutputReference(_Model):
    """What one declared output held after a replay on inputs its harness can reproduce (the
    bench's workloads: seeded inputs, KV cache zeroed): its SHA-256, and whether more replays
    (the bench's: five, two for whole models and piecewise steps) gave the same bits (a graph
    that does not is nondeterministic and cannot be compared bit for bit by anyone). `foundry
    verify` compares a restore with these."""

    name: Annotated[str, Field(max_length=256)]
    digest: Digest
    deterministic: bool


# When LOAD may build a graph, decided at SAVE from its node kinds (_node_table.early_build):
# "always" before the restore point (prefetch), "graph_memory" there once prefetch has mapped the
# graph arena, "never" (only at the restore point). LOAD reads this, never the node table.
EarlyBuild = Literal["always", "graph_memory", "never"]


class GraphEntry(_Model):
    """One graph: its node table and payload blobs (node_table.py), its template (index into the
    manifest's topologies), the modules its kernels come from, and its declared outputs."""

    key: Annotated[str, Field(pattern=KEY_PATTERN)]
    template: Annotated[int, Field(ge=0)]
    table: Digest
    payload: Digest
    modules: Annotated[tuple[Annotated[int, Field(ge=0)], ...], Field(max_length=MAX_MODULES_PER_GRAPH)]
    outputs: Annotated[tuple[OutputTensor, ...], Field(max_length=MAX_PER_GRAPH)] = ()
    nodes: Annotated[int, Field(ge=0)]  # nodes that do work, child graphs flattened
    edges: Annotated[int, Field(ge=0)]
    driver_nodes: Annotated[int, Field(ge=0)]  # as the driver counted them at SAVE
    driver_edges: Annotated[int, Field(ge=0)]
    # The arenas of the memory its memset and memcpy nodes name ("unknown" outside the recorded
    # memory and the engine's layout), sorted; None where SAVE did not record them. prefetch()
    # builds the graph early when it names the graph arena only, which prefetch maps itself.
    copy_arenas: Annotated[tuple[Annotated[str, Field(max_length=31)], ...], Field(max_length=MAX_ARENAS + 1)] | None = None
    # When LOAD may build it (EarlyBuild), decided at SAVE; None in archives saved before SAVE
    # decided it: LOAD then builds the graph at the restore point only.
    early: EarlyBuild | None = None
    references: Annotated[tuple[OutputReference, ...], Field(max_length=MAX_PER_GRAPH)] = ()


class Manifest(_Model):
    format: Literal["foundry-archive"] = "foundry-archive"
    version: Literal[2, 3] = FORMAT_VERSION
    created: Annotated[str, Field(max_length=64)]
    fingerprint: Fingerprint
    restore_layout: Layout
    modules: Annotated[tuple[ModuleRecord, ...], Field(max_length=MAX_MODULES)]
    functions: Annotated[tuple[FunctionRecord, ...], Field(max_length=MAX_FUNCTIONS)]
    templates: Annotated[tuple[Digest, ...], Field(max_length=MAX_GRAPHS)]  # graph topologies (node kinds and edges)
    graphs: Annotated[tuple[GraphEntry, ...], Field(max_length=MAX_GRAPHS)]
    memory: Annotated[tuple[MemorySegment, ...], Field(max_length=MAX_SEGMENTS)]
    events: Annotated[int, Field(ge=0, le=MAX_EVENTS)]
    blobs: Annotated[dict[Digest, BlobRef], Field(max_length=MAX_BLOBS)]
    # Tensor parallelism: the ranks the graphs were captured for (one rank's step, SAVEd without
    # a peer), and either the collectives that LOAD binds to the live NCCL communicator, or the
    # peer window whose all-reduce kernels the graphs hold (every rank restores them unchanged).
    tensor_parallel: Annotated[int, Field(ge=1, le=1024)] = 1
    collectives: Annotated[tuple[CollectiveSpec, ...], Field(max_length=MAX_COLLECTIVES)] = ()
    peer_window: PeerWindowRecord | None = None
    # Free-form notes of the program that saved it (the bench names its workload and options, so
    # that `foundry verify` can rebuild the engine); never read by LOAD.
    metadata: Annotated[dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=4096)]], Field(max_length=64)] = {}


def manifest_allowance(archive_bytes: int) -> int:
    """The most bytes the manifest of an archive file of `archive_bytes` may inflate to: parsing
    costs time and memory in proportion (docs/security.md measures it)."""
    return min(MAX_MANIFEST_BYTES, MANIFEST_FLOOR + MANIFEST_PER_ARCHIVE_BYTE * archive_bytes)


def check_manifest(manifest: Manifest, where: str, blob_section_start: int, blob_section_end: int) -> None:
    """Every field against the others: indices inside their tables, every referenced blob
    indexed and lying in the blob section (the format's bounds: this module does not import
    format.py, which imports it), sizes consistent, memory inside the allocator's range, arena
    names the allocator can give, outputs with as many strides as dimensions, the totals over
    lists capped. Raises ArchiveFormatError naming the first fault."""
    _check_totals(manifest, where)
    _check_blobs(manifest, where, blob_section_start, blob_section_end)
    _check_indices(manifest, where)
    _check_memory(manifest, where)
    _check_outputs(manifest, where)


def _fail(where: str, problem: str) -> None:
    raise ArchiveFormatError(f"{where}: {problem}: the archive is corrupted or was not written by Foundry; save it again")


def _check_totals(manifest: Manifest, where: str) -> None:
    refs = sum(len(g.modules) for g in manifest.graphs)
    if refs > MAX_GRAPH_MODULE_REFS:
        _fail(where, f"its graphs name {refs} modules in all (at most {MAX_GRAPH_MODULE_REFS})")
    blocks = len(manifest.restore_layout.allocations)
    if blocks > MAX_LAYOUT_ALLOCATIONS:
        _fail(where, f"its restore layout holds {blocks} blocks (at most {MAX_LAYOUT_ALLOCATIONS})")
    nodes = sum(g.nodes for g in manifest.graphs)
    if nodes > MAX_ARCHIVE_NODES:
        _fail(where, f"its graphs declare {nodes} nodes in all (at most {MAX_ARCHIVE_NODES})")


def referenced_blobs(manifest: Manifest) -> set[str]:
    """Every blob the manifest references: module binaries and their stored variables, memory
    contents, and each graph's node table and payload (each must be indexed)."""
    referenced = {m.digest for m in manifest.modules}
    referenced |= {digest for m in manifest.modules for digest in m.variables.values()}
    referenced |= {s.contents for s in manifest.memory if s.contents}
    referenced |= {digest for g in manifest.graphs for digest in (g.table, g.payload)}
    return referenced


def _check_blobs(manifest: Manifest, where: str, blob_section_start: int, blob_section_end: int) -> None:
    for digest, ref in manifest.blobs.items():
        if ref.offset < blob_section_start or ref.offset + ref.stored > blob_section_end:
            _fail(where, f"blob {digest[:12]} lies at [{ref.offset:#x}, +{ref.stored:#x}), outside the blob section")
        if ref.codec == "raw" and ref.stored != ref.size:
            _fail(where, f"raw blob {digest[:12]} is stored in {ref.stored} bytes but declares {ref.size}")
        if ref.codec == "zlib" and (ref.size > MAX_ZLIB_BLOB_BYTES or ref.size > ref.stored * MAX_ZLIB_RATIO):
            _fail(where, f"compressed blob {digest[:12]} declares {ref.size} bytes from {ref.stored} (more than zlib can inflate, or than {MAX_ZLIB_BLOB_BYTES})")
    referenced = referenced_blobs(manifest)
    for digest in {d for g in manifest.graphs for d in (g.table, g.payload)} & manifest.blobs.keys():
        ref = manifest.blobs[digest]
        if ref.codec == "zlib" and ref.size > ref.stored * MAX_GRAPH_BLOB_RATIO:
            _fail(where, f"node table or payload {digest[:12]} declares {ref.size} bytes from {ref.stored} (at most {MAX_GRAPH_BLOB_RATIO}:1)")
    missing = referenced - manifest.blobs.keys()
    if missing:
        _fail(where, f"{len(missing)} referenced blob(s) are not indexed, e.g. {min(missing)[:12]}")
    for module in manifest.modules:
        if manifest.blobs[module.digest].size != module.size:
            _fail(where, f"module {module.digest[:12]} declares {module.size} bytes, its blob holds {manifest.blobs[module.digest].size}")


def _check_indices(manifest: Manifest, where: str) -> None:
    for number, function in enumerate(manifest.functions):
        if function.module >= len(manifest.modules):
            _fail(where, f"function {number} names module {function.module} of {len(manifest.modules)}")
    for graph in manifest.graphs:
        if graph.template >= len(manifest.templates) or any(m >= len(manifest.modules) for m in graph.modules):
            _fail(where, f"graph {graph.key!r} names a template or module the manifest lacks")
    if len({g.key for g in manifest.graphs}) != len(manifest.graphs):
        _fail(where, "two graphs share one key")


def _check_memory(manifest: Manifest, where: str) -> None:
    base = manifest.fingerprint.allocator_base
    end = base + manifest.fingerprint.allocator_size
    ranges = [(s.address, s.size, f"memory segment at {s.address:#x}") for s in manifest.memory]
    ranges += [(a.address, a.size, f"engine block at {a.address:#x}") for a in manifest.restore_layout.allocations]
    ranges += [(c.address, c.size_bytes, f"collective at {c.address:#x}") for c in manifest.collectives]
    for address, size, what in ranges:
        if not base <= address <= address + size <= end:
            _fail(where, f"{what} (+{size:#x}) lies outside the allocator's range [{base:#x}, {end:#x})")
    window = manifest.peer_window
    if window is not None:
        if manifest.collectives:
            _fail(where, "the archive holds both NCCL collectives and peer all-reduces")
        if window.base < end and base < window.base + PEER_SLOTS * window.stride:
            _fail(where, f"the peer window at {window.base:#x} overlaps the allocator's range [{base:#x}, {end:#x})")
        if window.buffer_bytes > window.stride or manifest.tensor_parallel > PEER_SLOTS - 1:
            _fail(where, f"a peer window of {manifest.tensor_parallel} ranks with {window.buffer_bytes:#x}-byte buffers in {window.stride:#x}-byte slots")
    for segment in manifest.memory:
        if segment.contents and manifest.blobs[segment.contents].size > segment.size:
            _fail(where, f"memory segment at {segment.address:#x} is {segment.size:#x} bytes but its contents hold {manifest.blobs[segment.contents].size:#x}")
    arenas = {s.arena for s in manifest.memory} | {a.arena for a in manifest.restore_layout.allocations}
    invalid = sorted(name for name in arenas if not ARENA_NAME_PATTERN.match(name))
    if invalid or len(arenas) > MAX_ARENAS:
        _fail(where, f"arena names {invalid or sorted(arenas)}: the allocator has {MAX_ARENAS} arenas named by {ARENA_NAME_PATTERN.pattern}")


def _check_outputs(manifest: Manifest, where: str) -> None:
    for graph in manifest.graphs:
        for output in graph.outputs:
            if len(output.shape) != len(output.stride):
                _fail(where, f"output {output.name!r} of graph {graph.key!r} has {len(output.shape)} dimensions but {len(output.stride)} strides")

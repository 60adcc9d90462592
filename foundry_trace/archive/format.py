"""The archive file: a fixed header, content-addressed binary blobs, and a JSON manifest.

    [0, 64)    header: magic "FNDRYARC", format version (u32), flags (u32), manifest offset (u64),
               manifest size as stored (u64), SHA-256 of the stored manifest (32 bytes)
    [64, ...)  blobs, each 64-byte aligned, named by the SHA-256 of their bytes (their checksum),
               stored raw (module binaries, each graph's node table and payload (node_table.py):
               what LOAD hands to the driver on its critical path) or zlib-compressed where that
               saves a margin (memory contents, mostly zeros)
    [..., end) the manifest: pydantic models as JSON (no pickle, ever), zlib-compressed; small,
               since graphs are blobs

Readers read the file with pread (one copy out of the page cache, no page faults, no file
position: LOAD's threads read in parallel) and check every offset against the file before
reading; a blob's checksum is verified when it is read; decompression never produces more than
the size the manifest declares. Any inconsistency raises ArchiveFormatError.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from foundry_alloc import Layout
from foundry_trace.archive.node_table import decode
from foundry_trace.archive.records import U64, CollectiveSpec, Digest, FunctionRecord, GraphBody, MemorySegment, ModuleRecord
from foundry_trace.errors import ArchiveFormatError
from foundry_trace.native import check_table

MAGIC = b"FNDRYARC"
FORMAT_VERSION = 2
HEADER = struct.Struct("<8sIIQQ32s")  # 64 bytes
BLOB_ALIGNMENT = 64
MAX_MANIFEST_BYTES = 1 << 30  # decompressed
MAX_BLOB_BYTES = 1 << 34
COMPRESSION_LEVEL = 6
COMPRESSION_MARGIN = 0.9  # a blob is stored compressed when that saves 10 % or more
READ_CHUNK = 1 << 30  # pread returns at most 2 GiB - 4 KiB at once on Linux


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BlobRef(_Model):
    offset: U64
    stored: U64  # bytes in the file
    size: Annotated[int, Field(ge=0, le=MAX_BLOB_BYTES)]  # bytes once decoded
    codec: Literal["raw", "zlib"] = "raw"


class Fingerprint(_Model):
    """Everything that must match between the SAVE process and a LOAD process."""

    gpu: str
    compute_capability: str
    driver: str | None  # kernel driver version, e.g. 580.159.04
    cuda_driver_api: int  # cuDriverGetVersion, e.g. 13000
    torch: str
    torch_cuda: str | None
    allocator_base: U64
    allocator_size: U64
    restore_layout: str  # fingerprint of the engine's layout at the restore point


class OutputTensor(_Model):
    name: Annotated[str, Field(max_length=256)]
    address: U64
    dtype: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]  # a torch dtype's name, e.g. float32
    shape: tuple[Annotated[int, Field(ge=0, lt=1 << 40)], ...]
    stride: tuple[Annotated[int, Field(ge=0, lt=1 << 40)], ...]


class OutputReference(_Model):
    """What one declared output held after a replay on inputs its harness can reproduce (the
    bench's workloads: seeded inputs, KV cache zeroed): its SHA-256, and whether five more
    replays gave the same bits (a graph that does not is nondeterministic and cannot be compared
    bit for bit by anyone). `foundry verify` compares a restore with these."""

    name: Annotated[str, Field(max_length=256)]
    digest: Digest
    deterministic: bool


class GraphEntry(_Model):
    """One graph: its node table and payload blobs (node_table.py), its template (index into the
    manifest's topologies), the modules its kernels come from, and its declared outputs."""

    key: str
    template: Annotated[int, Field(ge=0)]
    table: Digest
    payload: Digest
    modules: tuple[Annotated[int, Field(ge=0)], ...]
    outputs: tuple[OutputTensor, ...] = ()
    nodes: Annotated[int, Field(ge=0)]  # nodes that do work, child graphs flattened
    edges: Annotated[int, Field(ge=0)]
    driver_nodes: Annotated[int, Field(ge=0)]  # as the driver counted them at SAVE
    driver_edges: Annotated[int, Field(ge=0)]
    # The arenas of the memory its memset and memcpy nodes name ("unknown" outside the recorded
    # memory and the engine's layout), sorted; None where SAVE did not record them. prefetch()
    # builds the graph early when it names the graph arena only, which prefetch maps itself.
    copy_arenas: tuple[str, ...] | None = None
    references: tuple[OutputReference, ...] = ()


class Manifest(_Model):
    format: Literal["foundry-archive"] = "foundry-archive"
    version: Literal[2] = FORMAT_VERSION
    created: str
    fingerprint: Fingerprint
    restore_layout: Layout
    modules: tuple[ModuleRecord, ...]
    functions: tuple[FunctionRecord, ...]
    templates: tuple[Digest, ...]  # graph topologies (node kinds and edges)
    graphs: tuple[GraphEntry, ...]
    memory: tuple[MemorySegment, ...]
    events: Annotated[int, Field(ge=0)]
    blobs: dict[Digest, BlobRef]
    # Tensor parallelism: the ranks the graphs were captured for (one rank's step, SAVEd without
    # a peer), and the collectives that LOAD binds to the live communicator.
    tensor_parallel: Annotated[int, Field(ge=1, le=1024)] = 1
    collectives: tuple[CollectiveSpec, ...] = ()
    # Free-form notes of the program that saved it (the bench names its workload and options, so
    # that `foundry verify` can rebuild the engine); never read by LOAD.
    metadata: Annotated[dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=4096)]], Field(max_length=64)] = {}


class ArchiveWriter:
    """Writes blobs as they come (each once), then the manifest and the header."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._partial, "wb")  # noqa: SIM115 - closed by finish() or abort()
        self._file.write(b"\0" * HEADER.size)
        self._blobs: dict[str, BlobRef] = {}

    def add_blob(self, data: bytes | memoryview, digest: str | None = None, *, compress: bool = False) -> str:
        """Stores `data` once; `digest` is its SHA-256 where the caller already has it. `compress`
        asks for zlib where it saves a margin: for bulk contents only, since inflating is slower
        than the driver's own work on what LOAD loads (0.47 s of CPU for the 106 MB of modules
        of the 8B workload, against 0.2 s for the driver to load them)."""
        digest = digest or hashlib.sha256(data).hexdigest()
        if digest not in self._blobs:
            offset = self._file.tell()
            padding = -offset % BLOB_ALIGNMENT
            self._file.write(b"\0" * padding)
            packed = zlib.compress(data, COMPRESSION_LEVEL) if compress else data
            codec = "zlib" if compress and len(packed) <= COMPRESSION_MARGIN * len(data) else "raw"
            stored = packed if codec == "zlib" else data
            self._blobs[digest] = BlobRef(offset=offset + padding, stored=len(stored), size=len(data), codec=codec)
            self._file.write(stored)
        return digest

    @property
    def blobs(self) -> dict[str, BlobRef]:
        return dict(self._blobs)

    def finish(self, manifest: Manifest) -> Path:
        """Writes the manifest and header, then renames the file into place (never half-written)."""
        payload = zlib.compress(manifest.model_dump_json().encode(), COMPRESSION_LEVEL)
        offset = self._file.tell()
        self._file.write(payload)
        self._file.seek(0)
        self._file.write(HEADER.pack(MAGIC, FORMAT_VERSION, 0, offset, len(payload), hashlib.sha256(payload).digest()))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._partial, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class Archive:
    """A read-only view of an archive file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise ArchiveFormatError(f"cannot open archive {self.path}: {error.strerror}") from None
        try:
            self._size = os.fstat(self._file).st_size
            if self._size < HEADER.size:
                raise ArchiveFormatError(f"{self.path} is {self._size} bytes, too short for a Foundry archive")
            self.manifest = self._read_manifest(self._size)
        except BaseException:
            os.close(self._file)
            raise

    def _read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of the file, which the caller checked lie inside it."""
        parts = []
        while length:
            try:
                part = os.pread(self._file, min(length, READ_CHUNK), offset)
            except OSError as error:
                raise ArchiveFormatError(f"cannot read archive {self.path}: {error.strerror}") from None
            if not part:
                raise ArchiveFormatError(f"{self.path} was truncated while open: save it again")
            parts.append(part)
            offset, length = offset + len(part), length - len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_manifest(self, size: int) -> Manifest:
        magic, version, _flags, offset, length, checksum = HEADER.unpack(self._read(0, HEADER.size))
        if magic != MAGIC:
            raise ArchiveFormatError(f"{self.path} is not a Foundry archive (magic {magic!r}); write one with foundry save")
        if version != FORMAT_VERSION:
            raise ArchiveFormatError(
                f"{self.path} has format version {version}; this Foundry reads version {FORMAT_VERSION}: "
                "save it again with this version"
            )
        if offset < HEADER.size or offset + length > size:
            raise ArchiveFormatError(
                f"{self.path} is truncated or corrupted: its manifest lies at [{offset}, +{length}) in a "
                f"file of {size} bytes"
            )
        payload = self._read(offset, length)
        if hashlib.sha256(payload).digest() != checksum:
            raise ArchiveFormatError(f"{self.path}: the manifest's checksum does not match: the file is corrupted")
        payload = _inflate(payload, MAX_MANIFEST_BYTES, f"{self.path}: the manifest")
        try:
            manifest = Manifest.model_validate_json(payload)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(map(str, first["loc"])) or "top level"
            raise ArchiveFormatError(f"{self.path}: invalid manifest at {where}: {first['msg']}") from None
        _check_indices(manifest, self.path)
        for digest, ref in manifest.blobs.items():
            if ref.offset < HEADER.size or ref.offset + ref.stored > offset or (ref.codec == "raw" and ref.stored != ref.size):
                raise ArchiveFormatError(
                    f"{self.path}: blob {digest[:12]} lies at [{ref.offset}, +{ref.stored}), outside the blob "
                    "section or inconsistent with its size: the file is corrupted"
                )
        return manifest

    def blob(self, digest: str) -> bytes:
        """The bytes of a blob, checked against its digest."""
        ref = self.manifest.blobs.get(digest)
        if ref is None:
            raise ArchiveFormatError(f"{self.path}: the manifest names blob {digest[:12]} but does not index it")
        data = self._read(ref.offset, ref.stored)
        if ref.codec == "zlib":
            data = _inflate(data, ref.size, f"{self.path}: blob {digest[:12]}")
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != digest:
            raise ArchiveFormatError(f"{self.path}: blob {digest[:12]} is corrupted (checksum mismatch)")
        return data

    def graph_blobs(self, entry: GraphEntry) -> tuple[bytes, bytes]:
        """A graph's node table and payload, checksums verified (the table is not validated here:
        the native builder and decode() do that)."""
        return self.blob(entry.table), self.blob(entry.payload)

    def graph(self, entry: GraphEntry) -> GraphBody:
        """The records of one graph (for inspection; LOAD hands the table to the native builder)."""
        table, payload = self.graph_blobs(entry)
        return decode(table, payload, len(self.manifest.functions), self.manifest.events, len(self.manifest.collectives))

    def verify(self) -> None:
        """Checks every blob's checksum, every reference to a blob and every node table."""
        referenced = {m.digest for m in self.manifest.modules}
        referenced |= {v for m in self.manifest.modules for v in m.variables.values()}
        referenced |= {s.contents for s in self.manifest.memory if s.contents}
        referenced |= {d for g in self.manifest.graphs for d in (g.table, g.payload)}
        missing = referenced - set(self.manifest.blobs)
        if missing:
            raise ArchiveFormatError(f"{self.path}: {len(missing)} referenced blob(s) are missing, e.g. {min(missing)[:12]}")
        for digest in self.manifest.blobs:
            self.blob(digest)
        for entry in self.manifest.graphs:
            table, payload = self.graph_blobs(entry)
            check_table(table, payload, len(self.manifest.functions), self.manifest.events, len(self.manifest.collectives), f"{self.path}: graph {entry.key!r}")

    def close(self) -> None:
        if self._file >= 0:
            os.close(self._file)
            self._file = -1

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _check_indices(manifest: Manifest, path: Path) -> None:
    """Every index the manifest holds points inside its table (digests are checked where read)."""
    for number, function in enumerate(manifest.functions):
        if function.module >= len(manifest.modules):
            raise ArchiveFormatError(f"{path}: function {number} names module {function.module} of {len(manifest.modules)}")
    for graph in manifest.graphs:
        if graph.template >= len(manifest.templates) or any(m >= len(manifest.modules) for m in graph.modules):
            raise ArchiveFormatError(f"{path}: graph {graph.key!r} names a template or module the manifest lacks")
    if len({g.key for g in manifest.graphs}) != len(manifest.graphs):
        raise ArchiveFormatError(f"{path}: two graphs share one key")


def _inflate(data: bytes | memoryview, limit: int, what: str) -> bytes:
    """zlib-decompresses at most `limit` bytes: a corrupted or hostile file cannot make it allocate more."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as error:
        raise ArchiveFormatError(f"{what} does not decompress ({error}): the file is corrupted") from None
    if len(out) > limit or not inflater.eof:
        raise ArchiveFormatError(f"{what} is larger than declared or truncated: the file is corrupted")
    return out

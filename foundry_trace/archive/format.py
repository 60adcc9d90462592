"""The archive file: a fixed header, content-addressed binary blobs, a JSON manifest, and the
signatures of whoever vouches for it.

    [0, 64)    header: magic "FNDRYARC", format version (u32), flags (u32), manifest offset (u64),
               manifest size as stored (u64), SHA-256 of the stored manifest (32 bytes): the
               archive's digest
    [64, ...)  blobs, each 64-byte aligned, named by the SHA-256 of their bytes (their checksum),
               stored raw (module binaries, each graph's node table and payload (node_table.py):
               what LOAD hands to the driver on its critical path) or zlib-compressed where that
               saves a margin (memory contents, mostly zeros)
    [m, m+n)   the manifest (manifest.py): pydantic models as JSON (no pickle, ever), zlib-compressed
    [m+n, end) format 3 only, optional: a signature block, "FNDRYSIG", a count (u32), 4 reserved
               bytes, then per signature an Ed25519 public key (32 bytes) and its signature of the
               digest (64 bytes; signing.py)

The digest covers everything: the manifest holds every blob's SHA-256, and every blob is checked
against it as it is read, before anything uses it. So a signature over the digest vouches for
every byte LOAD hands to the driver.

Readers read the file with pread (one copy out of the page cache, no page faults, no file
position: LOAD's threads read in parallel) and check every offset against the file before
reading; a blob's checksum is verified when it is read; decompression never produces more than
the size the manifest declares; every field is checked against the others at open
(manifest.check_manifest). Any inconsistency raises ArchiveFormatError.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from foundry_trace._native import check_table
from foundry_trace.archive._node_table import decode
from foundry_trace.archive.manifest import (
    FORMAT_VERSION,
    MAX_MANIFEST_BYTES,
    READABLE_VERSIONS,
    BlobRef,
    GraphEntry,
    Manifest,
    check_manifest,
    manifest_allowance,
)
from foundry_trace.archive.records import GraphBody
from foundry_trace.errors import ArchiveFormatError

MAGIC = b"FNDRYARC"
HEADER = struct.Struct("<8sIIQQ32s")  # 64 bytes
SIGNATURE_MAGIC = b"FNDRYSIG"
SIGNATURE_HEADER = struct.Struct("<8sII")  # magic, count, reserved
SIGNATURE_ENTRY = struct.Struct("<32s64s")  # Ed25519 public key, signature
MAX_SIGNATURES = 16
BLOB_ALIGNMENT = 64
COMPRESSION_LEVEL = 6
COMPRESSION_MARGIN = 0.9  # a blob is stored compressed when that saves 10 % or more
READ_CHUNK = 1 << 30  # pread returns at most 2 GiB - 4 KiB at once on Linux


@dataclass(frozen=True)
class Signature:
    """One signature of an archive's digest (signing.py checks it)."""

    public_key: bytes  # raw Ed25519, 32 bytes
    signature: bytes  # 64 bytes


def signature_block(signatures: list[Signature]) -> bytes:
    """The bytes that follow the manifest of a signed archive."""
    if len(signatures) > MAX_SIGNATURES:
        raise ArchiveFormatError(f"an archive holds at most {MAX_SIGNATURES} signatures; drop some before signing again")
    return SIGNATURE_HEADER.pack(SIGNATURE_MAGIC, len(signatures), 0) + b"".join(
        SIGNATURE_ENTRY.pack(s.public_key, s.signature) for s in signatures
    )


@dataclass(frozen=True)
class StoredBlob:
    """Where a blob lies in an archive file and what it must decode to: its offset, stored and
    decoded sizes, codec ("raw" or "zlib") and SHA-256 (hex). The native readers read and check
    it there (csrc/blob_read.hpp); reading the archive itself needs no compiled library."""

    digest: str
    offset: int
    stored: int
    size: int
    codec: str


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
        """Writes the manifest and header, then renames the file into place (never half-written).
        The archive's digest is then `self.digest`."""
        text = manifest.model_dump_json().encode()
        payload = zlib.compress(text, COMPRESSION_LEVEL)
        offset = self._file.tell()
        if len(text) > manifest_allowance(offset + len(payload)):
            raise ArchiveFormatError(
                f"the manifest would inflate to {len(text)} bytes, more than readers accept in an archive of "
                f"{offset + len(payload)} bytes ({manifest_allowance(offset + len(payload))}): save fewer graphs per archive"
            )
        self._file.write(payload)
        self._file.seek(0)
        self.digest = hashlib.sha256(payload).hexdigest()
        self._file.write(HEADER.pack(MAGIC, FORMAT_VERSION, 0, offset, len(payload), bytes.fromhex(self.digest)))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._partial, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class Archive:
    """A read-only view of an archive file: its header, manifest and signatures are read and
    checked at open; blobs are read, and checked against their digests, on demand.

    `digest` is the archive's identity: the SHA-256 of its stored manifest, which names every
    blob's SHA-256 (print it, pin it with load(digest=...), sign it with `foundry sign`)."""

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
            self.manifest, manifest_end = self._read_manifest(self._size)
            self.signatures = self._read_signatures(manifest_end)
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

    def _read_manifest(self, size: int) -> tuple[Manifest, int]:
        magic, version, _flags, offset, length, checksum = HEADER.unpack(self._read(0, HEADER.size))
        if magic != MAGIC:
            raise ArchiveFormatError(f"{self.path} is not a Foundry archive (magic {magic!r}); write one with foundry_trace.record")
        if version not in READABLE_VERSIONS:
            raise ArchiveFormatError(
                f"{self.path} has format version {version}; this Foundry reads versions {', '.join(map(str, READABLE_VERSIONS))}: "
                "save it again with this version"
            )
        if offset < HEADER.size or offset + length > size or length > MAX_MANIFEST_BYTES:
            raise ArchiveFormatError(
                f"{self.path} is truncated or corrupted: its manifest lies at [{offset:#x}, +{length:#x}) in a "
                f"file of {size:#x} bytes (at most {MAX_MANIFEST_BYTES:#x} for a manifest)"
            )
        payload = self._read(offset, length)
        if hashlib.sha256(payload).digest() != checksum:
            raise ArchiveFormatError(f"{self.path}: the manifest's checksum does not match: the file is corrupted")
        self.version, self.digest = version, checksum.hex()
        allowance = manifest_allowance(size)
        payload = _inflate(payload, allowance, f"{self.path}: the manifest (which may inflate to {allowance} bytes in a file of {size})")
        try:
            manifest = Manifest.model_validate_json(payload)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(map(str, first["loc"])) or "top level"
            raise ArchiveFormatError(f"{self.path}: invalid manifest at {where}: {first['msg']}") from None
        if manifest.version != version:
            raise ArchiveFormatError(f"{self.path}: the header says format {version}, the manifest {manifest.version}: the file is corrupted")
        check_manifest(manifest, str(self.path), blob_section_start=HEADER.size, blob_section_end=offset)
        return manifest, offset + length

    def _read_signatures(self, manifest_end: int) -> tuple[Signature, ...]:
        """The signature block after the manifest (format 3), or none. Anything else there is
        refused: bytes appended to an archive must not pass unnoticed."""
        trailing = self._size - manifest_end
        if trailing == 0:
            return ()
        if self.version < 3 or trailing < SIGNATURE_HEADER.size:
            raise ArchiveFormatError(f"{self.path}: {trailing} unexpected bytes after the manifest: the file is corrupted")
        magic, count, _ = SIGNATURE_HEADER.unpack(self._read(manifest_end, SIGNATURE_HEADER.size))
        if magic != SIGNATURE_MAGIC or count > MAX_SIGNATURES or trailing != SIGNATURE_HEADER.size + count * SIGNATURE_ENTRY.size:
            raise ArchiveFormatError(f"{self.path}: the {trailing} bytes after the manifest are not a signature block: the file is corrupted")
        entries = self._read(manifest_end + SIGNATURE_HEADER.size, count * SIGNATURE_ENTRY.size)
        return tuple(Signature(*SIGNATURE_ENTRY.unpack_from(entries, i * SIGNATURE_ENTRY.size)) for i in range(count))

    @property
    def manifest_end(self) -> int:
        """Where the signature block starts (or the file ends)."""
        return self._size - (SIGNATURE_HEADER.size + len(self.signatures) * SIGNATURE_ENTRY.size if self.signatures else 0)

    def blob(self, digest: str) -> bytes:
        """The bytes of a blob, checked against its digest."""
        ref = self.locate(digest)
        data = self._read(ref.offset, ref.stored)
        if ref.codec == "zlib":
            data = _inflate(data, ref.size, f"{self.path}: blob {digest[:12]}")
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != digest:
            raise ArchiveFormatError(f"{self.path}: blob {digest[:12]} is corrupted (checksum mismatch)")
        return data

    def locate(self, digest: str) -> StoredBlob:
        """Where a blob lies in the file and what it must decode to, for readers that read and
        check it themselves (LOAD's native threads, from fileno())."""
        ref = self.manifest.blobs.get(digest)
        if ref is None:
            raise ArchiveFormatError(f"{self.path}: the manifest names blob {digest[:12]} but does not index it")
        return StoredBlob(digest, ref.offset, ref.stored, ref.size, ref.codec)

    def fileno(self) -> int:
        """The file descriptor the archive is read through (-1 once closed)."""
        return self._file

    def graph_blobs(self, entry: GraphEntry) -> tuple[bytes, bytes]:
        """A graph's node table and payload, checksums verified (the table is not validated here:
        the native builder and decode() do that)."""
        return self.blob(entry.table), self.blob(entry.payload)

    def graph(self, entry: GraphEntry) -> GraphBody:
        """The records of one graph (for inspection; LOAD hands the table to the native builder)."""
        table, payload = self.graph_blobs(entry)
        return decode(table, payload, len(self.manifest.functions), self.manifest.events, len(self.manifest.collectives))

    def verify(self) -> None:
        """Checks every blob's checksum and every node table (references were checked at open).
        Each blob is read and inflated once, and each distinct pair of table and payload checked
        once, however many graphs share them: the cost follows the file, not its references."""
        graph_blobs = {digest for entry in self.manifest.graphs for digest in (entry.table, entry.payload)}
        kept = {}
        for digest in self.manifest.blobs:
            data = self.blob(digest)
            if digest in graph_blobs:
                kept[digest] = data
        checked = set()
        for entry in self.manifest.graphs:
            if (entry.table, entry.payload) not in checked:
                checked.add((entry.table, entry.payload))
                m = self.manifest
                check_table(kept[entry.table], kept[entry.payload], len(m.functions), m.events, len(m.collectives), f"{self.path}: graph {entry.key!r}")

    def close(self) -> None:
        if self._file >= 0:
            os.close(self._file)
            self._file = -1

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


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

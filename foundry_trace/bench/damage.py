"""Edits of archive files for refusal tests (CPU and GPU) and the soak bench: each leaves the file
consistent except for what the edit itself breaks (checksums are recomputed, so the damage
reaches the check meant to catch it)."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from foundry_trace.archive._node_table import BODY, NODE
from foundry_trace.archive._node_table import HEADER as TABLE_HEADER
from foundry_trace.archive.format import HEADER, MAGIC
from foundry_trace.archive.manifest import FORMAT_VERSION


def rewrite_manifest(path: Path, edit: Callable[[dict, int], bytes]) -> None:
    """Rewrites an archive's manifest with `edit(manifest, offset)`, which may return bytes to put
    where the manifest was (the manifest follows them); the header is made consistent again."""
    data = bytearray(path.read_bytes())
    manifest, offset = _stored_manifest(bytes(data))
    inserted = edit(manifest, offset)
    payload = zlib.compress(json.dumps(manifest, separators=(",", ":")).encode())  # compact, as SAVE writes it
    data[offset:] = inserted + payload
    data[: HEADER.size] = HEADER.pack(MAGIC, FORMAT_VERSION, 0, offset + len(inserted), len(payload), hashlib.sha256(payload).digest())
    path.write_bytes(bytes(data))


def read_manifest(path: Path) -> dict:
    return _stored_manifest(path.read_bytes())[0]


def _stored_manifest(data: bytes) -> tuple[dict, int]:
    """The manifest of archive bytes as plain JSON (no checks: the edits break them), and its offset."""
    _, _, _, offset, length, _ = HEADER.unpack_from(data, 0)
    return json.loads(zlib.decompress(data[offset : offset + length])), offset


def read_blob(path: Path, digest: str) -> bytes:
    ref = read_manifest(path)["blobs"][digest]
    stored = path.read_bytes()[ref["offset"] : ref["offset"] + ref["stored"]]
    return zlib.decompress(stored) if ref["codec"] == "zlib" else stored


def replace_blob(path: Path, digest: str, data: bytes) -> str:
    """Stores `data` as a new, valid blob and points every reference to `digest` at it."""
    new = hashlib.sha256(data).hexdigest()

    def point_at_new(manifest: dict, offset: int) -> bytes:
        manifest["blobs"][new] = {"offset": offset, "stored": len(data), "size": len(data), "codec": "raw"}
        for graph in manifest["graphs"]:
            for field in ("table", "payload"):
                if graph[field] == digest:
                    graph[field] = new
        for module in manifest["modules"]:
            if module["digest"] == digest:
                module["digest"] = new
        return data

    rewrite_manifest(path, point_at_new)
    return new


def corrupt_blob(path: Path, digest: str) -> None:
    """Flips a byte in the middle of a stored blob: its checksum no longer matches."""
    ref = read_manifest(path)["blobs"][digest]
    data = bytearray(path.read_bytes())
    data[ref["offset"] + ref["stored"] // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def compress_all(path: Path) -> int:
    """Rewrites an archive with every blob zlib-compressed where that pays (SAVE stores what LOAD
    loads raw), for test data kept in the repository; returns the new size."""
    from foundry_trace.archive.format import Archive, ArchiveWriter

    packed = path.with_name(path.name + ".packed")
    with Archive(path) as archive:
        writer = ArchiveWriter(packed)
        for digest in archive.manifest.blobs:
            writer.add_blob(archive.blob(digest), digest, compress=True)
        writer.finish(archive.manifest.model_copy(update={"blobs": writer.blobs}))
    packed.replace(path)
    return path.stat().st_size


def wrong_fingerprint(path: Path) -> None:
    """Saved for another torch: refused by the fingerprint check."""

    def edit(manifest: dict, _: int) -> bytes:
        manifest["fingerprint"]["torch"] = "0.0.0+elsewhere"
        return b""

    rewrite_manifest(path, edit)


def missing_section(path: Path) -> None:
    """The manifest names a node table it does not index: refused at open."""

    def edit(manifest: dict, _: int) -> bytes:
        manifest["blobs"].pop(manifest["graphs"][-1]["table"])
        return b""

    rewrite_manifest(path, edit)


def corrupted_graph(path: Path) -> None:
    """The last graph's payload no longer matches its checksum: refused when that graph is
    restored, after the modules and the other graphs were."""
    corrupt_blob(path, read_manifest(path)["graphs"][-1]["payload"])


def refused_by_driver(path: Path) -> None:
    """The last graph's first kernel gets a block of 0 threads: a valid table the driver refuses,
    after the modules and the other graphs were restored."""
    digest = read_manifest(path)["graphs"][-1]["table"]
    table = bytearray(read_blob(path, digest))
    body_count = TABLE_HEADER.unpack_from(table, 0)[2]
    first_node = TABLE_HEADER.size + body_count * BODY.size
    assert len(table) >= first_node + NODE.size
    struct.pack_into("<I", table, first_node + 20, 0)  # blockDimX of node 0 (after kind..index and grid)
    replace_blob(path, digest, bytes(table))

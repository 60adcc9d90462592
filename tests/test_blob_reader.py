"""The native blob reader (csrc/blob_read.cpp, sha256.cpp), which LOAD's background threads read
archives with: it must give exactly the bytes Archive.blob gives, and refuse exactly the blobs
Archive.blob refuses (damaged, truncated, or not what the manifest says)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from foundry_trace import _native as native
from foundry_trace.archive.format import Archive, ArchiveWriter, StoredBlob
from foundry_trace.errors import ArchiveFormatError

from .archive_samples import fixed_contents, write_archive

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Lengths around SHA-256's block and padding boundaries.
EDGES = st.sampled_from([0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096])


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=2048), EDGES.flatmap(lambda n: st.binary(min_size=n, max_size=n))))
def test_sha256_is_hashlibs(data: bytes) -> None:
    assert native.sha256(data) == native.sha256(data, portable=True) == hashlib.sha256(data).digest()


blob_lists = st.lists(st.tuples(st.binary(max_size=3000) | st.sampled_from([b"\0" * 5000, b"ab" * 3000]), st.booleans()), min_size=1, max_size=6)


@SETTINGS
@given(blob_lists)
def test_native_reads_give_what_archive_blob_gives(tmp_path: Path, blobs: list[tuple[bytes, bool]]) -> None:
    contents = fixed_contents()
    path = _archive_with(tmp_path / "a.foundry", contents, blobs)
    with Archive(path) as archive:
        for digest in archive.manifest.blobs:
            assert native.read_blob(archive.fileno(), archive.locate(digest)) == archive.blob(digest)


@SETTINGS
@given(blob_lists, st.data())
def test_a_damaged_blob_is_refused_by_both_readers(tmp_path: Path, blobs: list[tuple[bytes, bool]], data: st.DataObject) -> None:
    path = _archive_with(tmp_path / "a.foundry", fixed_contents(), blobs)
    with Archive(path) as archive:
        stored = [archive.locate(d) for d in archive.manifest.blobs]
    victim = data.draw(st.sampled_from([s for s in stored if s.stored > 0]))
    at = victim.offset + data.draw(st.integers(0, victim.stored - 1))
    raw = bytearray(path.read_bytes())
    raw[at] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(raw))
    with Archive(path) as archive:
        try:
            expected = archive.blob(victim.digest)
        except ArchiveFormatError:
            expected = None
        try:
            got = native.read_blob(archive.fileno(), victim)
        except ArchiveFormatError as error:
            assert f"blob {victim.digest[:12]}" in str(error), str(error)
            got = None
    assert got == expected
    # A changed byte is always refused, except in a compressed stream's padding bits, which
    # change nothing decoded (the checksum then still holds).
    assert got is None or (victim.codec == "zlib" and hashlib.sha256(got).hexdigest() == victim.digest)


def test_a_closed_or_truncated_archive_is_refused_with_the_reason(tmp_path: Path) -> None:
    manifest, blobs = fixed_contents()
    path = write_archive(tmp_path / "a.foundry", manifest, blobs)
    with Archive(path) as archive:
        stored = max((archive.locate(d) for d in archive.manifest.blobs), key=lambda s: s.offset)
        descriptor = os.dup(archive.fileno())
    with pytest.raises(ArchiveFormatError, match="cannot read the archive: Bad file descriptor"):
        native.read_blob(-1, stored)
    os.truncate(path, stored.offset + 1)
    try:
        with pytest.raises(ArchiveFormatError, match="the archive was truncated while open"):
            native.read_blob(descriptor, stored)
    finally:
        os.close(descriptor)


def test_a_blob_declared_in_another_codec_or_size_is_refused(tmp_path: Path) -> None:
    manifest, blobs = fixed_contents()
    path = write_archive(tmp_path / "a.foundry", manifest, blobs)
    with Archive(path) as archive:
        raw = next(archive.locate(d) for d in archive.manifest.blobs if archive.locate(d).codec == "raw")
        packed = next(archive.locate(d) for d in archive.manifest.blobs if archive.locate(d).codec == "zlib")
        cases = [
            (StoredBlob(raw.digest, raw.offset, raw.stored, raw.size, "zlib"), "does not decompress"),
            (StoredBlob(packed.digest, packed.offset, packed.stored, packed.size - 1, "zlib"), "does not decompress"),
            (StoredBlob(packed.digest, packed.offset, packed.stored, packed.size + 1, "zlib"), "does not decompress"),
            (StoredBlob(raw.digest, raw.offset, raw.stored - 1, raw.size - 1, "raw"), "is corrupted"),
            (StoredBlob(raw.digest, raw.offset, raw.stored, raw.size + 1, "raw"), "stored and decoded sizes differ"),
        ]
        for blob, message in cases:
            with pytest.raises(ArchiveFormatError, match=message):
                native.read_blob(archive.fileno(), blob)


def _archive_with(path: Path, contents: tuple, extra: list[tuple[bytes, bool]]) -> Path:
    """The fixed archive plus `extra` blobs, each compressed where asked (and worth it)."""
    manifest, blobs = contents
    writer = ArchiveWriter(path)
    for blob in blobs:
        writer.add_blob(blob, compress=True)
    for blob, compress in extra:
        writer.add_blob(blob, compress=compress)
    return writer.finish(manifest.model_copy(update={"blobs": writer.blobs}))

"""The archive format: round trips, deduplication, and refusal of damaged files."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from foundry_trace.archive.format import HEADER, Archive
from foundry_trace.bench.damage import compress_all, rewrite_manifest
from foundry_trace.errors import ArchiveFormatError

from .archive_samples import archive_contents, canonical, fixed_contents, graph_bodies, write_archive

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(archive_contents())
def test_round_trip_gives_identical_records(tmp_path: Path, contents) -> None:  # noqa: ANN001
    manifest, blobs, bodies = contents
    path = write_archive(tmp_path / "a.foundry", manifest, blobs)
    with Archive(path) as archive:
        archive.verify()
        assert archive.manifest.model_copy(update={"blobs": {}}) == manifest
        assert [archive.graph(entry) for entry in archive.manifest.graphs] == [canonical(b) for b in bodies]
        for blob in blobs:
            data = archive.blob(hashlib.sha256(blob).hexdigest())
            assert bytes(data) == blob
            if isinstance(data, memoryview):
                data.release()


def test_identical_blobs_are_stored_once_and_compressed_only_when_asked_and_worth_it(tmp_path: Path) -> None:
    from foundry_trace.archive.format import ArchiveWriter

    writer = ArchiveWriter(tmp_path / "a.foundry")
    first = writer.add_blob(b"x" * 10000, compress=True)
    assert writer.add_blob(b"x" * 10000, compress=True) == first
    assert len(writer.blobs) == 1 and writer.blobs[first].codec == "zlib"
    module, noise = writer.add_blob(b"y" * 10000), writer.add_blob(bytes(range(256)), compress=True)
    assert writer.blobs[module].codec == "raw"  # what LOAD hands to the driver
    assert writer.blobs[noise].codec == "raw"  # compressing saves nothing
    writer.abort()
    assert not list(tmp_path.iterdir()), "an aborted archive leaves nothing behind"


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    manifest, blobs = fixed_contents()
    return write_archive(tmp_path / "sample.foundry", manifest, blobs)


def test_a_compressed_copy_holds_the_same_blobs_and_manifest(sample: Path) -> None:
    with Archive(sample) as archive:
        manifest, blobs = archive.manifest, {d: archive.blob(d) for d in archive.manifest.blobs}
    raw_size = sample.stat().st_size
    assert compress_all(sample) < raw_size
    with Archive(sample) as archive:
        archive.verify()
        assert {d: archive.blob(d) for d in archive.manifest.blobs} == blobs
        assert archive.manifest.model_copy(update={"blobs": manifest.blobs}) == manifest


def test_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ArchiveFormatError, match="not a Foundry archive"):
        Archive(path)
    with pytest.raises(ArchiveFormatError, match="cannot open"):
        Archive(tmp_path / "absent.foundry")


def test_refuses_other_versions(sample: Path) -> None:
    data = bytearray(sample.read_bytes())
    data[8] = 99
    sample.write_bytes(bytes(data))
    with pytest.raises(ArchiveFormatError, match="format version 99"):
        Archive(sample)


def test_refuses_truncated_files(sample: Path) -> None:
    data = sample.read_bytes()
    for cut in (10, HEADER.size + 5, len(data) // 2, len(data) - 1):
        sample.write_bytes(data[:cut])
        with pytest.raises(ArchiveFormatError):
            Archive(sample)


def test_refuses_a_corrupted_blob(sample: Path) -> None:
    with Archive(sample) as archive:
        ref = max(archive.manifest.blobs.values(), key=lambda r: r.stored)
    data = bytearray(sample.read_bytes())
    data[ref.offset + ref.stored // 2] ^= 0xFF
    sample.write_bytes(bytes(data))
    with Archive(sample) as archive, pytest.raises(ArchiveFormatError, match="corrupted"):
        archive.verify()


def test_refuses_a_missing_section(sample: Path) -> None:
    """A manifest that names a blob it does not index (a section cut out of the file)."""
    def drop_a_module(manifest: dict, _: int) -> bytes:
        manifest["blobs"].pop(manifest["modules"][0]["digest"])
        return b""

    rewrite_manifest(sample, drop_a_module)
    with pytest.raises(ArchiveFormatError, match="1 referenced blob\\(s\\) are not indexed"):
        Archive(sample)  # refused at open: nothing reads a manifest that was not checked whole


def test_decompression_is_bounded(sample: Path) -> None:
    """A blob that inflates past its declared size is refused without inflating it all."""
    bomb = zlib.compress(b"\0" * (64 << 20))
    digest = ""

    def point_a_blob_at_a_bomb(manifest: dict, offset: int) -> bytes:
        nonlocal digest
        digest = manifest["graphs"][0]["payload"]
        manifest["blobs"][digest] = {"offset": offset, "stored": len(bomb), "size": 16, "codec": "zlib"}
        return bomb

    rewrite_manifest(sample, point_a_blob_at_a_bomb)
    with Archive(sample) as archive, pytest.raises(ArchiveFormatError, match="larger than declared"):
        archive.blob(digest)


@given(graph_bodies(functions=3, depth=2))
def test_node_kinds_names_every_kind_a_table_holds(body) -> None:  # noqa: ANN001
    from foundry_trace.archive._node_table import encode, node_kinds
    from fuzz.fuzz_node_table import body_kinds

    assert node_kinds(encode(body).table) == body_kinds(body)


def test_an_archive_is_read_without_the_compiled_restore_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening, the manifest, every blob, their locations and the digest: the archive package
    alone (decoding a node table is the native check's, and LOAD's)."""
    from foundry_trace import _native

    def absent() -> None:
        raise AssertionError("the compiled restore library was asked for")

    monkeypatch.setattr(_native, "library", absent)
    manifest, blobs = fixed_contents()
    path = write_archive(tmp_path / "a.foundry", manifest, blobs)
    with Archive(path) as archive:
        assert {hashlib.sha256(archive.blob(digest)).hexdigest() for digest in archive.manifest.blobs} == set(archive.manifest.blobs)
        located = archive.locate(archive.manifest.graphs[0].table)
        assert (located.digest, located.size) == (archive.manifest.graphs[0].table, archive.manifest.blobs[located.digest].size)

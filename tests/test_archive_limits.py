"""Every manifest field checked against the others, within caps that fit real archives: inputs
that crashed or escaped as foreign exceptions before are now refused at open with
ArchiveFormatError, and opening a hostile manifest stays cheap."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

import foundry_alloc as fa
from foundry_trace.archive.format import Archive
from foundry_trace.archive.manifest import MAX_MANIFEST_BYTES
from foundry_trace.bench.damage import rewrite_manifest
from foundry_trace.errors import ArchiveFormatError

from .archive_samples import fixed_contents, write_archive

BASE = 0x200000000000


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    manifest, blobs = fixed_contents()
    return write_archive(tmp_path / "sample.foundry", manifest, blobs)


def _refused(path: Path, edit, match: str) -> None:  # noqa: ANN001 - (manifest dict) -> None
    def apply(manifest: dict, _: int) -> bytes:
        edit(manifest)
        return b""

    rewrite_manifest(path, apply)
    with pytest.raises(ArchiveFormatError, match=match):
        Archive(path)


@pytest.mark.parametrize("key", ["²", "1" * 5000, "", "a b", "8\n", "ключ"])
def test_graph_keys_are_printable_ascii_of_bounded_length(sample: Path, key: str) -> None:
    _refused(sample, lambda m: m["graphs"][0].update(key=key), "graphs.0.key")


def test_segment_contents_longer_than_the_segment_are_refused(sample: Path) -> None:
    _refused(sample, lambda m: m["memory"][0].update(size=16), "its contents hold")


@pytest.mark.parametrize(
    ("address", "size"),
    [(BASE - 4096, 4096), ((1 << 64) - 4096, 4096), (BASE, (1 << 64) - 1), (BASE + (1 << 40) - 4096, 8192)],
)
def test_memory_outside_the_allocators_range_is_refused(sample: Path, address: int, size: int) -> None:
    """A size near 2**64 once overflowed the allocator's claim and crashed the next allocation;
    such a segment does not get past the manifest now."""
    _refused(sample, lambda m: m["memory"][0].update(address=address, size=size, contents=None), "outside the allocator's range")


def test_collectives_outside_the_range_are_refused(sample: Path) -> None:
    _refused(sample, lambda m: m["collectives"][0].update(address=0x1000), "collective at 0x1000")


@pytest.mark.parametrize("arena", ["Engine", "a" * 40, "../x"])
def test_arena_names_the_allocator_cannot_give_are_refused(sample: Path, arena: str) -> None:
    _refused(sample, lambda m: m["memory"][0].update(arena=arena), "arena")


def test_more_arenas_than_the_allocator_has_are_refused(sample: Path) -> None:
    def nine_arenas(manifest: dict) -> None:
        segment = manifest["memory"][0]
        manifest["memory"] = [
            {**segment, "address": segment["address"] + n * (4 << 20), "arena": f"a{n}", "contents": None} for n in range(9)
        ]

    _refused(sample, nine_arenas, "the allocator has 8 arenas")


def test_outputs_need_a_stride_per_dimension(sample: Path) -> None:
    def bad_output(manifest: dict) -> None:
        manifest["graphs"][0]["outputs"] = [{"name": "x", "address": BASE, "dtype": "float32", "shape": [2, 3], "stride": [1]}]

    _refused(sample, bad_output, "2 dimensions but 1 strides")


def test_events_and_lists_are_capped(sample: Path) -> None:
    _refused(sample, lambda m: m.update(events=1 << 20), "events")


def test_a_module_size_must_match_its_blob(sample: Path) -> None:
    _refused(sample, lambda m: m["modules"][0].update(size=m["modules"][0]["size"] + 1), "its blob holds")


def test_a_refused_claim_names_no_arena(sample: Path) -> None:
    """Each refused claim with an arena new to the process used to take one of the eight slices
    for good: a few refused loads, and no arena could be named any more."""
    allocator = fa.NativeAllocator.simulated(BASE, 8 << 30)
    try:
        before = fa.arena_names()
        first = allocator.allocate(4096)
        for n in range(20):
            with pytest.raises(fa.InvalidRequestError):
                allocator.claim(first, 4096, f"stranger{n}")  # taken: refused
        assert fa.arena_names() == before
    finally:
        allocator.close()


def test_a_manifest_of_json_bomb_size_is_not_zlib_inflated_past_the_cap() -> None:
    payload = zlib.compress(json.dumps({"created": "x" * (MAX_MANIFEST_BYTES + 10)}).encode())
    from foundry_trace.archive.format import _inflate

    with pytest.raises(ArchiveFormatError, match="larger than declared"):
        _inflate(payload, MAX_MANIFEST_BYTES, "manifest")

"""The fuzz targets of fuzz/, driven by hypothesis on the CPU: random and mutated inputs."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

import foundry_alloc as fa
from fuzz.fuzz_layout import one_input

from .sim_helpers import allocate

VALID = fa.Layout(
    device=0,
    base=0x200000000000,
    size=1 << 40,
    granularity=2 << 20,
    allocations=(fa.Allocation(address=0x200000000000, size=512, requested=100, arena="engine", sequence=0),),
).model_dump_json().encode()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_layout_parser_on_random_bytes(data: bytes) -> None:
    one_input(data)


@settings(max_examples=300)
@given(st.data())
def test_layout_parser_on_mutated_layouts(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip":
            raw[position] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
        elif action == "delete":
            del raw[position]
        elif action == "insert":
            raw.insert(position, data.draw(st.integers(min_value=0, max_value=255)))
        else:
            del raw[position:]
        if not raw:
            break
    one_input(bytes(raw))


def test_layout_parser_accepts_real_layouts(sim: fa.NativeAllocator) -> None:
    allocate(sim, 4096)
    one_input(sim.layout().model_dump_json().encode())


def overwrite_and_cut(data: st.DataObject, raw: bytearray) -> bytes:
    """`raw` with up to six bytes overwritten, then cut at a drawn length."""
    for _ in range(data.draw(st.integers(min_value=0, max_value=6))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[position] = data.draw(st.integers(min_value=0, max_value=255))
    return bytes(raw[: data.draw(st.integers(min_value=0, max_value=len(raw)))])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_archive_reader_on_damaged_archives(data: st.DataObject) -> None:
    import tempfile
    from pathlib import Path

    from fuzz.fuzz_archive import one_input

    from .archive_samples import archive_contents, write_archive

    manifest, blobs, _ = data.draw(archive_contents())
    with tempfile.TemporaryDirectory() as scratch:
        raw = bytearray(write_archive(Path(scratch) / "a.foundry", manifest, blobs).read_bytes())
    one_input(overwrite_and_cut(data, raw))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4096))
def test_archive_reader_on_random_bytes(data: bytes) -> None:
    from fuzz.fuzz_archive import one_input

    one_input(b"FNDRYARC" + data if data[:1] == b"\0" else data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_node_table_reader_on_damaged_tables(data: st.DataObject) -> None:
    import struct

    from foundry_trace.archive._node_table import encode
    from fuzz.fuzz_node_table import FUNCTIONS, one_input

    from .archive_samples import graph_bodies

    encoded = encode(data.draw(graph_bodies(FUNCTIONS)))
    raw = bytearray(struct.pack("<I", len(encoded.table)) + encoded.table + encoded.payload)
    one_input(overwrite_and_cut(data, raw))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_node_table_reader_on_random_bytes(data: bytes) -> None:
    from fuzz.fuzz_node_table import one_input

    one_input(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_cubin_trimmer_on_damaged_cubins(data: st.DataObject) -> None:
    from pathlib import Path

    from fuzz.fuzz_cubin_trim import one_input

    raw = bytearray((Path(__file__).parent / "data" / data.draw(st.sampled_from(["trim_kernels.cubin", "variables.cubin"]))).read_bytes())
    one_input(overwrite_and_cut(data, raw))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048))
def test_cubin_trimmer_on_random_bytes(data: bytes) -> None:
    from fuzz.fuzz_cubin_trim import one_input

    one_input(b"\x7fELF\x02\x01" + data if data[:1] == b"\0" else data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_node_table_reader_on_damaged_native_fuzz_inputs(data: st.DataObject) -> None:
    """The seeds and regressions of the native fuzz target (fuzz/native): deep child graphs, launch
    attributes, argument buffers of the wrong size."""
    from pathlib import Path

    from fuzz.fuzz_node_table import one_input

    native = Path(__file__).parent.parent / "fuzz" / "native"
    inputs = sorted(native.glob("corpus/*.bin")) + sorted(native.glob("regressions/*.bin"))
    path = data.draw(st.sampled_from(inputs))
    one_input(overwrite_and_cut(data, bytearray(path.read_bytes())))


def test_the_manifest_target_takes_a_real_manifest_through_every_host_step() -> None:
    """The target is not vacuous: the real manifest opens and goes through the steps of LOAD on
    the host backend without any error (which would be swallowed as a refusal)."""
    import tempfile
    from pathlib import Path

    from foundry_trace.archive.format import Archive
    from fuzz import host_load
    from fuzz.fuzz_manifest import sealed, seed_manifest

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "a.foundry"
        path.write_bytes(sealed(seed_manifest().replace(b'"version":2', b'"version":3')))
        with Archive(path) as archive:
            host_load.run(archive)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_manifest_target_on_mutated_manifests(data: st.DataObject) -> None:
    from fuzz.fuzz_manifest import one_input, seed_manifest

    one_input(overwrite_and_cut(data, bytearray(seed_manifest())))


def test_a_claimed_block_of_a_fresh_allocator_frees_cleanly() -> None:
    """Found by the manifest target: a block claimed before any allocation (no stream known yet)
    crashed the process when freed."""
    allocator = fa.NativeAllocator.simulated(0x200000000000, 8 << 30)
    try:
        allocator.reserve()
        allocator.claim(0x200000001000, 512, "engine")
        allocator.claim(0x200000001200, 512, "engine")
        allocator.free(0x200000001000)
        allocator.free(0x200000001200)
        allocator.free(allocator.allocate(4096))
    finally:
        allocator.close()


def test_the_blob_fuzz_target_bounds_compressed_blobs_as_the_manifest_check_does() -> None:
    """fuzz/native/fuzz_blob_read.cpp feeds the reader only what check_manifest accepts; its copy
    of the ratio (C++ cannot import it) must follow the manifest's, or it fuzzes the wrong inputs."""
    import re
    from pathlib import Path

    from foundry_trace.archive.manifest import MAX_ZLIB_RATIO

    source = (Path(__file__).parent.parent / "fuzz" / "native" / "fuzz_blob_read.cpp").read_text()
    [ratio] = re.findall(r"constexpr uint64_t kZlibRatio = (\d+);", source)
    assert int(ratio) == MAX_ZLIB_RATIO

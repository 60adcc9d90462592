"""The cost of reading an archive follows its size, never what it claims: each hostile archive
below is at most 1 MB, and opening, inspecting and signing it (or refusing it) takes under 2 s
of CPU and 500 MB in a fresh process (docs/security.md, "Cost bounds"). Each used to take seconds to
days, or gigabytes, while passing every check."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from foundry_trace.archive._node_table import BODY, HEADER, KINDS, MAGIC, NODE, VERSION
from foundry_trace.archive.format import Archive
from foundry_trace.archive.manifest import MAX_BLOBS, MAX_FUNCTIONS, MAX_MANIFEST_BYTES, manifest_allowance
from foundry_trace.archive.signing import generate_key
from foundry_trace.bench.damage import read_blob, read_manifest, rewrite_manifest

from .archive_samples import fixed_contents, write_archive

BASE = 0x200000000000
SECONDS, PEAK_MB, ARCHIVE_BYTES = 2.0, 500, 1 << 20
Edit = Callable[[dict, int], bytes]  # rewrite_manifest's edit: may insert blobs where the manifest was


def shared_children_table(levels: int, leaves: int) -> bytes:
    """A node table whose body i holds two child-graph nodes naming body i + 1, and whose last
    body holds `leaves` empty nodes: 2^(levels-1) * leaves nodes once expanded, a few kB stored."""
    graph, empty = KINDS.index("graph"), KINDS.index("empty")
    bodies, nodes = [], []
    for level in range(levels):
        count = leaves if level == levels - 1 else 2
        bodies.append(BODY.pack(len(nodes), count, 0, 0))
        for _ in range(count):
            kind, child = (empty, 0) if level == levels - 1 else (graph, level + 1)
            nodes.append(NODE.pack(kind, 0, 0, child, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    return HEADER.pack(MAGIC, VERSION, levels, len(nodes), 0) + b"".join(bodies) + b"".join(nodes)


def _blob(manifest: dict, offset: int, data: bytes, size: int | None = None, digest: str | None = None) -> str:
    """Registers `data`, stored at `offset`, as a blob (zlib where `size`, its inflated size, is given)."""
    digest = digest or hashlib.sha256(data).hexdigest()
    manifest["blobs"][digest] = {"offset": offset, "stored": len(data), "size": len(data) if size is None else size,
                                 "codec": "raw" if size is None else "zlib"}
    return digest


def _graphs(manifest: dict, count: int, table: str, payload: str, **fields: object) -> None:
    manifest["graphs"] = [
        {"key": str(n), "template": 0, "table": table, "payload": payload, "modules": [], "nodes": 0, "edges": 0,
         "driver_nodes": 0, "driver_edges": 0, **fields}
        for n in range(count)
    ]


def shared_child_graphs(graphs: int) -> Edit:
    """`graphs` graphs that all point at one table expanding to 3.9 M nodes."""

    def edit(manifest: dict, offset: int) -> bytes:
        table = shared_children_table(levels=19, leaves=15)
        _graphs(manifest, graphs, _blob(manifest, offset, table), _blob(manifest, offset + len(table), b""))
        return table

    return edit


def one_zlib_payload_shared(graphs: int) -> Edit:
    """The first graph's payload padded with zeros to 256 MiB (a valid payload for its table),
    261 kB compressed, named by `graphs` graphs."""

    def edit(manifest: dict, offset: int) -> bytes:
        first = manifest["graphs"][0]
        payload = next(blob for blob in fixed_contents()[1] if hashlib.sha256(blob).hexdigest() == first["payload"])
        packer, digest = zlib.compressobj(9), hashlib.sha256(payload)
        parts = [packer.compress(payload)]
        for size in [1 << 20] * 255 + [(1 << 20) - len(payload)]:
            digest.update(bytes(size))
            parts.append(packer.compress(bytes(size)))
        stored = b"".join([*parts, packer.flush()])
        _graphs(manifest, graphs, first["table"], _blob(manifest, offset, stored, size=256 << 20, digest=digest.hexdigest()),
                nodes=first["nodes"], edges=first["edges"])
        return stored

    return edit


def many_functions(manifest: dict, _: int) -> bytes:
    manifest["functions"] = [{"module": 0, "name": "k"}] * (1 << 20)
    return b""


def many_module_indices(manifest: dict, _: int) -> bytes:
    graph = manifest["graphs"][0]
    _graphs(manifest, 480, graph["table"], graph["payload"], modules=[0] * 65536)
    return b""


def many_segments(manifest: dict, _: int) -> bytes:
    manifest["memory"] = [{"address": BASE, "size": 512, "arena": "graph"}] * (1 << 20)
    return b""


def many_layout_allocations(manifest: dict, _: int) -> bytes:
    manifest["restore_layout"]["allocations"] = [{"address": BASE, "size": 512, "requested": 512, "arena": "engine", "sequence": 0}] * 500_000
    return b""


def largest_manifest_1_mb_allows(manifest: dict, offset: int) -> bytes:
    """900 kB of incompressible blob, then a manifest of the most functions allowed and of
    memory segments up to what a file of that size may inflate: the costliest archive of its size
    that reaches the parser."""
    padding = hashlib.shake_256(b"incompressible").digest(900_000)
    _blob(manifest, offset, padding)
    manifest["functions"] = [{"module": 0, "name": "k"}] * MAX_FUNCTIONS
    segment = {"address": BASE, "size": 512, "arena": "graph"}
    room = manifest_allowance(offset + len(padding)) - len(json.dumps(manifest, separators=(",", ":"))) - 64
    manifest["memory"] = [segment] * (room // (len(json.dumps(segment, separators=(",", ":"))) + 1))
    return padding


def most_blobs(manifest: dict, _: int) -> bytes:
    manifest["blobs"].update({f"{n:064x}": {"offset": 64, "stored": 0, "size": 0, "codec": "raw"} for n in range(MAX_BLOBS - len(manifest["blobs"]))})
    return b""


def manifest_past_64_mib(manifest: dict, _: int) -> bytes:
    manifest["created"] = "x" * (MAX_MANIFEST_BYTES + 1)
    return b""


HOSTILE: dict[str, Edit] = {
    "131,072 blobs": most_blobs,
    "a manifest inflating past 64 MiB": manifest_past_64_mib,
    "the largest manifest a 1 MB archive may hold": largest_manifest_1_mb_allows,
    "2 graphs sharing child graphs": shared_child_graphs(2),
    "64 graphs sharing child graphs": shared_child_graphs(64),
    "one 256 MiB zlib payload shared by 64 graphs": one_zlib_payload_shared(64),
    "2^20 functions": many_functions,
    "480 graphs x 65,536 module indices": many_module_indices,
    "2^20 memory segments": many_segments,
    "500 k layout allocations": many_layout_allocations,
}

MEASURE = """
import json, sys, time
from foundry_trace.archive.signing import sign_archive
from foundry_trace.archive.summary import summarize
from foundry_trace.errors import FoundryTraceError
results = {}
for step, run in (("inspect", lambda: summarize(sys.argv[1])), ("sign", lambda: sign_archive(sys.argv[1], sys.argv[2]))):
    start = time.process_time()  # CPU time: the test shares its cores, and waiting for one is not the archive's cost
    try:
        run()
        results[step] = "done"
    except FoundryTraceError as error:
        results[step] = "refused: " + str(error)[:300]
    results[step + "_s"] = time.process_time() - start
with open("/proc/self/status") as status:  # this process's own peak: ru_maxrss counts the parent's before exec
    results["peak_mb"] = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
print(json.dumps(results))
"""


def _sample(tmp_path: Path, name: str) -> Path:
    manifest, blobs = fixed_contents()
    return write_archive(tmp_path / f"{name}.foundry", manifest, blobs)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_archive_of_1_mb_opens_inspects_and_signs_in_2_s_and_500_mb(tmp_path: Path, case: str) -> None:
    path = _sample(tmp_path, "hostile")
    rewrite_manifest(path, HOSTILE[case])
    assert path.stat().st_size <= ARCHIVE_BYTES, "the archive is small"
    key, _ = generate_key(tmp_path / "release.key")
    try:
        done = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(key)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: inspecting and signing a {path.stat().st_size} byte archive took more than 60 s")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["inspect_s"] < SECONDS and results["sign_s"] < SECONDS, results
    assert results["peak_mb"] < PEAK_MB, results


def test_child_graphs_are_counted_once_per_use_over_the_whole_archive(tmp_path: Path) -> None:
    """Two graphs sharing the table expand to 7.9 M nodes, which inspect counts without walking
    them; 64 expand past MAX_ARCHIVE_NODES, which is refused by name."""
    from foundry_trace._native import check_table
    from foundry_trace.archive._node_table import census
    from foundry_trace.archive.summary import summarize
    from foundry_trace.errors import ArchiveFormatError

    table = shared_children_table(levels=19, leaves=15)
    check_table(table, b"", 1, 0, 0)
    assert census(table).nodes == 15 << 18 and census(table).kinds["graph"] == 2 * ((1 << 18) - 1)
    two, many = _sample(tmp_path, "two"), _sample(tmp_path, "many")
    rewrite_manifest(two, shared_child_graphs(2))
    rewrite_manifest(many, shared_child_graphs(64))
    summary = summarize(two)
    assert [g["nodes"] for g in summary["graphs"]] == [15 << 18] * 2
    assert summary["nodes_by_kind"] == {"empty": 2 * (15 << 18), "graph": 4 * ((1 << 18) - 1)}
    with pytest.raises(ArchiveFormatError, match="expand to more than 16777216 nodes"):
        summarize(many)


def test_each_blob_is_inflated_once_per_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compressed payload shared by 64 graphs (within the ratio a node table may have) is
    inflated once by inspect and once by verify (sign), not once per graph."""
    from foundry_trace.archive import format as archive_format
    from foundry_trace.archive.summary import summarize

    path = _sample(tmp_path, "shared")
    payload = read_blob(path, read_manifest(path)["graphs"][0]["payload"])

    def share(manifest: dict, offset: int) -> bytes:
        graph = manifest["graphs"][0]
        stored = zlib.compress(payload)
        _graphs(manifest, 64, graph["table"], _blob(manifest, offset, stored, size=len(payload), digest=hashlib.sha256(payload).hexdigest()),
                nodes=graph["nodes"], edges=graph["edges"])
        return stored

    rewrite_manifest(path, share)
    inflated: list[str] = []
    real = archive_format._inflate
    monkeypatch.setattr(archive_format, "_inflate", lambda data, limit, what: (inflated.append(what), real(data, limit, what))[1])
    shared = hashlib.sha256(payload).hexdigest()[:12]
    summarize(path)
    assert sum(shared in what for what in inflated) == 1, inflated
    with Archive(path) as archive:
        archive.verify()
    assert sum(shared in what for what in inflated) == 2, inflated


def test_a_manifest_inflating_past_its_allowance_is_refused_by_name(tmp_path: Path) -> None:
    from foundry_trace.errors import ArchiveFormatError

    path = _sample(tmp_path, "big")
    rewrite_manifest(path, many_functions)
    with pytest.raises(ArchiveFormatError, match=r"the manifest \(which may inflate to \d+ bytes in a file of \d+\)"):
        Archive(path)

"""Archives of a subset of another's graphs (bench/archive_subset.py), what the cost fit restores
for its every-4th-batch points: each kept graph byte for byte, the manifest naming only them, and
a valid archive (every check of a reader passes, every blob verified)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundry_trace.archive.format import Archive
from foundry_trace.archive.manifest import referenced_blobs
from foundry_trace.bench.archive_subset import SUBSET_OF, keys_of_batches, write_subset
from foundry_trace.errors import WorkloadError

from .archive_samples import archive_contents, write_archive


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(contents=archive_contents(), chosen=st.sets(st.integers(min_value=0, max_value=3), min_size=1))
def test_a_subset_holds_exactly_the_kept_graphs_byte_for_byte_in_a_valid_archive(tmp_path: Path, contents, chosen: set[int]) -> None:  # noqa: ANN001
    manifest, blobs, _ = contents
    source = write_archive(tmp_path / "all.foundry", manifest, blobs)
    keys = {str(i) for i in chosen} & {g.key for g in manifest.graphs}
    if not keys:
        return
    counts = write_subset(source, tmp_path / "some.foundry", lambda key: key in keys, "test")
    with Archive(source) as whole, Archive(tmp_path / "some.foundry") as part:
        part.verify()  # every blob's checksum, every node table
        kept = [g for g in whole.manifest.graphs if g.key in keys]
        assert part.manifest.graphs == tuple(kept)
        assert counts == {"graphs": len(kept), "nodes": sum(g.nodes for g in kept)}
        for entry in kept:
            assert part.graph_blobs(entry) == whole.graph_blobs(entry) and part.graph(entry) == whole.graph(entry)
        assert set(part.manifest.blobs) == referenced_blobs(part.manifest)  # nothing more than it names
        for name in ("modules", "functions", "templates", "memory", "events", "fingerprint", "restore_layout"):
            assert getattr(part.manifest, name) == getattr(whole.manifest, name)
        assert part.manifest.metadata[SUBSET_OF].startswith(f"sha256:{whole.digest}: {len(kept)} of its {len(whole.manifest.graphs)} graphs")
        for digest in part.manifest.blobs:
            assert part.manifest.blobs[digest].codec == whole.manifest.blobs[digest].codec


def test_a_subset_of_no_graph_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    from .archive_samples import fixed_contents

    source = write_archive(tmp_path / "all.foundry", *fixed_contents())
    with pytest.raises(WorkloadError, match="keeping no graph"):
        write_subset(source, tmp_path / "none.foundry", lambda key: False, "none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.foundry"]


def test_batch_subsets_keep_every_piece_of_their_steps() -> None:
    keep = keys_of_batches({8, 64})
    assert [key for key in ("8", "8/00", "8/32", "16/00", "64/07", "prefill", "640/01") if keep(key)] == ["8", "8/00", "8/32", "64/07"]

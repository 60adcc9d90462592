"""An archive holding some of another archive's graphs, their entries and blobs copied: what the
cost fit restores where its design asks for fewer batch sizes of graphs already SAVEd.

Why copying is honest for a fit of restore time against graph and node counts: every graph kept
is the very graph SAVE captured (its node table, payload, template, modules and outputs byte for
byte), so building and instantiating it costs what it cost in the whole archive, and the manifest
names only the kept graphs, so opening and checking the archive scale with them as in a SAVE of
those batch sizes. What stays whole is what does not scale with graphs: the modules (LOAD loads
only those the kept graphs name), the recorded memory (the graph pool, claimed whole: the same
in every subset of one archive, so the fit's fixed term takes it) and the engine's layout (the
subset restores into the engine of the source's options, all batch sizes). A SAVE of fewer batch
sizes would also capture them again, which takes longer than everything else in a fit point.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from foundry_trace.archive.format import Archive, ArchiveWriter
from foundry_trace.archive.keys import batch_of
from foundry_trace.archive.manifest import referenced_blobs
from foundry_trace.errors import WorkloadError

SUBSET_OF = "foundry.bench.subset_of"  # metadata: the source archive's digest and what was kept


def write_subset(source: Path, destination: Path, keep: Callable[[str], bool], what: str) -> dict[str, int]:
    """Writes into `destination` an archive of the graphs of `source` whose key `keep` accepts,
    in their order, with the blobs they and the rest of the manifest need (stored as SAVE stored
    them: compressed where the source's were), `what` said in its metadata. Returns the counts
    of graphs and nodes it holds. Raises WorkloadError where no graph is kept."""
    with Archive(source) as archive:
        manifest = archive.manifest
        graphs = tuple(entry for entry in manifest.graphs if keep(entry.key))
        if not graphs:
            raise WorkloadError(f"a subset of {source} keeping no graph ({what}): the fit needs at least one")
        kept = manifest.model_copy(update={"graphs": graphs})
        writer = ArchiveWriter(destination)
        try:
            for digest in sorted(referenced_blobs(kept)):
                writer.add_blob(archive.blob(digest), digest, compress=manifest.blobs[digest].codec == "zlib")
            note = f"sha256:{archive.digest}: {len(graphs)} of its {len(manifest.graphs)} graphs ({what})"
            writer.finish(kept.model_copy(update={"blobs": writer.blobs, "metadata": {**manifest.metadata, SUBSET_OF: note[:4096]}}))
        except BaseException:
            writer.abort()
            raise
    return {"graphs": len(graphs), "nodes": sum(entry.nodes for entry in graphs)}


def keys_of_batches(batches: set[int]) -> Callable[[str], bool]:
    """A `keep` for write_subset: the graphs of these batch sizes (every piece of each step)."""
    return lambda key: batch_of(key) in batches

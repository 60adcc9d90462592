"""The steps of LOAD that need no GPU, run on an opened archive against the allocator's host
backend (the same placement code the GPU runs, with a simulated driver): the trust policy, the
fingerprint comparison, the layout diff, the claim of every recorded memory segment (and its
contents read and checked), the kinds of every node table and the early-build choice, the native
table check, `foundry inspect`'s summary; then the allocator must still work.

Any archive that opened must go through this raising only the project's own errors
(FoundryTraceError, FoundryAllocError), and leave the allocator usable."""

from __future__ import annotations

import foundry_alloc as fa
from foundry_trace import _native as native
from foundry_trace.archive.format import Archive
from foundry_trace.archive.keys import serving_order
from foundry_trace.archive.signing import TrustPolicy
from foundry_trace.archive.summary import summarize
from foundry_trace.errors import FoundryTraceError
from foundry_trace.fingerprint import check_fingerprint
from foundry_trace.restore._pipeline import builds_early

PHYSICAL_LIMIT = 256 << 20  # the simulated device: large claims fail fast as out of memory


def run(archive: Archive) -> None:
    manifest = archive.manifest
    TrustPolicy().check(archive)
    try:
        check_fingerprint(manifest.fingerprint, manifest.fingerprint.model_copy(update={"torch": "other"}))
    except FoundryTraceError:
        pass
    try:
        config = fa.AllocatorConfig.create(base=manifest.fingerprint.allocator_base, size=manifest.fingerprint.allocator_size)
    except fa.ConfigError:
        config = fa.AllocatorConfig()
    allocator = fa.NativeAllocator.simulated(config.base, config.size, physical_limit=PHYSICAL_LIMIT)
    try:
        allocator.reserve()
        fa.diff_layouts(manifest.restore_layout, allocator.layout()).render("SAVE", "here")
        claimed = []
        for segment in manifest.memory:
            try:
                allocator.claim(segment.address, segment.size, segment.arena)
                claimed.append(segment.address)
            except fa.FoundryAllocError:
                continue
            if segment.contents:
                archive.blob(segment.contents)
        read: dict[str, bytes] = {}  # as LOAD: graphs that share a blob share its read
        for entry in serving_order(manifest.graphs):
            for digest in (entry.table, entry.payload):
                if digest not in read:
                    read[digest] = archive.blob(digest)
            builds_early(entry, graph_memory_mapped=True)
            native.check_table(read[entry.table], read[entry.payload], len(manifest.functions), manifest.events, len(manifest.collectives))
        for address in claimed:
            allocator.free(address)
        allocator.free(allocator.allocate(1 << 20))  # the allocator is whole: a claim that wrapped once broke this
    finally:
        allocator.close()
    summarize(archive.path)

"""The LOAD children of `foundry bench load`, each a fresh process after the engine is built:

    load      the cold restore (timed, first of the process), then a restore on one thread,
              a lazy restore (time to the first launch), instantiation of prebuilt graphs on
              several threads, restores with prefetch() and on several thread counts, a native
              capture in the same process, and the comparison bit for bit (against SAVE's
              references in the archive and that capture) and of replay latency
    prefetch  prefetch() first thing, the engine built meanwhile (its weights loaded from disk,
              for a checkpoint workload), load at the restore point: until every graph is ready;
              the graphs prefetch built checked against SAVE's outputs
    background  load(mode="background") at the restore point, cold: the time until it returns,
              until every batch size up to SMALL_BATCHES can be replayed, and until all can;
              those small batches' outputs checked against SAVE's

    python -P -m foundry_trace.bench.load_roles ROLE WORKLOAD ARCHIVE [THREADS] [--attention ...]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from foundry_trace.archive.keys import batch_of, first_step, key_order
from foundry_trace.bench.children import child_main, child_parser, note, parsed_options, phase
from foundry_trace.bench.driver_alone import instantiate_scaling
from foundry_trace.bench.results import device_fields
from foundry_trace.bench.roles import cold_load, engine_at_restore_point
from foundry_trace.errors import WorkloadError

if TYPE_CHECKING:
    from foundry_trace.archive.manifest import Manifest
    from foundry_trace.restore import Restored

MODULE = "foundry_trace.bench.load_roles"
SMALL_BATCHES = 8  # a server that starts before every graph is ready serves batches up to this size first
SWEPT_THREADS = (2, 4, 16)  # restores timed on these thread counts too (and on the bench's own)
INSTANTIATE_THREADS = (1, 2, 4, 8, 16)  # instantiation alone timed on these


def _references(archive: str) -> dict[str, dict[str, object]]:
    """SAVE's references in the archive (the bench's own SAVE always stores them)."""
    from foundry_trace.archive.format import Archive
    from foundry_trace.bench.verify import saved_references

    with Archive(archive) as opened:
        references = saved_references(opened.manifest)
    if references is None:
        raise WorkloadError(f"{archive} holds no reference outputs: SAVE it with `foundry bench save --archive` to compare")
    return references


def child_prefetch(workload: str, archive: str, threads: int, options: dict[str, object]) -> dict[str, object]:
    """A server that calls prefetch() first thing (no CUDA context yet), builds its engine
    meanwhile, and loads at the restore point with mode="background" (timed; cold): the time
    until the small batches' steps can be replayed, and until every step can (what an eager
    load() would have waited for). The graphs prefetch built before any engine memory existed
    are then checked against SAVE's outputs."""
    import foundry_alloc

    foundry_alloc.install()
    import torch

    import foundry_trace
    from foundry_trace.bench.verify import differing_from_saved, restored_batches, restored_digests, varying_on_replay
    from foundry_trace.bench.workloads.registry import build_engine, weights_load_s

    began = time.perf_counter()
    phase("prefetch")
    early = foundry_trace.prefetch(archive, threads=threads)
    model = build_engine(workload, **options)  # its weights from disk, for a checkpoint workload: prefetch overlaps the reading
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine_s = start - began
    note(f"built {workload} while prefetching")
    restored = foundry_trace.load(early, mode="background")
    batches = restored_batches(restored)
    ready_small_s = ready_after(restored, small_batches(batches), start)
    at_restore_point_s = ready_after(restored, batches, start)
    note(f"at the restore point: batches up to {SMALL_BATCHES} ready in {ready_small_s:.3f} s, every graph in {at_restore_point_s:.3f} s")
    instantiated = [s for s in restored.spans if s.phase == "instantiate"]
    saved = _references(archive)
    mismatched = differing_from_saved(restored_digests(model, restored), saved)
    varying = varying_on_replay(model, restored, mismatched)
    restored.release()
    return {
        "engine_s": engine_s,
        "weights_load_s": weights_load_s(model),
        "at_restore_point_s": at_restore_point_s,
        "ready_small_batches_s": ready_small_s,
        "ready_before_restore_point": sum(s.end <= engine_s for s in instantiated),
        "prefetch_work_s": max(s.end for s in restored.spans),
        "compared": sum(r["deterministic"] for r in saved.values()),
        "mismatched": mismatched,
        "mismatched_varying": varying,
    }


def small_batches(batches: list[int], limit: int = SMALL_BATCHES) -> list[int]:
    """The batch sizes a server starting before every graph is ready serves first: up to `limit`."""
    return [batch for batch in batches if batch <= limit]


def ready_after(restored: Restored, batches: list[int], start: float, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds from `start` (the restore point) until every graph of `batches`' steps is ready
    to replay: each graph waited for in turn (a background load restores them meanwhile)."""
    for batch in batches:
        for graph in restored.group(batch):
            graph.wait()
    return clock() - start


def child_background(workload: str, archive: str, threads: int, options: dict[str, object]) -> dict[str, object]:
    """A server that starts serving before every graph is ready: load(mode="background") at the
    restore point (cold, the first LOAD of the process), then the time until the small batches'
    steps can be replayed and until every step can. "Ready" is wait() returned: the executable
    exists (its first replay uploads it). The small batches' outputs are then checked against
    SAVE's (after the timing)."""
    import foundry_trace
    from foundry_trace.bench.verify import differing_from_saved, restored_batches, restored_digests, varying_on_replay
    from foundry_trace.bench.workloads.registry import weights_load_s

    model = engine_at_restore_point(workload, options)
    phase("load")
    start = time.perf_counter()
    restored = foundry_trace.load(archive, threads=threads, mode="background")
    returned_s = time.perf_counter() - start
    batches = restored_batches(restored)
    small = small_batches(batches)
    ready_small_s = ready_after(restored, small, start)
    ready_all_s = ready_after(restored, batches, start)
    note(f"background LOAD: returned in {returned_s:.3f} s, batches up to {SMALL_BATCHES} ready at {ready_small_s:.3f} s, all at {ready_all_s:.3f} s")
    saved = _references(archive)
    mismatched = differing_from_saved(restored_digests(model, restored, small), saved)
    varying = varying_on_replay(model, restored, mismatched)
    restored.release()
    return {
        "returned_s": returned_s, "small_batches": small, "ready_small_batches_s": ready_small_s, "ready_all_s": ready_all_s,
        "weights_load_s": weights_load_s(model), "compared": sum(saved[str(b)]["deterministic"] for b in small), "mismatched": mismatched,
        "mismatched_varying": varying,
    }


def child_load(workload: str, archive: str, threads: int, options: dict[str, object]) -> dict[str, object]:
    import torch

    import foundry_trace
    from foundry_trace.bench.verify import compare, effort_of, restored_batches
    from foundry_trace.bench.workloads.registry import weights_load_s
    from foundry_trace.bench.workloads.registry import workload as chosen

    large = chosen(workload).large  # no thread sweeps: the whole bench must fit one 10-minute device call
    model, cold, restore_s = cold_load(workload, archive, threads, options)  # the first LOAD of this process: timed
    cold_report = {"phases": cold.phases, "busy": cold.busy_seconds(), "builders": cold.builders, "chunk_nodes": cold.chunk_nodes,
                   "spans": [span.__dict__ for span in cold.spans]}
    cold.release()

    serial = foundry_trace.load(archive, threads=1)
    batch_sizes = restored_batches(serial)
    first_batch = batch_of(min(serial.graphs, key=key_order))  # the smallest batch: its step, one graph or its pieces
    first_step_graphs = len(serial.group(first_batch))
    serial_busy = serial.busy_seconds()
    floor_s = serial_busy["instantiate"]
    serial_s = sum(serial.phases.values())
    serial.release()

    # "Replayable": replay() has launched the step's graphs (the first launch uploads each); then its run ends.
    start = time.perf_counter()
    lazy = foundry_trace.load(archive, mode="lazy", threads=threads)
    model.restored_step(lazy, first_batch)[0]()
    first_graph_s = time.perf_counter() - start
    torch.cuda.synchronize()
    first_graph_run_s = time.perf_counter() - start
    first_graph_phases, first_graph_spans = lazy.phases, [span.__dict__ for span in lazy.spans]
    first_graph_modules = first_step_modules(lazy.archive.manifest)
    lazy.release()

    sweep = None if large else {}
    for count in () if large else sorted({*SWEPT_THREADS, threads}):
        start = time.perf_counter()
        foundry_trace.load(archive, threads=count).release()
        sweep[str(count)] = time.perf_counter() - start

    note("timed serial, lazy and thread-count restores")
    instantiate_only = None if large else instantiate_scaling(archive, INSTANTIATE_THREADS)

    # With prefetch(): modules load before the restore point (in a server, while weights load).
    early = foundry_trace.prefetch(archive, threads=threads)
    early.wait_for_modules()
    start = time.perf_counter()
    foundry_trace.load(early)
    torch.cuda.synchronize()
    at_restore_point_s = time.perf_counter() - start
    early.release()
    early = foundry_trace.prefetch(archive, threads=threads)
    early.wait_for_modules()
    start = time.perf_counter()
    model.restored_step(foundry_trace.load(early, mode="lazy"), first_batch)[0]()
    first_graph_prefetched_s = time.perf_counter() - start
    torch.cuda.synchronize()
    early.release()

    start = time.perf_counter()
    restored = foundry_trace.load(archive, threads=threads)
    torch.cuda.synchronize()
    warm_restore_s = time.perf_counter() - start
    note("timed instantiation scaling and prefetched restores")
    phase("compare")
    saved = _references(archive)
    result = compare(model, restored, saved, effort=effort_of(workload), batch_by_batch=large)  # large: one native pool less
    note("captured natively and compared")
    result["native_warm_s"] = result.pop("native_s")  # this process's own native capture, after restores
    restored.release()
    description, loaded_in = model.describe(), weights_load_s(model)
    del model
    from foundry_trace.bench.determinism import explain

    suspects = sorted(set(result["nondeterministic_native"]) | set(result["nondeterministic_saved"]))
    result["nondeterminism"] = explain(workload, suspects[:3], **{k: v for k, v in options.items() if k == "attention"}) if suspects else {}
    result.update(
        restore_s=restore_s,
        warm_restore_s=warm_restore_s,
        weights_load_s=loaded_in,
        **archive_counts(archive),
        serial_restore_s=serial_s,
        serial_busy=serial_busy,
        at_restore_point_s=at_restore_point_s,
        first_graph_prefetched_s=first_graph_prefetched_s,
        **cold_report,
        instantiate_floor_s=floor_s,
        threads_sweep_s=sweep,
        instantiate_only_s_by_threads=instantiate_only,
        first_graph_s=first_graph_s,
        first_graph_run_s=first_graph_run_s,
        first_graph_key=str(first_batch),
        first_step_graphs=first_step_graphs,
        batch_sizes=batch_sizes,
        first_graph_phases=first_graph_phases,
        first_graph_spans=first_graph_spans,
        first_graph_modules=first_graph_modules,
        description=description,
        **device_fields(),
    )
    return result


def first_step_modules(manifest: Manifest) -> list[dict[str, object]]:
    """The modules the first step's graphs load before they build, as stored (what each costs
    the first lazy graph: its spans name them `module N`), largest first as LOAD loads them."""
    used = {m for entry in first_step(manifest.graphs) for m in entry.modules}
    functions = Counter(function.module for function in manifest.functions)
    return [
        {"module": m, "stored_bytes": manifest.modules[m].size, "loaded_bytes": manifest.modules[m].loaded_size,
         "entries": manifest.modules[m].entries, "trimmed": manifest.modules[m].trimmed, "functions": functions[m],
         "variables": len(manifest.modules[m].variables)}
        for m in sorted(used, key=lambda m: -manifest.modules[m].size)
    ]


def archive_counts(archive: str | Path) -> dict[str, object]:
    """What the archive's graphs hold, as `foundry inspect` counts it (node tables read, child
    graphs counted per use): the nodes that do work (the driver builds and instantiates each,
    what the cost fit counts), every kind's count (kernels among them), the distinct kernel
    functions and the modules they come from, and the graph topologies (templates)."""
    from foundry_trace.archive import summary

    counted = summary.summarize(archive)
    return {
        "nodes": sum(graph["nodes"] for graph in counted["graphs"]),
        "kernel_nodes": counted["nodes_by_kind"].get("kernel", 0),
        "nodes_by_kind": counted["nodes_by_kind"],
        "kernel_functions": len(counted["kernels"]),
        "modules": len(counted["modules"]),
        "templates": counted["templates"],
    }


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    child = {"load": child_load, "prefetch": child_prefetch, "background": child_background}[arguments.role]
    return child(arguments.workload, arguments.archive, arguments.threads, parsed_options(arguments))


if __name__ == "__main__":
    child_main(_run, child_parser("a LOAD child of `foundry bench load`", ("load", "prefetch", "background")))

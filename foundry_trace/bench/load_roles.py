"""The LOAD children of `foundry bench load`, each a fresh process after the engine is built:

    load      the cold restore (timed, first of the process), then a restore on one thread,
              a lazy restore (time to the first launch), instantiation of prebuilt graphs on
              several threads, restores with prefetch() and on several thread counts, a native
              capture in the same process, and the comparison bit for bit (against SAVE's
              references in the archive and that capture) and of replay latency
    prefetch  prefetch() first thing, the engine built meanwhile, load at the restore point;
              the graphs prefetch built checked against SAVE's outputs

    python -P -m foundry_trace.bench.load_roles ROLE WORKLOAD ARCHIVE [THREADS] [--attention ...]
"""

from __future__ import annotations

import argparse
import time

from foundry_trace.archive.keys import batch_of, key_order
from foundry_trace.bench.children import child_main, child_parser, note, parsed_options, phase
from foundry_trace.bench.driver_alone import instantiate_scaling
from foundry_trace.bench.results import device_fields
from foundry_trace.bench.roles import cold_load
from foundry_trace.errors import WorkloadError

MODULE = "foundry_trace.bench.load_roles"


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
    meanwhile, and loads at the restore point (timed); cold. The graphs prefetch built before
    any engine memory existed are then checked against SAVE's outputs."""
    import foundry_alloc

    foundry_alloc.install()
    import torch

    import foundry_trace
    from foundry_trace.bench.verify import differing_from_saved, restored_digests
    from foundry_trace.bench.workloads.registry import build_engine

    began = time.perf_counter()
    phase("prefetch")
    early = foundry_trace.prefetch(archive, threads=threads)
    model = build_engine(workload, **options)
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine_s = start - began
    note(f"built {workload} while prefetching")
    restored = foundry_trace.load(early)
    torch.cuda.synchronize()
    at_restore_point_s = time.perf_counter() - start
    note(f"restored at the restore point in {at_restore_point_s:.3f} s")
    instantiated = [s for s in restored.spans if s.phase == "instantiate"]
    saved = _references(archive)
    mismatched = differing_from_saved(restored_digests(model, restored), saved)
    restored.release()
    return {
        "engine_s": engine_s,
        "at_restore_point_s": at_restore_point_s,
        "ready_before_restore_point": sum(s.end <= engine_s for s in instantiated),
        "prefetch_work_s": max(s.end for s in restored.spans),
        "compared": sum(r["deterministic"] for r in saved.values()),
        "mismatched": mismatched,
    }


def child_load(workload: str, archive: str, threads: int, options: dict[str, object]) -> dict[str, object]:
    import torch

    import foundry_trace
    from foundry_trace.bench.verify import compare, restored_batches

    model, cold, restore_s = cold_load(workload, archive, threads, options)  # the first LOAD of this process: timed
    cold_report = {"phases": cold.phases, "busy": cold.busy_seconds(), "spans": [span.__dict__ for span in cold.spans]}
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
    lazy.release()

    sweep = {}
    for count in sorted({2, 4, 16, threads}):
        start = time.perf_counter()
        foundry_trace.load(archive, threads=count).release()
        sweep[str(count)] = time.perf_counter() - start

    note("timed serial, lazy and thread-count restores")
    instantiate_only = instantiate_scaling(archive, (1, 2, 4, 8, 16))

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
    result = compare(model, restored, saved)
    note("captured natively and compared")
    result["native_warm_s"] = result.pop("native_s")  # this process's own native capture, after restores
    restored.release()
    description = model.describe()
    del model
    from foundry_trace.bench.determinism import explain

    suspects = sorted(set(result["nondeterministic_native"]) | set(result["nondeterministic_saved"]))
    result["nondeterminism"] = explain(workload, suspects[:3], **{k: v for k, v in options.items() if k == "attention"}) if suspects else {}
    result.update(
        restore_s=restore_s,
        warm_restore_s=warm_restore_s,
        nodes=_node_count(archive),
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
        description=description,
        **device_fields(),
    )
    return result


def _node_count(archive: str) -> int:
    from foundry_trace.archive.format import Archive

    with Archive(archive) as opened:
        return sum(entry.nodes for entry in opened.manifest.graphs)


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    child = {"load": child_load, "prefetch": child_prefetch}[arguments.role]
    return child(arguments.workload, arguments.archive, arguments.threads, parsed_options(arguments))


if __name__ == "__main__":
    child_main(_run, child_parser("a LOAD child of `foundry bench load`", ("load", "prefetch")))

"""`foundry bench` (load): native warm-up + capture vs Foundry restore, side by side on one GPU.

A child process SAVEs the workload and records its graphs' outputs on fixed inputs. Both sides
are then timed cold, each as the first thing a fresh process does after building the engine
state (the driver's first executables and modules cost more than later ones, and a server starts
cold): a `native` child captures every graph with plain PyTorch (no Foundry in the process), a
`driver` child builds and instantiates the same graphs straight from the node tables with
nothing else running (what the driver alone costs cold), and a `load` child restores every
graph. The load child goes on with: a restore on one thread (its summed instantiation time is
the driver's own floor), a lazy restore (time to the first launch),
instantiation of prebuilt graphs on several threads (the least time any restore can take), a
restore with prefetch() (modules loaded before the restore point), restores on several thread
counts, a native capture in the same process, and the comparison bit for bit (against SAVE's
references in the archive and against that capture) and of replay latency. `foundry verify` and
the coverage bench run a shorter LOAD child (roles.py): one timed restore, then the native
capture and the comparison. For a workload that cuts its steps into pieces, the bench ends with
the cost fit of fit_bench.py (per graph and per node, Foundry against the driver alone).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from foundry_trace.archive.keys import batch_of, key_order
from foundry_trace.bench.children import (
    child_main,
    child_parser,
    note,
    option_arguments,
    parsed_options,
    phase,
    run_child,
)
from foundry_trace.bench.fit_bench import fit_costs
from foundry_trace.bench.roles import cold_load, run_role
from foundry_trace.bench.workloads.registry import splits_steps
from foundry_trace.errors import WorkloadError
from foundry_trace.restore import DEFAULT_THREADS

if TYPE_CHECKING:
    from foundry_trace.parallel.collectives import Communicator
    from foundry_trace.restore import Restored

MODULE = "foundry_trace.bench.load_bench"


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
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
    )
    return result


def _node_count(archive: str) -> int:
    from foundry_trace.archive.format import Archive

    with Archive(archive) as opened:
        return sum(entry.nodes for entry in opened.manifest.graphs)


@contextmanager
def modules_loaded(archive: str, communicator: Communicator | None = None) -> Iterator[Restored]:
    """A lazy LOAD of `archive` with every module loaded and no graph building: it claims the
    memory that the driver checks memset and memcpy nodes against when they are added, and the
    graphs a lazy LOAD starts at open have finished (they would contend with what is timed).
    `communicator`: a tensor-parallel rank's, for an archive of a degree above 1."""
    import foundry_trace

    early = foundry_trace.load(archive, mode="lazy", communicator=communicator)
    try:
        early.pipeline.load_all_modules()
        early.pipeline.wait_for_modules()
        for key in early.pipeline.queued_graphs():
            early.graphs[key].wait()
        yield early
    finally:
        early.release()


def instantiate_scaling(archive: str, counts: tuple[int, ...]) -> dict[str, float]:
    """Wall seconds to instantiate every graph of the archive on each number of threads, the
    graphs built beforehand and nothing else running: the least time in which any restore of
    these graphs can make them all executable on this driver, however it arranges its other work."""
    from foundry_trace import native

    with modules_loaded(archive) as early:
        pipeline = early.pipeline
        built = [pipeline.build(entry) for entry in early.archive.manifest.graphs]
        try:
            scaling = {}
            for count in counts:
                with ThreadPoolExecutor(count) as pool:
                    start = time.perf_counter()
                    executables = list(pool.map(lambda graph: pipeline.instantiate(graph, "probe"), built))
                    scaling[str(count)] = time.perf_counter() - start
                for executable in executables:
                    native.destroy_executable(executable)
            return scaling
        finally:
            for graph in built:
                native.destroy_graph(graph)


def driver_alone(archive: str, threads: int, communicator: Communicator | None = None) -> dict[str, object]:
    """The driver alone, cold, in this process (the engine built, nothing of the archive restored
    yet): with the modules loaded (untimed), every graph built and then instantiated on
    `threads` threads with nothing else running, straight from the node tables. What any restore
    of these graphs pays the driver, before opening an archive, loading modules or claiming memory."""
    from foundry_trace import native

    with modules_loaded(archive, communicator) as early:
        pipeline = early.pipeline
        with ThreadPoolExecutor(threads) as pool:
            begin = time.perf_counter()
            built = list(pool.map(pipeline.build, early.archive.manifest.graphs))
            built_at = time.perf_counter()
            executables = list(pool.map(lambda graph: pipeline.instantiate(graph, "floor"), built))
            done = time.perf_counter()
        for executable in executables:
            native.destroy_executable(executable)
        for graph in built:
            native.destroy_graph(graph)
    note(f"driver alone: built in {built_at - begin:.3f} s, instantiated in {done - built_at:.3f} s")
    return {"driver_build_s": built_at - begin, "driver_instantiate_s": done - built_at, "driver_cold_s": done - begin}


def child_driver(workload: str, archive: str, threads: int, options: dict[str, object]) -> dict[str, object]:
    """driver_alone() in a fresh process, after building the workload's engine."""
    import foundry_alloc

    foundry_alloc.install()
    import torch

    from foundry_trace.bench.workloads.registry import build_engine

    engine = build_engine(workload, **options)  # kept alive: LOAD compares its memory with SAVE's
    torch.cuda.synchronize()
    result = driver_alone(archive, threads)
    del engine
    return result


def _run_child(*arguments: str) -> dict[str, object]:
    return run_child(MODULE, list(arguments))


def run_children(
    workload: str, threads: int, archive: Path | None = None, *, full: bool = True, **options: object
) -> tuple[dict[str, object], dict[str, object]]:
    """SAVE (unless `archive` exists already) and LOAD in fresh processes, with progress shown.
    `full`: the whole LOAD bench; otherwise one restore and the comparison (foundry verify)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    extra = option_arguments(options)
    with tempfile.TemporaryDirectory() as scratch, Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True
    ) as progress:
        path = archive or Path(scratch) / f"{workload}.foundry"
        saved: dict[str, object] = {}
        if archive is None or not archive.exists():
            task = progress.add_task(f"SAVE {workload}: warm-up, capture and record every graph")
            saved = run_role("save", workload, path, **options)
            progress.remove_task(task)
        if full:
            task = progress.add_task(f"native {workload}: warm-up, capture and instantiate every graph, cold")
            native = run_role("native", workload, path, **options)
            progress.remove_task(task)
            task = progress.add_task(f"driver alone {workload}: build and instantiate every graph, cold")
            driver_alone = _run_child("driver", workload, str(path), str(threads), *extra)
            progress.remove_task(task)
            task = progress.add_task(f"LOAD {workload}: restore cold, then 1 thread, lazy, thread counts, native capture, compare")
            loaded = _run_child("load", workload, str(path), str(threads), *extra)
            progress.remove_task(task)
            progress.add_task(f"prefetch {workload}: prefetch at process start, engine built meanwhile, restore, compare")
            loaded["prefetched"] = _set_apart_nondeterministic(_run_child("prefetch", workload, str(path), str(threads), *extra), loaded["nondeterministic_native"])
            loaded["native_s"], loaded["native_engine_s"] = native["native_s"], native["engine_s"]
            loaded["driver_alone"] = driver_alone
        else:
            progress.add_task(f"LOAD {workload}: restore, native capture, compare")
            loaded = run_role("verify", workload, path, threads=threads, **options)
        saved.setdefault("archive_bytes", path.stat().st_size)
    return saved, loaded


def _set_apart_nondeterministic(prefetched: dict[str, object], nondeterministic: list[int]) -> dict[str, object]:
    """The prefetch child's mismatches, less the graphs that the LOAD child's native capture found
    nondeterministic (SAVE's few replays can agree by chance: cuDNN attention at batch 24 did)."""
    from foundry_trace.bench.verify import split_nondeterministic

    mismatched, set_apart = split_nondeterministic(prefetched["mismatched"], nondeterministic)
    return {**prefetched, "mismatched": mismatched, "mismatched_nondeterministic": set_apart}


def _fit_point(loaded: dict[str, object]) -> dict[str, object]:
    """The LOAD child's cold restore as the cost fit's first point (fit_bench.DESIGN[0])."""
    return {
        "graphs": loaded["graphs"], "nodes": loaded["nodes"], "restore_s": loaded["restore_s"],
        "driver_cold_s": loaded["driver_alone"]["driver_cold_s"], "batch_sizes": loaded["batch_sizes"],
    }


def workload_label(workload: str, graphs: int, attention: str | None) -> str:
    """The workload as results files name it, e.g. llama8b-67 or llama8b-67-math-attention."""
    return f"{workload}-{graphs}" + (f"-{attention}-attention" if attention else "")


def compared_case_fields(saved: dict[str, object], loaded: dict[str, object]) -> dict[str, object]:
    """The Case fields that every LOAD child (full or verify) measures: times, the comparisons
    with SAVE's graphs and the native capture, replay latency and the archive."""
    return dict(
        graphs=loaded["graphs"],
        native_s=loaded["native_s"],
        restore_s=loaded["restore_s"],
        speedup=loaded["native_s"] / loaded["restore_s"],
        bitwise_equal=loaded["bitwise_equal"],
        mismatched=loaded["mismatched"],
        mismatched_nondeterministic_at_save=loaded.get("mismatched_nondeterministic_at_save"),
        nondeterministic_native=loaded["nondeterministic_native"],
        bitwise_equal_saved=loaded["bitwise_equal_saved"],
        mismatched_saved=loaded["mismatched_saved"],
        mismatched_saved_nondeterministic=loaded["mismatched_saved_nondeterministic"],
        nondeterministic_saved=loaded["nondeterministic_saved"],
        native_differs_from_saved=loaded["native_differs_from_saved"],
        replay_delta_pct={k: v["delta_pct"] for k, v in loaded["latency"].items()},
        replay_ms=loaded["latency"],
        archive_bytes=saved["archive_bytes"],
        save_s=saved.get("save_s"),
        phases_s=loaded["phases"],
    )


def run(workload: str, output_dir: Path | None, threads: int = DEFAULT_THREADS, attention: str | None = None) -> dict[str, object]:
    from foundry_trace.bench.results import Case, ResultsFile

    saved, loaded = run_children(workload, threads, attention=attention)
    case = Case(
        name=workload,
        **compared_case_fields(saved, loaded),
        nodes=loaded["nodes"],
        native_warm_s=loaded["native_warm_s"],
        warm_restore_s=loaded["warm_restore_s"],
        instantiate_floor_s=loaded["instantiate_floor_s"],
        restore_over_floor=loaded["restore_s"] / loaded["instantiate_floor_s"],
        **loaded["driver_alone"],
        restore_over_driver_cold=loaded["restore_s"] / loaded["driver_alone"]["driver_cold_s"],
        speedup_bound_driver_cold=loaded["native_s"] / loaded["driver_alone"]["driver_cold_s"],
        serial_restore_s=loaded["serial_restore_s"],
        serial_busy_s=loaded["serial_busy"],
        restore_at_restore_point_s=loaded["at_restore_point_s"],
        speedup_with_prefetch=loaded["native_s"] / loaded["at_restore_point_s"],
        native_engine_s=loaded["native_engine_s"],
        prefetch_cold=loaded["prefetched"],
        speedup_with_prefetch_cold=loaded["native_s"] / loaded["prefetched"]["at_restore_point_s"],
        first_graph_prefetched_s=loaded["first_graph_prefetched_s"],
        restore_s_by_threads=loaded["threads_sweep_s"],
        instantiate_only_s_by_threads=loaded["instantiate_only_s_by_threads"],
        best_possible_speedup=loaded["native_s"] / min(loaded["instantiate_only_s_by_threads"].values()),
        first_graph_s=loaded["first_graph_s"],
        first_graph_run_s=loaded["first_graph_run_s"],
        first_graph_key=loaded["first_graph_key"],
        first_step_graphs=loaded["first_step_graphs"],
        first_graph_phases_s=loaded["first_graph_phases"],
        first_graph_spans=loaded["first_graph_spans"],
        nondeterminism=loaded["nondeterminism"],
        busy_s=loaded["busy"],
        threads=threads,
        spans=loaded["spans"],
        cost_fit=None,
    )
    results = ResultsFile.of_this_run(
        what="load",
        workload=workload_label(workload, loaded["graphs"], attention),
        workload_desc=f"{loaded['description']}; every graph restored vs warm-up + capture + instantiate, each side cold in a fresh process",
        device=loaded["device"], gpus=1, cuda=loaded["cuda"], torch=loaded["torch"], cases=[case],
    )
    if output_dir is not None:  # written before the cost fit too, whose SAVEs take minutes: a run cut short keeps it
        written = results.write(output_dir)
        plot_timeline(results.model_dump(), written.with_suffix(".png"))
    if splits_steps(workload):
        fitted = case.model_copy(update={"cost_fit": fit_costs(workload, threads, _fit_point(loaded), attention=attention)})
        results = results.model_copy(update={"cases": [fitted]})
        if output_dir is not None:
            results.write(output_dir)
    return results.model_dump()


def plot_timeline(results: dict[str, object], path: Path) -> Path | None:
    """A PNG: native vs restore totals, and the restore's tasks per thread over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no timeline ({path.name}); pip install 'foundry[bench]'", file=sys.stderr)
        return None
    case = results["cases"][0]
    colors = {"module": "#4c72b0", "build": "#55a868", "instantiate": "#c44e52", "upload": "#8172b2"}
    figure, (totals, lanes) = plt.subplots(2, 1, figsize=(11, 6.5), gridspec_kw={"height_ratios": [1, 3]})
    totals.barh(["Foundry restore", "native warm-up + capture"], [case["restore_s"], case["native_s"]], color=["#55a868", "#999999"])
    totals.set_xlabel("seconds")
    totals.set_title(f"{results['device']} / {results['workload']}: restore {case['speedup']:.1f}x faster than capture")
    start = 0.0
    for name, seconds in case["phases_s"].items():
        if name != "graphs":
            lanes.barh("main", seconds, left=start, color="#dd8452")
            start += seconds
    for span in case["spans"]:
        lanes.barh(span["worker"].replace("foundry-load_", "thread "), span["end"] - span["start"], left=span["start"], color=colors[span["phase"]])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in [*colors.values(), "#dd8452"]]
    lanes.legend(handles, [*colors, "open + verify + memory"], loc="lower right", fontsize=8)
    lanes.set_xlabel(f"seconds since LOAD began (threads={case['threads']}; the native runner's threads share one lane)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _prefetch_rows(c: dict[str, object]) -> list[tuple[str, str]]:
    p = c["prefetch_cold"]
    return [
        ("prefetch() at process start (cold): restore at the restore point", f"{p['at_restore_point_s']:.3f} s ({c['speedup_with_prefetch_cold']:.1f}x)"),
        ("  graphs ready before the restore point / prefetch work ended at", f"{p['ready_before_restore_point']} of {c['graphs']} / {p['prefetch_work_s']:.2f} s"),
        ("  process start to ready: native / with prefetch", f"{c['native_engine_s'] + c['native_s']:.2f} / {p['engine_s'] + p['at_restore_point_s']:.2f} s"),
        ("  prefetched graphs bit-identical to SAVE's", f"{not p['mismatched']} ({p['compared']} compared, differ: {p['mismatched'] or 'none'}"
         + (f"; nondeterministic natively: {p['mismatched_nondeterministic']})" if p.get("mismatched_nondeterministic") else ")")),
    ]


def _by_phase(spans: list[dict[str, object]]) -> dict[str, list[dict[str, object]]]:
    grouped: dict[str, list[dict[str, object]]] = {}
    for span in spans:
        grouped.setdefault(str(span["phase"]), []).append(span)
    return grouped


def render(results: dict[str, object]) -> str:
    from rich.table import Table

    from foundry_trace.bench.results import table_text

    c = results["cases"][0]
    table = Table(title=f"{results['device']} / {results['workload']}: {c['graphs']} graphs, archive {c['archive_bytes'] / 2**20:.1f} MiB")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("native warm-up + capture + instantiate (cold, plain PyTorch)", f"{c['native_s']:.3f} s"),
        (f"Foundry restore (cold, {c['threads']} threads)", f"{c['restore_s']:.3f} s"),
        ("speed-up", f"{c['speedup']:.1f}x"),
        ("warm, after other restores: native / restore", f"{c['native_warm_s']:.3f} / {c['warm_restore_s']:.3f} s"),
        ("driver instantiation alone (1 thread)", f"{c['instantiate_floor_s']:.3f} s"),
        ("restore / instantiation floor", f"{c['restore_over_floor']:.2f}"),
        (f"driver alone, cold: build + instantiate on {c['threads']} threads", f"{c['driver_build_s']:.3f} + {c['driver_instantiate_s']:.3f} s"),
        ("restore / driver alone cold", f"{c['restore_over_driver_cold']:.2f}"),
        ("speed-up bound: native / driver alone cold", f"{c['speedup_bound_driver_cold']:.1f}x"),
        *((f"instantiation alone on {n} threads (graphs prebuilt)", f"{v:.3f} s") for n, v in c["instantiate_only_s_by_threads"].items()),
        ("speed-up bound: native / best instantiation alone", f"{c['best_possible_speedup']:.1f}x"),
        ("with prefetch() (warm): restore at the restore point", f"{c['restore_at_restore_point_s']:.3f} s ({c['speedup_with_prefetch']:.1f}x)"),
        *_prefetch_rows(c),
        (f"first graph launched (lazy, key {c['first_graph_key']})", f"{c['first_graph_s'] * 1000:.1f} ms"),
        ("  and its run done", f"{c['first_graph_run_s'] * 1000:.1f} ms"),
        ("  its LOAD phases", ", ".join(f"{k} {v * 1000:.1f}" for k, v in c["first_graph_phases_s"].items()) + " ms"),
        *((f"  its {phase} tasks: first start, last end", f"{min(s['start'] for s in spans) * 1000:.1f}, {max(s['end'] for s in spans) * 1000:.1f} ms")
          for phase, spans in _by_phase(c["first_graph_spans"]).items()),
        ("first graph launched (lazy, after prefetch())", f"{c['first_graph_prefetched_s'] * 1000:.1f} ms"),
        *((f"phase {k}", f"{v * 1000:.1f} ms") for k, v in c["phases_s"].items()),
        *((f"busy {k} (all threads)", f"{v * 1000:.1f} ms") for k, v in c["busy_s"].items()),
        ("bit-identical to SAVE's graphs", f"{c['bitwise_equal_saved']} (differ: {c['mismatched_saved'] or 'none'}"
         + (f"; nondeterministic natively: {c['mismatched_saved_nondeterministic']})" if c["mismatched_saved_nondeterministic"] else ")")),
        ("bit-identical to a native capture here", f"{c['bitwise_equal']} (differ: {c['mismatched'] or 'none'}"
         + (f"; nondeterministic at SAVE: {c['mismatched_nondeterministic_at_save']})" if c.get("mismatched_nondeterministic_at_save") else ")")),
        ("native graphs nondeterministic", str(c["nondeterministic_native"] or "none")),
        *((f"b={b}: first nondeterministic operation", f"{d['operation']} on {d['shapes']}" if d else "none found")
          for b, d in c["nondeterminism"].items()),
        *((f"replay b={b} native / restored", f"{v['native_ms']:.3f} / {v['restored_ms']:.3f} ms ({v['delta_pct']:+.2f} %)") for b, v in c["replay_ms"].items()),
        *((f"  its graphs alone, b={b}", f"{g['native_ms']:.3f} / {g['restored_ms']:.3f} ms ({g['delta_pct']:+.2f} %)")
          for b, v in c["replay_ms"].items() if (g := v.get("graphs_only"))),
        *((f"cost fit, {side}: per graph / per node / fixed", f"{f['per_graph_us']:.1f} us / {f['per_node_us']:.2f} us / {f['fixed_s']:.3f} s")
          for side, f in ((side, (c.get("cost_fit") or {}).get(side)) for side in ("restore", "driver_alone")) if f),
    ]
    for row in rows:
        table.add_row(*row)
    return table_text(table, width=120)


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    options = parsed_options(arguments)
    child = {"driver": child_driver, "load": child_load, "prefetch": child_prefetch}[arguments.role]
    return child(arguments.workload, arguments.archive, arguments.threads, options)


def _parser() -> argparse.ArgumentParser:
    return child_parser("a child process of `foundry bench load`", ("driver", "load", "prefetch"))


if __name__ == "__main__":
    child_main(_run, _parser())

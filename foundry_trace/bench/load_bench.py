"""`foundry bench` (load): native warm-up + capture vs Foundry restore, side by side on one GPU.

A child process SAVEs the workload and records its graphs' outputs on fixed inputs. Both sides
are then timed cold, each as the first thing a fresh process does after building the engine
state (the driver's first executables and modules cost more than later ones, and a server starts
cold): a `native` child captures every graph with plain PyTorch (no Foundry in the process), a
`driver` child (driver_alone.py) builds and instantiates the same graphs straight from the node tables with
nothing else running (what the driver alone costs cold), and a `load` child (load_roles.py)
restores every graph. Driver-alone and cold-restore children alternate COLD_RUNS times (the
later restores in fit_bench's `cold` child): the ratio of the two is their pairs' median, with
min and max. The load child goes on with: a restore on one thread (its summed instantiation time is
the driver's own floor), a lazy restore (time to the first launch),
instantiation of prebuilt graphs on several threads (the least time any restore can take), a
restore with prefetch() (modules loaded before the restore point), restores on several thread
counts, a native capture in the same process, and the comparison bit for bit (against SAVE's
references in the archive and against that capture) and of replay latency. `foundry verify` and
the coverage bench run a shorter LOAD child (roles.py): one timed restore, then the native
capture and the comparison. For a workload that cuts its steps into pieces, the bench ends with
the cost fit of fit_bench.py (per graph and per node, Foundry against the driver alone).
Here the assembly of the results file; the table and the timeline are load_report.py's.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from foundry_trace.bench.children import option_arguments, run_child
from foundry_trace.bench.driver_alone import MODULE as DRIVER_MODULE
from foundry_trace.bench.fit_bench import MODULE as COLD_MODULE
from foundry_trace.bench.fit_bench import fit_costs
from foundry_trace.bench.load_report import plot_timeline, render
from foundry_trace.bench.load_roles import MODULE
from foundry_trace.bench.roles import run_role
from foundry_trace.bench.workloads.registry import splits_steps
from foundry_trace.restore import DEFAULT_THREADS

__all__ = ["compared_case_fields", "render", "run", "run_children", "workload_label"]
COLD_RUNS = 3  # cold restores and driver-alone runs, each side


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
            driver_runs, restore_runs = [], []
            for run in range(COLD_RUNS):  # alternating, each in a fresh process: a drift hits both sides
                task = progress.add_task(f"driver alone {workload} ({run + 1} of {COLD_RUNS}): build and instantiate every graph, cold")
                driver_runs.append(run_child(DRIVER_MODULE, ["driver", workload, str(path), str(threads), *extra]))
                progress.remove_task(task)
                if run == 0:
                    task = progress.add_task(f"LOAD {workload}: restore cold, then 1 thread, lazy, thread counts, native capture, compare")
                    loaded = _run_child("load", workload, str(path), str(threads), *extra)
                    restore_runs.append(loaded["restore_s"])
                else:
                    task = progress.add_task(f"LOAD {workload} ({run + 1} of {COLD_RUNS}): restore cold")
                    restore_runs.append(run_child(COLD_MODULE, ["cold", workload, str(path), str(threads), *extra])["restore_s"])
                progress.remove_task(task)
            progress.add_task(f"prefetch {workload}: prefetch at process start, engine built meanwhile, restore, compare")
            loaded["prefetched"] = _set_apart_nondeterministic(_run_child("prefetch", workload, str(path), str(threads), *extra), loaded["nondeterministic_native"])
            loaded["native_s"], loaded["native_engine_s"] = native["native_s"], native["engine_s"]
            loaded["driver_alone"] = driver_runs[0]  # the pair of the LOAD child's cold restore
            loaded["cold_runs"] = cold_ratios(restore_runs, [d["driver_cold_s"] for d in driver_runs])
        else:
            progress.add_task(f"LOAD {workload}: restore, native capture, compare")
            loaded = run_role("verify", workload, path, threads=threads, **options)
        saved.setdefault("archive_bytes", path.stat().st_size)
    return saved, loaded


def cold_ratios(restore_s: list[float], driver_s: list[float]) -> dict[str, object]:
    """Repeated cold runs, restore and driver alone alternating (run i of each side paired): the
    runs, each side's median, and the ratio restore / driver alone of each pair, as its median,
    min and max (one sample of each side is noise: 1.15 once where a warm restore took 0.63 s)."""
    ratios = [r / d for r, d in zip(restore_s, driver_s, strict=True)]
    return {
        "restore_s": restore_s, "driver_cold_s": driver_s,
        "restore_s_median": statistics.median(restore_s), "driver_cold_s_median": statistics.median(driver_s),
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
    }


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

    started = time.perf_counter()
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
        restore_over_driver_cold=loaded["cold_runs"]["ratio_median"],
        restore_over_driver_cold_min=loaded["cold_runs"]["ratio_min"],
        restore_over_driver_cold_max=loaded["cold_runs"]["ratio_max"],
        cold_runs=loaded["cold_runs"],
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
        bench_s=time.perf_counter() - started,  # the whole bench so far (SAVE to compare; the fit adds to it)
    )
    results = ResultsFile.of_this_run(
        loaded,
        what="load",
        workload=workload_label(workload, loaded["graphs"], attention),
        workload_desc=f"{loaded['description']}; every graph restored vs warm-up + capture + instantiate, each side cold in a fresh process",
        gpus=1, cases=[case],
    )
    if output_dir is not None:  # written before the cost fit too, whose SAVEs take minutes: a run cut short keeps it
        written = results.write(output_dir)
        plot_timeline(results.model_dump(), written.with_suffix(".png"))
    if splits_steps(workload):
        fitted = case.model_copy(update={"cost_fit": fit_costs(workload, threads, _fit_point(loaded), attention=attention)})
        fitted.bench_s = time.perf_counter() - started
        results = results.model_copy(update={"cases": [fitted]})
        if output_dir is not None:
            results.write(output_dir)
    return results.model_dump()

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
capture and the comparison. After the LOAD child, a `prefetch` child calls prefetch() at
process start and loads with mode="background" at its restore point, and a `background` child
loads so without prefetch (both cold): each times how soon the batch sizes up to 8, and then
all, can be replayed.
For a workload that cuts its steps into pieces, the bench ends with the cost fit of fit_bench.py
(per graph and per node, Foundry against the driver alone), its first point the bench's own
archive and restore.

Under a time budget (`--budget-s`, budget.py; tools/gpu-check gives what is left of its call)
every child gets what is left; the prefetch and background children, the repeated cold pairs
after the first and the fit's points run only where they fit, in that order, and the results file says
what was left out (`skipped_for_time`) and what each child took (`children_s`), its fields of
what was not measured null.

A large workload (the Qwen3-235B rank) loads its weights from disk: a first child writes them
as a safetensors checkpoint (workloads/checkpoint.py), once, and every other child builds its
engine empty and loads them from there, as a serving engine does, so that prefetch() overlaps
real reading; `--checkpoint DIR` does the same for any transformers workload and keeps the files.
Here the assembly of the results file; the table and the timeline are load_report.py's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from foundry_trace.bench.budget import Budget
from foundry_trace.bench.children import option_arguments, run_child
from foundry_trace.bench.driver_alone import MODULE as DRIVER_MODULE
from foundry_trace.bench.driver_alone import cold_ratios
from foundry_trace.bench.fit_bench import MODULE as COLD_MODULE
from foundry_trace.bench.fit_bench import fit_costs
from foundry_trace.bench.load_report import plot_timeline, render
from foundry_trace.bench.load_roles import MODULE
from foundry_trace.bench.roles import run_role
from foundry_trace.bench.workloads.registry import require_checkpoint_support, splits_steps
from foundry_trace.bench.workloads.registry import workload as registry_workload
from foundry_trace.errors import FoundryTraceError, WorkloadError
from foundry_trace.restore import DEFAULT_THREADS

__all__ = ["check_archive", "checkpoint_folder", "compared_case_fields", "render", "run", "run_children", "workload_label"]
COLD_RUNS = 3  # cold restores and driver-alone runs, each side
CHECKPOINT_MODULE = "foundry_trace.bench.workloads.checkpoint"
DRIVER_FIELDS = ("driver_build_s", "driver_instantiate_s", "driver_cold_s")  # of the driver-alone child, into the case


def _run_child(*arguments: str, timeout: float) -> dict[str, object]:
    return run_child(MODULE, list(arguments), timeout=timeout)


def run_children(
    workload: str, threads: int, archive: Path | None = None, *, full: bool = True, budget: Budget | None = None, **options: object
) -> tuple[dict[str, object], dict[str, object]]:
    """SAVE (unless `archive` exists already) and LOAD in fresh processes, with progress shown.
    `full`: the whole LOAD bench; otherwise one restore and the comparison (foundry verify).
    A large workload's weights (or any transformers workload's, given checkpoint=DIR) are first
    written as a checkpoint, once (an earlier run's in DIR is reused), and every child loads
    them from it; without DIR it lives in the scratch folder, on local disk, for this run.
    `budget`: what each child may take (budget.py; none: the default time-out)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    budget = budget if budget is not None else Budget()
    with tempfile.TemporaryDirectory() as scratch, Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True
    ) as progress:
        folder = checkpoint_folder(workload, options.get("checkpoint"), Path(scratch))
        written = None
        if folder is not None:
            task = progress.add_task(f"checkpoint {workload}: random weights as safetensors in {folder}, once")
            layers = option_arguments({"layers": options.get("layers")})
            written = budget.run("checkpoint", lambda timeout: run_child(CHECKPOINT_MODULE, [workload, str(folder), *layers], timeout=timeout))
            progress.remove_task(task)
            options = {**options, "checkpoint": str(folder)}
        path = archive or Path(scratch) / f"{workload}.foundry"
        saved: dict[str, object] = {}
        if archive is None or not archive.exists():
            task = progress.add_task(f"SAVE {workload}: warm-up, capture and record every graph")
            saved = budget.run("save", lambda timeout: run_role("save", workload, path, timeout=timeout, **options))
            progress.remove_task(task)
        if full:
            loaded = _load_children(progress, workload, path, threads, options, budget)
            loaded["weights_load_s_by_child"]["save"] = saved.get("weights_load_s")
        else:
            progress.add_task(f"LOAD {workload}: restore, native capture, compare")
            loaded = budget.run("verify", lambda timeout: run_role("verify", workload, path, threads=threads, timeout=timeout, **options))
        loaded["checkpoint"] = written
        saved.setdefault("archive_bytes", path.stat().st_size)
    return saved, loaded


def checkpoint_folder(workload: str, given: object, scratch: Path) -> Path | None:
    """Where the bench's checkpoint goes: the folder given, else for a large workload one in the
    scratch folder (local disk: where it is too small, give a folder on tmpfs, /dev/shm); None
    where the workload draws its weights in place. A folder for a workload that cannot load
    one is refused before any child runs."""
    if given is not None:
        require_checkpoint_support(workload)
        return Path(str(given))
    return scratch / "checkpoint" if registry_workload(workload).large else None


def _load_children(
    progress: object, workload: str, path: Path, threads: int, options: dict[str, object], budget: Budget
) -> dict[str, object]:
    """The full bench's children after SAVE: native, the first pair of driver alone and LOAD
    child, prefetch, background, then the later pairs of driver alone and cold restore; the LOAD
    child's result with the others' figures added. The first pair always runs; prefetch,
    background and the later pairs where the budget leaves time for them, in that order (what
    only they measure before a further sample of what the first pair measured already). A later
    pair starts only where both its children fit, and one cut short is left out whole: a ratio
    needs both sides."""
    extra = option_arguments(options)
    arguments = [workload, str(path), str(threads), *extra]
    task = progress.add_task(f"native {workload}: warm-up, capture and instantiate every graph, cold")
    native = budget.run("native", lambda timeout: run_role("native", workload, path, timeout=timeout, **options))
    progress.remove_task(task)
    task = progress.add_task(f"driver alone {workload} (1 of {COLD_RUNS}): build and instantiate every graph, cold")
    driver_runs = [budget.run("driver 1", lambda timeout: run_child(DRIVER_MODULE, ["driver", *arguments], timeout=timeout))]
    progress.remove_task(task)
    task = progress.add_task(f"LOAD {workload}: restore cold, then 1 thread, lazy, thread counts, native capture, compare")
    loaded = budget.run("load", lambda timeout: _run_child("load", *arguments, timeout=timeout))
    restore_runs, cold_weights = [loaded["restore_s"]], []
    progress.remove_task(task)
    # Prefetch and background are fresh processes that build the engine and restore, as the
    # driver-alone child does, and then compare: its time is the least they can take.
    least = budget.children_s.get("driver 1")
    task = progress.add_task(f"prefetch {workload}: prefetch at process start, engine built meanwhile, restore, compare")
    prefetched = budget.run_optional("prefetch", lambda timeout: _run_child("prefetch", *arguments, timeout=timeout), least)
    loaded["prefetched"] = None if prefetched is None else _set_apart_nondeterministic(prefetched, loaded["nondeterministic_native"])
    progress.remove_task(task)
    task = progress.add_task(f"background {workload}: load(mode='background'), until batches up to 8 and all are ready")
    background = budget.run_optional("background", lambda timeout: _run_child("background", *arguments, timeout=timeout), least)
    loaded["background"] = None if background is None else _set_apart_nondeterministic(background, loaded["nondeterministic_native"])
    progress.remove_task(task)
    pair = None if least is None else 2 * least  # the driver's run is thrown away where its cold restore cannot follow
    for run in range(1, COLD_RUNS):  # alternating, each in a fresh process: a drift hits both sides
        task = progress.add_task(f"driver alone {workload} ({run + 1} of {COLD_RUNS}): build and instantiate every graph, cold")
        driver = budget.run_optional(
            f"driver {run + 1}", lambda timeout: run_child(DRIVER_MODULE, ["driver", *arguments], timeout=timeout), pair)
        progress.remove_task(task)
        task = progress.add_task(f"LOAD {workload} ({run + 1} of {COLD_RUNS}): restore cold")
        cold = None if driver is None else budget.run_optional(
            f"cold {run + 1}", lambda timeout: run_child(COLD_MODULE, ["cold", *arguments], timeout=timeout), least)
        if cold is not None:
            driver_runs.append(driver)
            restore_runs.append(cold["restore_s"])
            cold_weights.append(cold.get("weights_load_s"))
        progress.remove_task(task)
    loaded["native_s"], loaded["native_engine_s"] = native["native_s"], native["engine_s"]
    loaded["driver_alone"] = {k: driver_runs[0][k] for k in DRIVER_FIELDS}  # the pair of the LOAD child's cold restore
    loaded["cold_runs"] = cold_ratios(restore_runs, [d["driver_cold_s"] for d in driver_runs])
    loaded["weights_load_s_by_child"] = {
        "native": native.get("weights_load_s"), "driver": [d.get("weights_load_s") for d in driver_runs],
        "load": loaded.get("weights_load_s"), "cold": cold_weights, "prefetch": _get(loaded["prefetched"], "weights_load_s"),
        "background": _get(loaded["background"], "weights_load_s"),
    }
    return loaded


def _get(result: dict[str, object] | None, key: str) -> object:
    """A child's figure, None where the child did not run."""
    return None if result is None else result.get(key)


def _set_apart_nondeterministic(compared: dict[str, object], nondeterministic: list[int]) -> dict[str, object]:
    """A prefetch or background child's mismatches, less the graphs that the LOAD child's native
    capture found nondeterministic or whose replays varied in the child itself
    (`mismatched_varying`): SAVE's few replays can agree by chance (cuDNN attention at batch 24
    did, and at 16 where no native capture showed it)."""
    from foundry_trace.bench.verify import split_nondeterministic

    shown = sorted({*nondeterministic, *compared.get("mismatched_varying", [])})
    mismatched, set_apart = split_nondeterministic(compared["mismatched"], shown)
    return {**compared, "mismatched": mismatched, "mismatched_nondeterministic": set_apart}


def _fit_point(loaded: dict[str, object], archive: Path) -> dict[str, object]:
    """The LOAD child's cold restore as the cost fit's first point (fit_bench.DESIGN[0]), with its
    archive, whose graphs the fit's subsets copy."""
    return {
        "graphs": loaded["graphs"], "nodes": loaded["nodes"], "restore_s": loaded["restore_s"], "phases": loaded["phases"],
        "driver_cold_s": loaded["driver_alone"]["driver_cold_s"], "batch_sizes": loaded["batch_sizes"], "archive": str(archive),
    }


def fit_expectations(children_s: dict[str, float], references_s: float | None) -> dict[str, float]:
    """What the fit's children are expected to take, from this run's like children: a SAVE
    without references (the bench's SAVE less its references' time), the longest cold restore
    child (the LOAD child does much more: not one of them) and the longest driver-alone child."""
    expected: dict[str, float] = {}
    if "save" in children_s:
        expected["save"] = max(0.0, children_s["save"] - (references_s or 0.0))
    for kind in ("cold", "driver"):
        seen = [seconds for phase, seconds in children_s.items() if phase.split(" ")[0] == kind]
        if seen:
            expected[kind] = max(seen)
    return expected


def check_archive(archive: Path, workload: str, options: dict[str, object]) -> None:
    """Raises WorkloadError where `--archive` cannot serve the bench: a new archive's folder
    missing, or an existing one that is not an archive SAVEd by the bench for this workload
    with these engine options (the weights' checkpoint folder aside). Called before any child
    or GPU is asked for."""
    from foundry_trace.archive.format import Archive
    from foundry_trace.bench.workloads.registry import workload_of

    if not archive.exists():
        if not archive.parent.is_dir():
            raise WorkloadError(f"--archive {archive}: its folder {archive.parent} does not exist; create it, or name a file in an existing folder")
        return
    try:
        with Archive(archive) as opened:
            named = workload_of(opened.manifest.metadata)
    except (FoundryTraceError, OSError) as error:
        raise WorkloadError(f"--archive {archive} exists but cannot be reused: {error}; remove it, and the bench SAVEs a new one there") from None
    given = {k: v for k, v in options.items() if v is not None and k != "checkpoint"}
    recorded = None if named is None else (named[0], {k: v for k, v in named[1].items() if k != "checkpoint"})
    if recorded != (workload, given):
        raise WorkloadError(
            f"--archive {archive} was SAVEd for {recorded or 'no bench workload'}, not {(workload, given)}: remove it (the bench "
            "SAVEs a new one there), or give the workload and options it was SAVEd with"
        )


def workload_label(workload: str, graphs: int, attention: str | None, layers: int | None = None) -> str:
    """The workload as results files name it, e.g. llama8b-67, llama8b-67-math-attention, or
    qwen3-235b-rank-67-4-layers where --layers scaled it down."""
    return f"{workload}-{graphs}" + (f"-{layers}-layers" if layers else "") + (f"-{attention}-attention" if attention else "")


def readiness_fields(loaded: dict[str, object]) -> dict[str, object]:
    """The Case fields of what the graphs hold (counts read from the archive), of the weights
    loaded from disk (the LOAD child's, each child's, the checkpoint), and of serving before
    every graph is ready (the background child's)."""
    background = loaded["background"]  # None where the budget left the child out
    return dict(
        **{k: loaded[k] for k in ("kernel_nodes", "nodes_by_kind", "kernel_functions", "modules", "templates")},
        weights_load_s=loaded["weights_load_s"],
        weights_load_s_by_child=loaded["weights_load_s_by_child"],
        checkpoint=loaded["checkpoint"],
        background_cold=background,
        ready_small_batches_s=_get(background, "ready_small_batches_s"),
        ready_all_s=_get(background, "ready_all_s"),
    )


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
        module_cuts=saved.get("module_cuts"),  # None where the archive was an earlier run's
        phases_s=loaded["phases"],
    )


def run(
    workload: str, output_dir: Path | None, threads: int = DEFAULT_THREADS, attention: str | None = None, layers: int | None = None,
    checkpoint: Path | None = None, budget_s: float | None = None, archive: Path | None = None,
) -> dict[str, object]:
    """The whole LOAD bench. `layers`: the model's decoder layers (default: the workload's);
    `checkpoint`: the folder of the weights' checkpoint (kept, and reused by the next run);
    `budget_s`: the seconds the whole bench may take, cost fit included (budget.py); `archive`:
    where SAVE's archive goes, kept, and restored without a SAVE where it exists already (an
    earlier run's, of the same workload and options: LOAD refuses one whose layout or
    fingerprint differs); default a temporary file, removed after the run."""
    from foundry_trace.bench.results import Case, ResultsFile

    started = time.perf_counter()
    budget = Budget(budget_s)
    if archive is not None:
        check_archive(archive, workload, {"attention": attention, "layers": layers})
    reused = archive is not None and archive.exists()
    with tempfile.TemporaryDirectory(prefix="foundry-load-") as kept:  # the archive, kept for the fit's subsets
        archive = archive if archive is not None else Path(kept) / f"{workload}.foundry"
        saved, loaded = run_children(workload, threads, archive, budget=budget, attention=attention, layers=layers, checkpoint=checkpoint)
        instantiate_only = loaded["instantiate_only_s_by_threads"]  # None for a large workload: not measured
        prefetched = loaded["prefetched"]  # None where the budget left the child out
        case = Case(
            name=workload,
            **compared_case_fields(saved, loaded),
            nodes=loaded["nodes"],
            **readiness_fields(loaded),
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
            prefetch_cold=prefetched,
            speedup_with_prefetch_cold=loaded["native_s"] / prefetched["at_restore_point_s"] if prefetched else None,
            first_graph_prefetched_s=loaded["first_graph_prefetched_s"],
            restore_s_by_threads=loaded["threads_sweep_s"],
            instantiate_only_s_by_threads=loaded["instantiate_only_s_by_threads"],
            best_possible_speedup=loaded["native_s"] / min(instantiate_only.values()) if instantiate_only else None,
            first_graph_s=loaded["first_graph_s"],
            first_graph_run_s=loaded["first_graph_run_s"],
            first_graph_key=loaded["first_graph_key"],
            first_step_graphs=loaded["first_step_graphs"],
            first_graph_phases_s=loaded["first_graph_phases"],
            first_graph_spans=loaded["first_graph_spans"],
            first_graph_modules=loaded.get("first_graph_modules"),
            nondeterminism=loaded["nondeterminism"],
            compare_s=loaded.get("compare_s"),
            archive_reused=reused,
            busy_s=loaded["busy"],
            threads=threads,
            builders=loaded["builders"],
            chunk_nodes=loaded["chunk_nodes"],
            spans=loaded["spans"],
            cost_fit=None,
            bench_s=time.perf_counter() - started,  # the whole bench so far (SAVE to compare; the fit adds to it)
            **budget.record(),
        )
        results = ResultsFile.of_this_run(
            loaded,
            what="load",
            workload=workload_label(workload, loaded["graphs"], attention, layers),
            workload_desc=f"{loaded['description']}; every graph restored vs warm-up + capture + instantiate, each side cold in a fresh process",
            gpus=1, cases=[case],
        )
        if output_dir is not None:  # written before the cost fit too: a run cut short keeps it
            written = results.write(output_dir)
            plot_timeline(results.model_dump(), written.with_suffix(".png"))
        if splits_steps(workload):
            expected = fit_expectations(budget.children_s, saved.get("references_s"))
            cost_fit = fit_costs(workload, threads, _fit_point(loaded, archive), budget=budget, expected=expected, attention=attention, layers=layers)
            fitted = case.model_copy(update={"cost_fit": cost_fit, "bench_s": time.perf_counter() - started, **budget.record()})
            results = results.model_copy(update={"cases": [fitted]})
            if output_dir is not None:
                results.write(output_dir)
    return results.model_dump()

"""`foundry bench fit`: what a restore costs per graph and per node, against the driver's own.

A workload that cuts its steps into pieces (piecewise) is SAVEd with the same kernels in
different numbers of graphs (attention eager at every k-th layer: 33 pieces a step at k = 1, 2
at k = 32), and restored over different numbers of batch sizes (all of them, or every 4th), so
that the graph and node counts vary apart: with piece counts alone, fewer graphs always meant
more nodes (attention then captured inside the pieces), and the fit could not tell the two
terms apart. A point of every 4th batch size is not SAVEd again: its archive holds the graphs of
those batch sizes copied from the archive of all of them (archive_subset.py says why that is
honest here), which saves a SAVE child, its capture and its engine, per such point. Each archive
is restored cold in a fresh process (Foundry's whole LOAD: open, checks, memory, modules,
graphs) and built and instantiated cold by the driver alone in another (its modules loaded
untimed, driver_alone.child_driver). Least squares then gives

    seconds = fixed + graphs x per_graph + nodes x per_node

for each side, with each run's residual. Foundry's per-graph term against the driver's says what
Foundry adds per graph. `foundry bench load` runs the same fit for such workloads, its own main
restore being the first point. Under a time budget (budget.py) each point runs only where it
fits in what is left, the most telling first, and the fit is made of the points measured.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from foundry_trace.bench.archive_subset import keys_of_batches, write_subset
from foundry_trace.bench.budget import Budget
from foundry_trace.bench.children import child_main, child_parser, option_arguments, parsed_options, run_child
from foundry_trace.bench.driver_alone import MODULE as DRIVER_MODULE
from foundry_trace.bench.results import device_fields
from foundry_trace.bench.roles import cold_load, run_role
from foundry_trace.bench.workloads.registry import require_pieces
from foundry_trace.restore import DEFAULT_THREADS

MODULE = "foundry_trace.bench.fit_bench"

# (attention eager every k layers, every n-th batch size), in the order measured. A point of
# n = 1 is SAVEd (the first is the workload as served: the load bench's own archive); one of
# n > 1 is the subset of the SAVEd point of its k. The most telling first, so that a run short
# of time loses the last: the first two need no SAVE beyond the bench's own, and with the next
# two (one SAVE) the design is a 2 x 2 of piece counts and batch subsets, graph and node counts
# apart; the last, between them, adds a point at the cost of one more SAVE.
DESIGN = ((1, 1), (1, 4), (32, 1), (32, 4), (2, 1))
MODEL = "seconds = fixed + graphs x per_graph + nodes x per_node (least squares over the runs)"
FIRST = "the load bench's own"


def subset_of(split_every: int, nth: int) -> tuple[int, int] | None:
    """The DESIGN point whose archive a point's graphs are copied from, or None: SAVEd itself."""
    return None if nth == 1 else (split_every, 1)


def measure_point(
    workload: str, threads: int, split_every: int, nth: int, archives: dict[int, Path], scratch: Path, budget: Budget,
    expected: dict[str, float], **options: object,
) -> dict[str, object] | None:
    """One point of the fit: its archive (SAVEd without references, only timed; or a subset of the
    point SAVEd with the same split_every, in `archives`), then a cold restore and the driver
    alone cold, each in a fresh process, with the engine of the SAVEd archive's options. None
    where the budget left it out (recorded there). `expected`: seconds a like child took in
    this run (save, cold, driver), what the budget weighs each child by."""
    label = f"fit split_every={split_every}, every {nth}. batch size"
    source = subset_of(split_every, nth)
    if source is not None and split_every not in archives:
        why = f"its source, split_every={split_every} of all batch sizes, was not SAVEd"
        budget.skipped.append({"phase": label, "why": why, "left_s": budget.left(), "expected_s": None})
        return None
    whole = expected.get("cold", 0.0) + expected.get("driver", 0.0) + (expected.get("save", 0.0) if source is None else 0.0)
    if not budget.allows(label, whole if expected else None):
        return None
    variant = {**options, "split_every": split_every}
    if source is None:
        path = scratch / f"{workload}-{split_every}.foundry"
        saved = budget.run_optional(f"{label}: save", lambda timeout: run_role("save", workload, path, references=False, timeout=timeout, **variant),
                                    expected.get("save"))
        if saved is None:
            return None
        archives[split_every] = path
        origin = "saved"
    else:
        path = scratch / f"{workload}-{split_every}-every-{nth}.foundry"
        write_subset(archives[split_every], path, keys_of_batches(set(archive_batches(archives[split_every])[::nth])), f"every {nth}. batch size")
        origin = f"graphs of every {nth}. batch size copied from the archive of split_every={split_every}"
    extra = [workload, str(path), str(threads), *option_arguments(variant)]
    cold = budget.run_optional(f"{label}: cold", lambda timeout: run_child(MODULE, ["cold", *extra], timeout=timeout), expected.get("cold"))
    driver = None if cold is None else budget.run_optional(
        f"{label}: driver", lambda timeout: run_child(DRIVER_MODULE, ["driver", *extra], timeout=timeout), expected.get("driver"))
    if driver is None:
        return None
    return {**cold, "driver_cold_s": driver["driver_cold_s"], "archive": origin}


def archive_batches(path: Path) -> list[int]:
    """The batch sizes an archive's graphs are of, ascending."""
    from foundry_trace.archive.format import Archive
    from foundry_trace.archive.keys import batch_of

    with Archive(path) as archive:
        return sorted({batch for batch in (batch_of(entry.key) for entry in archive.manifest.graphs) if batch is not None})


def fit_costs(
    workload: str, threads: int, first: dict[str, object] | None = None, *, budget: Budget | None = None,
    expected: dict[str, float] | None = None, **options: object,
) -> dict[str, object]:
    """The fit over DESIGN's runs that the budget allows. `first`: the point of DESIGN[0] where the
    caller measured it already (the load bench's main restore: graphs, nodes, restore_s,
    driver_cold_s, and its archive, which must still exist). `expected`: seconds a like child
    took (save, cold, driver), also learnt from this fit's own children as it goes."""
    require_pieces(workload)
    budget = budget if budget is not None else Budget()
    expected = dict(expected or {})
    runs = []
    with tempfile.TemporaryDirectory(prefix="foundry-fit-") as scratch:
        archives: dict[int, Path] = {}
        for split_every, nth in DESIGN:
            if first is not None and (split_every, nth) == DESIGN[0]:
                archives[split_every] = Path(str(first["archive"]))
                point = {**{k: v for k, v in first.items() if k != "archive"}, "archive": FIRST}
            else:
                point = measure_point(workload, threads, split_every, nth, archives, Path(scratch), budget, expected, **options)
                _learn(expected, budget.children_s)
            if point is not None:
                runs.append({"split_every": split_every, "every_nth_batch": nth, **point})
    return {
        "runs": [{k: v for k, v in r.items() if k not in ("batch_sizes", "weights_load_s")} for r in runs],
        "model": MODEL,
        **fitted(runs),
        "skipped_for_time": [s for s in budget.skipped if str(s["phase"]).startswith("fit ")],
    }


def _learn(expected: dict[str, float], children_s: dict[str, float]) -> None:
    """The longest wall time of each kind of the fit's children so far (save, cold, driver)."""
    for phase, seconds in children_s.items():
        kind = phase.rpartition(": ")[2]
        if phase.startswith("fit ") and kind in ("save", "cold", "driver"):
            expected[kind] = max(expected.get(kind, 0.0), seconds)


def fitted(runs: list[dict[str, object]]) -> dict[str, object]:
    """Both sides' fits of MODEL, or None for each where the runs do not determine one (fewer
    than three, or graph and node counts in proportion)."""
    try:
        foundry, driver = (fit(runs, key) for key in ("restore_s", "driver_cold_s")) if len(runs) >= 3 else (None, None)
    except ValueError:
        foundry, driver = None, None
    ratio = foundry["per_graph_us"] / driver["per_graph_us"] if foundry and driver and driver["per_graph_us"] > 0 else None
    return {"restore": foundry, "driver_alone": driver, "foundry_per_graph_over_driver": ratio}


def fit(runs: list[dict[str, object]], key: str) -> dict[str, object]:
    """MODEL fitted to runs[i][key], with each run's residual (measured - fitted) in ms."""
    rows = [(1.0, float(r["graphs"]), float(r["nodes"])) for r in runs]
    values = [float(r[key]) for r in runs]
    fixed, per_graph, per_node = least_squares(rows, values)
    residuals = [v - (fixed + g * per_graph + n * per_node) for (_, g, n), v in zip(rows, values)]
    return {
        "fixed_s": fixed, "per_graph_us": per_graph * 1e6, "per_node_us": per_node * 1e6,
        "residuals_ms": [round(r * 1e3, 2) for r in residuals],
    }


def least_squares(rows: list[tuple[float, ...]], values: list[float]) -> list[float]:
    """The coefficients minimising the squared error of rows . coefficients = values: each column
    scaled to at most 1, then modified Gram-Schmidt QR (a few unknowns, no numpy needed). Unlike
    the normal equations, QR does not square the columns' condition: a fixed term beside node
    counts of 10^5 keeps its digits."""
    size = len(rows[0])
    scales = [max(abs(row[j]) for row in rows) or 1.0 for j in range(size)]
    basis: list[list[float]] = []
    upper = [[0.0] * size for _ in range(size)]
    for j in range(size):
        column = [row[j] / scales[j] for row in rows]
        for i, q in enumerate(basis):
            upper[i][j] = sum(a * b for a, b in zip(q, column, strict=True))
            column = [a - upper[i][j] * b for a, b in zip(column, q, strict=True)]
        upper[j][j] = math.sqrt(sum(a * a for a in column))
        if upper[j][j] <= 1e-12:
            raise ValueError("the runs do not determine the fit (too few distinct graph and node counts)")
        basis.append([a / upper[j][j] for a in column])
    projected = [sum(a * b for a, b in zip(q, values, strict=True)) for q in basis]
    solution = [0.0] * size
    for j in reversed(range(size)):
        solution[j] = (projected[j] - sum(upper[j][k] * solution[k] for k in range(j + 1, size))) / upper[j][j]
    return [x / scale for x, scale in zip(solution, scales, strict=True)]


def child_cold(workload: str, archive: str, threads: int, options: dict[str, object]) -> dict[str, object]:
    """One cold restore, first thing after the engine is built (a fit's point)."""
    from foundry_trace.bench.verify import restored_batches
    from foundry_trace.bench.workloads.registry import weights_load_s

    model, restored, restore_s = cold_load(workload, archive, threads, options)
    graphs, nodes = len(restored.graphs), sum(entry.nodes for entry in restored.archive.manifest.graphs)
    batch_sizes, phases = restored_batches(restored), dict(restored.phases)
    restored.release()
    loaded_in = weights_load_s(model)
    del model
    return {"graphs": graphs, "nodes": nodes, "restore_s": restore_s, "phases": phases, "batch_sizes": batch_sizes, "weights_load_s": loaded_in,
            **device_fields()}


def run(
    workload: str, output_dir: Path | None, threads: int = DEFAULT_THREADS, attention: str | None = None, budget_s: float | None = None,
) -> dict[str, object]:
    """The fit alone. `budget_s`: the seconds it may take (budget.py); the points left out are in
    the JSON's cost_fit.skipped_for_time."""
    from foundry_trace.bench.results import Case, ResultsFile
    from foundry_trace.errors import WorkloadError

    started = time.perf_counter()
    result = fit_costs(workload, threads, budget=Budget(budget_s), attention=attention)
    if not result["runs"]:
        raise WorkloadError(f"a time budget of {budget_s} s left no point of the fit measured: give more (--budget-s)")
    cases = [
        Case(name=f"split_every={r['split_every']}, every {r['every_nth_batch']}. batch size", graphs=r["graphs"], nodes=r["nodes"],
             restore_s=r["restore_s"], driver_cold_s=r["driver_cold_s"], restore_over_driver_cold=r["restore_s"] / r["driver_cold_s"])
        for r in result["runs"]
    ]
    results = ResultsFile.of_this_run(
        result["runs"][-1],  # a fresh cold child's (the first run may be the caller's)
        what="load",
        workload=f"{workload}-cost-fit" + (f"-{attention}-attention" if attention else ""),
        workload_desc=f"{workload} in {len(DESIGN)} archives (attention eager every k layers, SAVEd with all batch sizes; every "
        "4th batch size's graphs copied from them), each restored cold and built + instantiated cold by the driver alone, in fresh "
        "processes; least squares of time against graph and node counts",
        gpus=1, cases=cases, cost_fit=result, bench_s=time.perf_counter() - started,
    )
    if output_dir is not None:
        results.write(output_dir)
    return results.model_dump()


def render(results: dict[str, object]) -> str:
    from rich.table import Table

    from foundry_trace.bench.results import table_text

    fitted = results["cost_fit"]
    table = Table(title=f"{results['device']} / {results['workload']}: {fitted['model']}")
    for column in ("run", "graphs", "nodes", "restore s", "driver alone s", "ratio"):
        table.add_column(column, justify="right")
    for case in results["cases"]:
        table.add_row(case["name"], str(case["graphs"]), str(case["nodes"]), f"{case['restore_s']:.3f}", f"{case['driver_cold_s']:.3f}",
                      f"{case['restore_over_driver_cold']:.2f}")
    for side in ("restore", "driver_alone"):
        terms = fitted[side]
        if terms is None:
            table.add_row(f"fit: {side}", "not determined by the runs measured", "", "", "", "")
            continue
        table.add_row(f"fit: {side}", f"{terms['per_graph_us']:.1f} us/graph", f"{terms['per_node_us']:.2f} us/node",
                      f"fixed {terms['fixed_s']:.3f} s", f"residuals {terms['residuals_ms']} ms", "")
    return table_text(table, width=140)


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    return child_cold(arguments.workload, arguments.archive, arguments.threads, parsed_options(arguments))


def _parser() -> argparse.ArgumentParser:
    return child_parser("a child process of `foundry bench fit` (and of the load bench's fit)", ("cold",))


if __name__ == "__main__":
    child_main(_run, _parser())

"""`foundry bench fit`: what a restore costs per graph and per node, against the driver's own.

A workload that cuts its steps into pieces (piecewise) is SAVEd several times with the same
kernels in different numbers of graphs (attention eager at every k-th layer: 33 pieces a step at
k = 1, 2 at k = 32) and over different numbers of batch sizes (all of them, or every 4th), so
that the graph and node counts vary apart: with piece counts alone, fewer graphs always meant
more nodes (attention then captured inside the pieces), and the fit could not tell the two
terms apart. Each archive is restored cold in a fresh process (Foundry's whole LOAD: open,
checks, memory, modules, graphs) and built and instantiated cold by the driver alone in another
(its modules loaded untimed, driver_alone.child_driver). Least squares then gives

    seconds = fixed + graphs x per_graph + nodes x per_node

for each side, with each run's residual. Foundry's per-graph term against the driver's says what
Foundry adds per graph. `foundry bench load` runs the same fit for such workloads, its own main
restore being the first point.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from foundry_trace.bench.children import child_main, child_parser, option_arguments, parsed_options, run_child
from foundry_trace.bench.driver_alone import MODULE as DRIVER_MODULE
from foundry_trace.bench.results import device_fields
from foundry_trace.bench.roles import cold_load, run_role
from foundry_trace.bench.workloads.registry import require_pieces
from foundry_trace.restore import DEFAULT_THREADS

MODULE = "foundry_trace.bench.fit_bench"

# (attention eager every k layers, every n-th batch size). The first is the workload as served.
DESIGN = ((1, 1), (2, 1), (32, 1), (1, 4), (32, 4))
MODEL = "seconds = fixed + graphs x per_graph + nodes x per_node (least squares over the runs)"


def measure_point(workload: str, threads: int, split_every: int, batch_sizes: tuple[int, ...] | None, **options: object) -> dict[str, object]:
    """One point of the fit: SAVE (no references: only timed), a cold restore and the driver
    alone cold, each in a fresh process."""
    variant = {**options, "split_every": split_every, "batch_sizes": batch_sizes}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{workload}-{split_every}.foundry"
        run_role("save", workload, path, references=False, **variant)
        extra = option_arguments(variant)
        cold = run_child(MODULE, ["cold", workload, str(path), str(threads), *extra])
        driver = run_child(DRIVER_MODULE, ["driver", workload, str(path), str(threads), *extra])
    return {**cold, "driver_cold_s": driver["driver_cold_s"]}


def fit_costs(workload: str, threads: int, first: dict[str, object] | None = None, **options: object) -> dict[str, object]:
    """The fit over DESIGN's runs. `first`: the point of DESIGN[0] where the caller measured it
    already (the load bench's main restore: graphs, nodes, restore_s, driver_cold_s, batch_sizes)."""
    require_pieces(workload)
    runs = []
    for split_every, nth in DESIGN:
        if first is not None and not runs:
            point = first
        else:
            sizes = None if nth == 1 else tuple(runs[0]["batch_sizes"][::nth])
            point = measure_point(workload, threads, split_every, sizes, **options)
        runs.append({"split_every": split_every, "every_nth_batch": nth, **point})
    foundry, driver = (fit(runs, key) for key in ("restore_s", "driver_cold_s"))
    return {
        "runs": [{k: v for k, v in r.items() if k != "batch_sizes"} for r in runs],
        "model": MODEL,
        "restore": foundry,
        "driver_alone": driver,
        "foundry_per_graph_over_driver": foundry["per_graph_us"] / driver["per_graph_us"] if driver["per_graph_us"] > 0 else None,
    }


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
    batch_sizes = restored_batches(restored)
    restored.release()
    loaded_in = weights_load_s(model)
    del model
    return {"graphs": graphs, "nodes": nodes, "restore_s": restore_s, "batch_sizes": batch_sizes, "weights_load_s": loaded_in, **device_fields()}


def run(workload: str, output_dir: Path | None, threads: int = DEFAULT_THREADS, attention: str | None = None) -> dict[str, object]:
    from foundry_trace.bench.results import Case, ResultsFile

    started = time.perf_counter()
    result = fit_costs(workload, threads, attention=attention)
    cases = [
        Case(name=f"split_every={r['split_every']}, every {r['every_nth_batch']}. batch size", graphs=r["graphs"], nodes=r["nodes"],
             restore_s=r["restore_s"], driver_cold_s=r["driver_cold_s"], restore_over_driver_cold=r["restore_s"] / r["driver_cold_s"])
        for r in result["runs"]
    ]
    results = ResultsFile.of_this_run(
        result["runs"][-1],  # a fresh cold child's (the first run may be the caller's)
        what="load",
        workload=f"{workload}-cost-fit" + (f"-{attention}-attention" if attention else ""),
        workload_desc=f"{workload} SAVEd {len(DESIGN)} ways (attention eager every k layers, all or every 4th batch size), "
        "each restored cold and built + instantiated cold by the driver alone, in fresh processes; least squares of time "
        "against graph and node counts",
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
        table.add_row(f"fit: {side}", f"{terms['per_graph_us']:.1f} us/graph", f"{terms['per_node_us']:.2f} us/node",
                      f"fixed {terms['fixed_s']:.3f} s", f"residuals {terms['residuals_ms']} ms", "")
    return table_text(table, width=140)


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    return child_cold(arguments.workload, arguments.archive, arguments.threads, parsed_options(arguments))


def _parser() -> argparse.ArgumentParser:
    return child_parser("a child process of `foundry bench fit` (and of the load bench's fit)", ("cold",))


if __name__ == "__main__":
    child_main(_run, _parser())

"""`foundry bench coverage`: Foundry on model code it did not write. For each covered workload —
transformers models (dense and MoE), a torch.compile'd step (Inductor's Triton kernels), a
two-stream step with event, memcpy and memset nodes, fused SDPA kernels — SAVE in one fresh
process, then restore in another and compare with a native capture there: outputs bit for bit,
replay latency, restore vs capture time, and whether the restore compiled anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

from foundry_trace.bench.load_bench import compared_case_fields, run_children, workload_label
from foundry_trace.errors import WorkloadError
from foundry_trace.restore.load import DEFAULT_THREADS

# A vLLM-like list of capture sizes, shortened so that every model runs in one device call
# (`foundry bench --workload hf-qwen3moe` runs vLLM's full 67).
COVERAGE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
COVERED: dict[str, dict[str, object]] = {
    "hf-llama8b": {"batch_sizes": COVERAGE_BATCHES},
    "hf-qwen3": {"batch_sizes": COVERAGE_BATCHES},
    "hf-qwen3moe": {"batch_sizes": COVERAGE_BATCHES},
    "compiled": {},
    "streams": {},
    "small/flash": {"attention": "flash"},
    "small/efficient": {"attention": "efficient"},
}


def covered(workload: str | None) -> list[str]:
    """The COVERED names of `workload`, a comma list (None: all); WorkloadError names any other."""
    names = workload.split(",") if workload else list(COVERED)
    unknown = [n for n in names if n not in COVERED]
    if unknown:
        raise WorkloadError(f"coverage covers {', '.join(COVERED)}; not {', '.join(unknown)}")
    return names


def run(workload: str | None, output_dir: Path | None, threads: int = DEFAULT_THREADS) -> dict[str, object]:
    """`workload`: a comma list of COVERED names (default: all)."""
    from foundry_trace.bench.results import Case, ResultsFile

    names = covered(workload)
    cases: list[Case] = []
    results: ResultsFile | None = None
    for name in names:
        options = COVERED[name]
        saved, loaded = run_children(name.split("/")[0], threads, full=False, **options)
        cases.append(Case(
            name=workload_label(name.split("/")[0], loaded["graphs"], options.get("attention")),
            description=loaded["description"],
            **compared_case_fields(saved, loaded),
            compiled_graphs_at_restore=loaded["compiled_graphs_at_restore"],
        ))
        print(f"coverage: {name} done ({len(cases)} of {len(names)})", file=sys.stderr, flush=True)
        results = ResultsFile.of_this_run(
            loaded,
            what="coverage",
            # the cases this file holds: a run cut short is named by what it measured
            workload="-".join(n.replace("/", "-") for n in names[: len(cases)]) if workload else f"all-{len(cases)}-cases",
            workload_desc="each case: SAVE in a fresh process, restore in another and compare with a native capture there",
            gpus=1, cases=cases,
        )
        if output_dir is not None:  # after every case: a run cut short keeps what it measured
            results.write(output_dir)
    return results.model_dump()


def render(results: dict[str, object]) -> str:
    from rich.table import Table

    from foundry_trace.bench.results import table_text

    table = Table(title=f"{results['device']}: restore vs native capture on model code Foundry did not write")
    for column in ("case", "graphs", "native s", "restore s", "speed-up", "= SAVE", "= native", "replay delta %", "compiled at restore"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for c in results["cases"]:
        deltas = " ".join(f"b{b}:{d:+.2f}" for b, d in c["replay_delta_pct"].items())
        table.add_row(
            c["name"], str(c["graphs"]), f"{c['native_s']:.2f}", f"{c['restore_s']:.3f}", f"{c['speedup']:.1f}x",
            "yes" if c["bitwise_equal_saved"] else f"no {c['mismatched_saved']}",
            "yes" if c["bitwise_equal"] else f"no {c['mismatched']}",
            deltas, str(c["compiled_graphs_at_restore"]),
        )
    return table_text(table, width=160)

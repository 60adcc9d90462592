"""`foundry bench save`: SAVE of a workload, with the archive's size and contents.

One fresh process (roles.py, save): the allocator, the tracer from the start, the engine, then
warm-up + capture of every batch size inside a recording; reports capture+SAVE time and what the
archive holds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def run(workload: str, output_dir: Path | None, archive: Path | None = None) -> dict[str, object]:
    """SAVEs the workload in a fresh process (the archive kept at `archive`, with its reference
    outputs, so that `foundry verify --archive` can check any later restore), then reads it as
    `foundry inspect` does."""
    from foundry_trace.archive.summary import summarize
    from foundry_trace.bench.results import Case, ResultsFile
    from foundry_trace.bench.roles import run_role

    with tempfile.TemporaryDirectory() as scratch:
        path = archive or Path(scratch) / f"{workload}.foundry"
        saved = run_role("save", workload, path)
        summary = summarize(path)
        save_s = saved["save_s"]
    truncated = [g["key"] for g in summary["graphs"] if g["nodes"] != g["driver_nodes"]]
    case = Case(
        name=workload,
        graphs=len(summary["graphs"]),
        nodes=summary["nodes"],
        archive_bytes=summary["archive_bytes"],
        save_s=save_s,
        templates=summary["templates"],
        kernels=len(summary["kernels"]),
        modules=len(summary["modules"]),
        module_bytes=summary["module_bytes"],
        loaded_module_bytes=summary["loaded_module_bytes"],
        table_bytes=summary["table_bytes"],
        payload_bytes=summary["payload_bytes"],
        memory_segments=summary["memory_segments"],
        graph_memory_bytes=summary["memory_bytes"],
        carried_memory_bytes=summary["carried_memory_bytes"],
        nodes_by_kind=summary["nodes_by_kind"],
        truncated_graphs=truncated,
    )
    results = ResultsFile.of_this_run(
        saved,
        what="save",
        workload=f"{workload}-{saved['graphs']}",
        workload_desc=f"{saved['description']}; SAVE of every graph (warm-up + capture inside foundry_trace.record)",
        gpus=1,
        cases=[case],
    )
    if output_dir is not None:
        results.write(output_dir)
    return results.model_dump()


def render(results: dict[str, object]) -> str:
    c = results["cases"][0]
    return (
        f"{results['device']} / {results['workload']}: {c['graphs']} graphs, {c['nodes']} nodes in {c['templates']} templates, "
        f"{c['kernels']} kernels from {c['modules']} modules\n"
        f"  archive {c['archive_bytes'] / 2**20:.1f} MiB (modules {c['module_bytes'] / 2**20:.1f} MiB of "
        f"{c['loaded_module_bytes'] / 2**20:.1f} MiB loaded, node tables {c['table_bytes'] / 2**20:.1f} MiB, payloads "
        f"{c['payload_bytes'] / 2**20:.1f} MiB, memory contents "
        f"{c['carried_memory_bytes'] / 2**20:.1f} MiB); warm-up + capture + SAVE {c['save_s']:.1f} s; "
        f"truncated graphs: {c['truncated_graphs'] or 'none'}"
    )

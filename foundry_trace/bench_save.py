"""`foundry bench save`: SAVE of the reference workload, with the archive's size and contents.

One process: the allocator, the tracer from the start, the model, then warm-up + capture of every
batch size inside a recording; reports capture+SAVE time and what the archive holds.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def run(workload: str, output_dir: Path | None, archive: Path | None = None) -> dict[str, object]:
    import foundry_alloc

    foundry_alloc.install()
    import foundry_trace
    from .results import Case, ResultsFile, command_line, driver_version, project_commit, today
    from .summary import summarize
    from .capture import capture_steps
    from .engines import build_engine
    from .workload import preset

    foundry_trace.start_tracing()
    import torch

    shape = preset(workload)
    model = build_engine(workload)
    with tempfile.TemporaryDirectory() as scratch:
        path = archive or Path(scratch) / f"{workload}.foundry"
        start = time.perf_counter()
        with foundry_trace.record(path) as recording:
            capture_steps(model, recording=recording)
        save_s = time.perf_counter() - start
        summary = summarize(path)
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
    results = ResultsFile(
        what="save",
        workload=f"{workload}-{len(shape.batch_sizes)}",
        workload_desc=f"{shape.describe()}; SAVE of every graph (warm-up + capture inside foundry_trace.record)",
        device=torch.cuda.get_device_name(),
        gpus=1,
        driver=driver_version(),
        cuda=torch.version.cuda,
        torch=torch.__version__,
        commit=project_commit(),
        date=today(),
        command=command_line(),
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

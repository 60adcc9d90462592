"""`foundry bench load`: native warm-up + capture vs Foundry restore, side by side on one GPU.

A child process SAVEs the reference workload; a second, fresh child rebuilds the engine state,
restores the archive (once with one instantiation thread, which gives the driver's own
instantiation time as the floor, then again with several, timed), captures the same graphs
natively in the same process, and compares outputs bit for bit and replay latency.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child_save(workload: str, archive: str) -> dict[str, object]:
    import foundry_alloc

    foundry_alloc.install()
    import foundry_trace

    from .workload import build_engine, capture_steps

    foundry_trace.start_tracing()
    model = build_engine(workload)
    with foundry_trace.record(archive) as recording:
        capture_steps(model, recording=recording)
    return {"archive_bytes": Path(archive).stat().st_size}


def child_load(workload: str, archive: str, threads: int) -> dict[str, object]:
    import foundry_alloc

    foundry_alloc.install()
    import torch

    import foundry_trace

    from .verify import compare
    from .workload import build_engine

    model = build_engine(workload)
    torch.cuda.synchronize()
    floor = foundry_trace.load(archive, threads=1)
    instantiate_floor_s = floor.phases["instantiate"]
    floor.release()
    start = time.perf_counter()
    restored = foundry_trace.load(archive, threads=threads)
    torch.cuda.synchronize()
    restore_s = time.perf_counter() - start
    result = compare(model, restored)
    result.update(
        restore_s=restore_s,
        phases=restored.phases,
        instantiate_floor_s=instantiate_floor_s,
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
    )
    return result


def _run_child(*arguments: str) -> dict[str, object]:
    completed = subprocess.run([sys.executable, "-m", "foundry_trace.bench_load", *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"bench load child {arguments[0]} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run(workload: str, output_dir: Path | None, threads: int = 4) -> dict[str, object]:
    from .results import Case, ResultsFile, command_line, driver_version, project_commit, today
    from .workload import preset

    shape = preset(workload)
    with tempfile.TemporaryDirectory() as scratch:
        archive = str(Path(scratch) / f"{workload}.foundry")
        print(f"foundry bench load: SAVE of {workload} ...", file=sys.stderr, flush=True)
        saved = _run_child("save", workload, archive)
        print("foundry bench load: restore and native capture, fresh process ...", file=sys.stderr, flush=True)
        loaded = _run_child("load", workload, archive, str(threads))
    case = Case(
        name=workload,
        graphs=loaded["graphs"],
        native_s=loaded["native_s"],
        restore_s=loaded["restore_s"],
        speedup=loaded["native_s"] / loaded["restore_s"],
        instantiate_floor_s=loaded["instantiate_floor_s"],
        restore_over_floor=loaded["restore_s"] / loaded["instantiate_floor_s"],
        first_graph_s=None,
        bitwise_equal=loaded["bitwise_equal"],
        mismatched=loaded["mismatched"],
        nondeterministic_native=loaded["nondeterministic_native"],
        replay_delta_pct={k: v["delta_pct"] for k, v in loaded["latency"].items()},
        replay_ms=loaded["latency"],
        archive_bytes=saved["archive_bytes"],
        phases_s=loaded["phases"],
        instantiate_threads=threads,
    )
    results = ResultsFile(
        what="load",
        workload=f"{workload}-{len(shape.batch_sizes)}",
        workload_desc=f"{shape.describe()}; every graph restored vs warm-up + capture + instantiate in the same fresh process",
        device=loaded["device"], gpus=1, driver=driver_version(), cuda=loaded["cuda"], torch=loaded["torch"],
        commit=project_commit(), date=today(), command=command_line(), cases=[case],
    )
    if output_dir is not None:
        results.write(output_dir)
    return results.model_dump()


def render(results: dict[str, object]) -> str:
    c = results["cases"][0]
    lines = [
        f"{results['device']} / {results['workload']}: {c['graphs']} graphs, archive {c['archive_bytes'] / 2**20:.1f} MiB",
        f"  native warm-up + capture + instantiate {c['native_s']:.2f} s; restore {c['restore_s']:.3f} s "
        f"({c['speedup']:.1f}x faster); driver instantiation alone {c['instantiate_floor_s']:.3f} s "
        f"(restore / floor {c['restore_over_floor']:.2f})",
        "  restore phases: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in c["phases_s"].items()),
        f"  bit-identical outputs: {c['bitwise_equal']} (mismatched {c['mismatched']}, native nondeterministic "
        f"{c['nondeterministic_native']})",
        "  replay latency: " + ", ".join(
            f"b={b}: {v['native_ms']:.3f} vs {v['restored_ms']:.3f} ms ({v['delta_pct']:+.2f} %)" for b, v in c["replay_ms"].items()
        ),
    ]
    return "\n".join(lines)


def _main() -> None:
    parser = argparse.ArgumentParser(description="child process of `foundry bench load`")
    parser.add_argument("role", choices=("save", "load"))
    parser.add_argument("workload")
    parser.add_argument("archive")
    parser.add_argument("threads", nargs="?", type=int, default=4)
    a = parser.parse_args()
    result = child_save(a.workload, a.archive) if a.role == "save" else child_load(a.workload, a.archive, a.threads)
    print(json.dumps(result))


if __name__ == "__main__":
    _main()

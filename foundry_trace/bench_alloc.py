"""`foundry bench alloc`: Foundry's allocator against PyTorch's caching allocator, side by side.

Each allocator runs in a child process of its own (an allocator is chosen once per process), one
after the other on the same GPU, with the same program:
1. the reference decode workload: weights, static KV cache, warm-up and capture of every batch
   size; the peak of device memory the allocator held (caching: max_memory_reserved; Foundry:
   peak mapped bytes) and the memory the device reports in use;
2. alloc+free cost on a serving-like size mix, through the raw allocator API and through tensors,
   in steady state (after the workload, as in a server).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZE_MIX = (512, 4096, 16384, 65536, 262144, 1 << 20, 2 << 20, 8 << 20, 32 << 20)
SEQUENCE = [SIZE_MIX[(i * 7) % len(SIZE_MIX)] for i in range(90)]  # sizes interleaved, same for both
WINDOW = 16  # live blocks in the windowed pattern
REPEATS = 21
ROUNDS = 40  # passes over SEQUENCE per repeat


def _median_ns(run_once) -> float:  # noqa: ANN001 - a callable timing one repeat
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        operations = run_once()
        samples.append((time.perf_counter_ns() - start) / operations)
    return statistics.median(samples)


def _alloc_free_costs(torch) -> dict[str, float]:  # noqa: ANN001
    """Median ns per alloc+free pair, for three patterns."""
    alloc, delete = torch.cuda.caching_allocator_alloc, torch.cuda.caching_allocator_delete
    stream = torch.cuda.current_stream()

    def pairs() -> int:
        for _ in range(ROUNDS):
            for size in SEQUENCE:
                delete(alloc(size, stream=stream))
        return ROUNDS * len(SEQUENCE)

    def window() -> int:
        live: list[int] = []
        for _ in range(ROUNDS):
            for size in SEQUENCE:
                live.append(alloc(size, stream=stream))
                if len(live) > WINDOW:
                    delete(live.pop(0))
        for pointer in live:
            delete(pointer)
        return ROUNDS * len(SEQUENCE)

    def tensors() -> int:
        for _ in range(ROUNDS):
            for size in SEQUENCE:
                tensor = torch.empty(size, dtype=torch.uint8, device="cuda")
                del tensor
        return ROUNDS * len(SEQUENCE)

    for pattern in (pairs, window, tensors):
        pattern()  # warm: every size mapped or cached once
    return {name: _median_ns(fn) for name, fn in (("raw_pairs", pairs), ("raw_window", window), ("tensor_pairs", tensors))}


def child(allocator: str, workload: str) -> dict[str, object]:
    """Runs in a fresh process: installs the allocator under test, then measures."""
    if allocator == "foundry":
        import foundry_alloc

        foundry_alloc.install()
    import torch

    from .capture import capture_steps
    from .workload import DecodeModel, preset

    shape = preset(workload)
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the context and PyTorch's own first allocation
    free_before, total = torch.cuda.mem_get_info()
    start = time.perf_counter()
    model = DecodeModel(shape)
    graphs = capture_steps(model)
    capture_s = time.perf_counter() - start
    tokens, positions = model.random_inputs(shape.max_batch, seed=1)
    model.set_inputs(tokens, positions)
    graphs[shape.max_batch].graph.replay()
    replayed = graphs[shape.max_batch].output.clone()
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info()
    if allocator == "foundry":
        import foundry_alloc

        stats = foundry_alloc.stats()
        peak, held = stats.peak_mapped_bytes, stats.mapped_bytes
    else:
        peak, held = torch.cuda.max_memory_reserved(), torch.cuda.memory_reserved()
    result = {
        "allocator": allocator,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "graphs": len(graphs),
        "capture_s": capture_s,
        "peak_bytes": peak,
        "held_bytes": held,
        "device_used_bytes": free_before - free_after,
        "device_total_bytes": total,
        "replay_finite": bool(torch.isfinite(replayed).all()),
        "alloc_free_ns": _alloc_free_costs(torch),
    }
    del graphs, model
    return result


def run(workload: str, output_dir: Path | None, progress: bool = True) -> dict[str, object]:
    """Runs both children and returns (and optionally writes) the results file."""
    from .results import Case, ResultsFile, command_line, driver_version, project_commit, today
    from .workload import preset

    measured: dict[str, dict] = {}
    for allocator in ("caching", "foundry"):
        if progress:
            print(f"foundry bench alloc: {allocator} allocator, workload {workload} ...", file=sys.stderr, flush=True)
        completed = subprocess.run(
            [sys.executable, "-m", "foundry_trace.bench_alloc", "--child", allocator, "--workload", workload],
            capture_output=True,
            text=True,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"the {allocator} run failed:\n{completed.stderr[-4000:]}")
        measured[allocator] = json.loads(completed.stdout.strip().splitlines()[-1])
    caching, foundry = measured["caching"], measured["foundry"]
    shape = preset(workload)
    cost_ratio = {k: foundry["alloc_free_ns"][k] / caching["alloc_free_ns"][k] for k in caching["alloc_free_ns"]}
    case = Case(
        name=workload,
        graphs=foundry["graphs"],
        peak_ratio=foundry["peak_bytes"] / caching["peak_bytes"],
        peak_bytes={"caching": caching["peak_bytes"], "foundry": foundry["peak_bytes"]},
        device_used_bytes={"caching": caching["device_used_bytes"], "foundry": foundry["device_used_bytes"]},
        device_used_ratio=foundry["device_used_bytes"] / caching["device_used_bytes"],
        alloc_free_ns={"caching": caching["alloc_free_ns"], "foundry": foundry["alloc_free_ns"]},
        alloc_free_ratio=cost_ratio,
        capture_s={"caching": caching["capture_s"], "foundry": foundry["capture_s"]},
        replay_finite=caching["replay_finite"] and foundry["replay_finite"],
    )
    results = ResultsFile(
        what="alloc",
        workload=f"{workload}-{len(shape.batch_sizes)}",
        workload_desc=f"{shape.describe()}, captured into one pool; alloc+free over sizes {list(SIZE_MIX)}",
        device=foundry["device"],
        gpus=1,
        driver=driver_version(),
        cuda=foundry["cuda"],
        torch=foundry["torch"],
        commit=project_commit(),
        date=today(),
        command=command_line(),
        cases=[case],
    )
    if output_dir is not None:
        path = results.write(output_dir)
        if progress:
            print(f"foundry bench alloc: wrote {path}", file=sys.stderr)
    return results.model_dump()


def render(results: dict[str, object]) -> str:
    """The table `foundry bench alloc` prints."""
    case = results["cases"][0]
    lines = [f"{results['device']} / torch {results['torch']} / {results['workload']}"]
    lines.append(f"{'':28}{'caching':>14}{'foundry':>14}{'ratio':>8}")
    for key in ("peak_bytes", "device_used_bytes"):
        c, f = case[key]["caching"], case[key]["foundry"]
        lines.append(f"{key.replace('_', ' '):28}{c / 2**30:>11.2f} GiB{f / 2**30:>10.2f} GiB{f / c:>8.3f}")
    for pattern, ratio in case["alloc_free_ratio"].items():
        c, f = case["alloc_free_ns"]["caching"][pattern], case["alloc_free_ns"]["foundry"][pattern]
        lines.append(f"{'alloc+free ' + pattern:28}{c:>11.0f} ns{f:>11.0f} ns{ratio:>8.3f}")
    return "\n".join(lines)


def _main() -> None:
    parser = argparse.ArgumentParser(description="child process of `foundry bench alloc`")
    parser.add_argument("--child", choices=("caching", "foundry"), required=True)
    parser.add_argument("--workload", required=True)
    arguments = parser.parse_args()
    print(json.dumps(child(arguments.child, arguments.workload)))


if __name__ == "__main__":
    _main()

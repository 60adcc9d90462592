"""`foundry bench alloc`: Foundry's allocator against PyTorch's caching allocator, side by side.

Backend cuda (the default): each allocator runs in a child process of its own (an allocator is
chosen once per process), one after the other on the same GPU, with the same program:
1. the reference decode workload: weights, static KV cache, warm-up and capture of every batch
   size; the peak of device memory the allocator held (caching: max_memory_reserved; Foundry:
   peak mapped bytes) and the memory the device reports in use;
2. alloc+free cost on a serving-like size mix, through the raw allocator API and through tensors,
   in steady state (after the workload, as in a server).

Backend host: the same placement code on the host backend that simulates the driver, no GPU
needed: two fresh processes run the raw patterns and a fixed request sequence; the alloc+free
cost of the placement code alone, and whether both processes placed every block alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from foundry_trace.bench.children import child_main, run_child
from foundry_trace.bench.results import device_fields

MODULE = "foundry_trace.bench.alloc_bench"
HOST_SPACE = (0x200000000000, 8 << 30)  # base and size of the host backend's range
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


def _raw_patterns(alloc: Callable[[int], int], delete: Callable[[int], None]) -> dict[str, Callable[[], int]]:
    """The raw allocator patterns: alloc+free pairs, and a window of WINDOW live blocks."""

    def pairs() -> int:
        for _ in range(ROUNDS):
            for size in SEQUENCE:
                delete(alloc(size))
        return ROUNDS * len(SEQUENCE)

    def window() -> int:
        live: list[int] = []
        for _ in range(ROUNDS):
            for size in SEQUENCE:
                live.append(alloc(size))
                if len(live) > WINDOW:
                    delete(live.pop(0))
        for pointer in live:
            delete(pointer)
        return ROUNDS * len(SEQUENCE)

    return {"raw_pairs": pairs, "raw_window": window}


def _alloc_free_costs(torch) -> dict[str, float]:  # noqa: ANN001
    """Median ns per alloc+free pair, for three patterns."""
    stream = torch.cuda.current_stream()
    patterns = _raw_patterns(
        lambda size: torch.cuda.caching_allocator_alloc(size, stream=stream), torch.cuda.caching_allocator_delete
    )

    def tensors() -> int:
        for _ in range(ROUNDS):
            for size in SEQUENCE:
                tensor = torch.empty(size, dtype=torch.uint8, device="cuda")
                del tensor
        return ROUNDS * len(SEQUENCE)

    patterns["tensor_pairs"] = tensors
    for pattern in patterns.values():
        pattern()  # warm: every size mapped or cached once
    return {name: _median_ns(pattern) for name, pattern in patterns.items()}


def host_child() -> dict[str, object]:
    """The placement code on the host backend: its alloc+free cost, and the layout a fixed
    sequence of requests leaves (equal in every process if placement is deterministic)."""
    import foundry_alloc

    allocator = foundry_alloc.NativeAllocator.simulated(*HOST_SPACE)
    try:
        patterns = _raw_patterns(allocator.allocate, allocator.free)
        for pattern in patterns.values():
            pattern()
        costs = {name: _median_ns(pattern) for name, pattern in patterns.items()}
        kept = [allocator.allocate(size) for size in SEQUENCE]
        for address in kept[::3]:
            allocator.free(address)
        for size in reversed(SEQUENCE[:30]):
            allocator.allocate(size)
        layout = allocator.layout()
        return {"alloc_free_ns": costs, "fingerprint": layout.fingerprint(), "live_blocks": len(layout.allocations), **device_fields()}
    finally:
        allocator.close()


def run_host(workload: str, output_dir: Path | None) -> dict[str, object]:
    """Two fresh processes on the host backend: the cost of placement, and its determinism."""
    from foundry_trace.bench.results import Case, ResultsFile

    first, second = (run_child(MODULE, ["--child", "host", "--workload", workload]) for _ in range(2))
    case = Case(
        name="host-placement", alloc_free_ns={"foundry": first["alloc_free_ns"]}, alloc_free_ns_second_process=second["alloc_free_ns"],
        live_blocks=first["live_blocks"], same_layout_in_two_processes=first["fingerprint"] == second["fingerprint"],
        fingerprints=[first["fingerprint"], second["fingerprint"]],
    )
    results = ResultsFile.of_this_run(
        first, what="alloc", workload="host-placement",
        workload_desc=f"the placement code on the host backend (no GPU, a simulated driver): alloc+free over sizes {list(SIZE_MIX)}, "
        "then a fixed request sequence whose layout is compared between two fresh processes",
        gpus=0, cases=[case],
    )
    if output_dir is not None:
        results.write(output_dir)
    return results.model_dump()


def child(allocator: str, workload: str) -> dict[str, object]:
    """Runs in a fresh process: installs the allocator under test, then measures."""
    if allocator == "foundry":
        import foundry_alloc

        foundry_alloc.install()
    import torch

    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.workloads.decode import DecodeEngine, preset

    shape = preset(workload)
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the context and PyTorch's own first allocation
    free_before, total = torch.cuda.mem_get_info()
    start = time.perf_counter()
    model = DecodeEngine(shape)
    graphs = capture_steps(model)
    capture_s = time.perf_counter() - start
    tokens, positions = model.random_inputs(shape.max_batch, seed=1)
    model.set_inputs(tokens, positions)
    graphs[shape.max_batch].replay()
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
        **device_fields(),
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


def run(workload: str, output_dir: Path | None, backend: str = "cuda", progress: bool = True) -> dict[str, object]:
    """Runs both children and returns (and optionally writes) the results file."""
    if backend == "host":
        return run_host(workload, output_dir)
    from foundry_trace.bench.results import Case, ResultsFile
    from foundry_trace.bench.workloads.decode import preset

    shape = preset(workload)
    measured: dict[str, dict] = {}
    for allocator in ("caching", "foundry"):
        if progress:
            print(f"foundry bench alloc: {allocator} allocator, workload {workload} ...", file=sys.stderr, flush=True)
        measured[allocator] = run_child(MODULE, ["--child", allocator, "--workload", workload])
    caching, foundry = measured["caching"], measured["foundry"]
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
    results = ResultsFile.of_this_run(
        foundry,
        what="alloc",
        workload=f"{workload}-{len(shape.batch_sizes)}",
        workload_desc=f"{shape.describe()}, captured into one pool; alloc+free over sizes {list(SIZE_MIX)}",
        gpus=1,
        cases=[case],
    )
    if output_dir is not None:
        results.write(output_dir)
    return results.model_dump()


def render(results: dict[str, object]) -> str:
    """The table `foundry bench alloc` prints."""
    case = results["cases"][0]
    if results["gpus"] == 0:
        costs = ", ".join(f"{name} {ns:.0f} ns" for name, ns in case["alloc_free_ns"]["foundry"].items())
        return (
            f"{results['device']} / {results['workload']}: alloc+free {costs}; {case['live_blocks']} live blocks placed alike "
            f"in two fresh processes: {case['same_layout_in_two_processes']}"
        )
    lines = [f"{results['device']} / torch {results['torch']} / {results['workload']}"]
    lines.append(f"{'':28}{'caching':>14}{'foundry':>14}{'ratio':>8}")
    for key in ("peak_bytes", "device_used_bytes"):
        c, f = case[key]["caching"], case[key]["foundry"]
        lines.append(f"{key.replace('_', ' '):28}{c / 2**30:>11.2f} GiB{f / 2**30:>10.2f} GiB{f / c:>8.3f}")
    for pattern, ratio in case["alloc_free_ratio"].items():
        c, f = case["alloc_free_ns"]["caching"][pattern], case["alloc_free_ns"]["foundry"][pattern]
        lines.append(f"{'alloc+free ' + pattern:28}{c:>11.0f} ns{f:>11.0f} ns{ratio:>8.3f}")
    return "\n".join(lines)


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    return host_child() if arguments.child == "host" else child(arguments.child, arguments.workload)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="a child process of `foundry bench alloc`")
    parser.add_argument("--child", choices=("caching", "foundry", "host"), required=True)
    parser.add_argument("--workload", required=True)
    return parser


if __name__ == "__main__":
    child_main(_run, _parser())

"""Restored graphs against native ones, in one process: outputs bit for bit, replay latency.

Used by `foundry verify`, `foundry bench load` and the GPU tests. The caller has built the model
and restored the archive; this captures the native graphs itself (timed: warm-up + capture +
instantiate), then replays both on the same inputs.
"""

from __future__ import annotations

import time

import torch

from .restore import Restored
from .workload import DecodeModel, capture_steps


def replay_latency_ms(replay, repeats: int = 50) -> float:  # noqa: ANN001 - a callable
    """Median latency of one replay, timed with CUDA events."""
    for _ in range(5):
        replay()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    samples.sort()
    return samples[len(samples) // 2]


def compare(model: DecodeModel, restored: Restored, latency_batches: tuple[int, ...] = (1, 64, 256)) -> dict[str, object]:
    sizes = sorted(int(k) for k in restored.graphs)
    torch.cuda.synchronize()
    start = time.perf_counter()
    native = capture_steps(model, sizes)
    native_s = time.perf_counter() - start
    mismatched, nondeterministic = [], []
    for batch in sizes:
        tokens, positions = model.random_inputs(batch, seed=1000 + batch)
        results = []
        for run in (lambda: native[batch].graph.replay(), lambda: native[batch].graph.replay(), restored[batch].replay):
            model.kv_cache.zero_()
            model.set_inputs(tokens, positions)
            run()
            torch.cuda.synchronize()
            output = native[batch].output if len(results) < 2 else restored[batch].outputs["logits"]
            results.append(output.clone())
        if not torch.equal(results[0], results[1]):
            nondeterministic.append(batch)
        elif not torch.equal(results[0], results[2]):
            mismatched.append(batch)
    latency = {}
    for batch in (b for b in latency_batches if b in native):
        native_ms = replay_latency_ms(native[batch].graph.replay)
        restored_ms = replay_latency_ms(restored[batch].replay)
        latency[str(batch)] = {"native_ms": native_ms, "restored_ms": restored_ms, "delta_pct": 100 * (restored_ms / native_ms - 1)}
    return {
        "native_s": native_s,
        "graphs": len(sizes),
        "bitwise_equal": not mismatched,
        "mismatched": mismatched,
        "nondeterministic_native": nondeterministic,
        "latency": latency,
    }

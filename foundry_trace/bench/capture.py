"""Native capture of an engine's decode steps, one CUDA graph per batch size, the way vLLM does it:
largest batch first, one warm-up each, all graphs in one shared memory pool."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from foundry_alloc.profiling import annotate
from foundry_trace.bench.workloads.registry import Engine


@dataclass
class CapturedStep:
    batch: int
    graph: torch.cuda.CUDAGraph
    output: torch.Tensor  # logits written by every replay


def capture_steps(
    engine: Engine, batch_sizes: Iterable[int] | None = None, *, warmups: int = 1, recording=None  # noqa: ANN001
) -> dict[int, CapturedStep]:
    """Warm-up and capture one graph per batch size. With a foundry_trace Recording, each graph is
    saved under its batch size, with its logits."""
    sizes: Sequence[int] = sorted(batch_sizes if batch_sizes is not None else engine.batch_sizes, reverse=True)
    pool = torch.cuda.graph_pool_handle()
    captured: dict[int, CapturedStep] = {}
    for batch in sizes:
        with annotate(f"workload.capture b={batch}"):
            for _ in range(warmups):
                engine.step(batch)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with recording.key(batch) if recording is not None else contextlib.nullcontext():
                with torch.cuda.graph(graph, pool=pool):
                    output = engine.step(batch)
            if recording is not None:
                recording.add_output(batch, "logits", output)
            captured[batch] = CapturedStep(batch, graph, output)
    torch.cuda.synchronize()
    return captured

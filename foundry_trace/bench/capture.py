"""Native capture of an engine's decode steps, the way vLLM does it: largest batch first, one
warm-up each, all graphs in one shared memory pool. A step is one graph per batch size
(OneGraphPerStep, most engines), or several pieces with eager work between them
(workloads/piecewise.py): each engine says how it captures a step and how it replays one from
a restored archive."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from foundry_alloc.profiling import annotate

if TYPE_CHECKING:
    from foundry_trace.bench.workloads.registry import Engine
    from foundry_trace.restore import Restored
    from foundry_trace.save.recording import Recording

OUTPUT_NAME = "logits"  # the output every workload's step declares


@dataclass
class CapturedStep:
    batch: int
    graphs: list[torch.cuda.CUDAGraph]
    output: torch.Tensor  # the logits every replay of the step writes
    replay: Callable[[], None]  # the whole step: every graph, and any eager work between them
    output_key: str  # the graph whose declared output is the step's (add_output's key)


class OneGraphPerStep:
    """A step captured as one graph under the key of its batch size, its logits the output."""

    def capture_step(self, batch: int, pool: object, recording: Recording | None = None) -> CapturedStep:
        graph = torch.cuda.CUDAGraph()
        with recording.key(batch) if recording is not None else contextlib.nullcontext():
            with torch.cuda.graph(graph, pool=pool):
                output = self.step(batch)  # type: ignore[attr-defined]
        if recording is not None:
            recording.add_output(batch, OUTPUT_NAME, output)
        return CapturedStep(batch, [graph], output, graph.replay, str(batch))

    def restored_step(self, restored: Restored, batch: int) -> tuple[Callable[[], None], torch.Tensor]:
        """The step of `batch` from restored graphs: its replay, and its output's view."""
        graph = restored[batch]
        return graph.replay, graph.outputs[OUTPUT_NAME]


def capture_steps(
    engine: Engine, batch_sizes: Iterable[int] | None = None, *, warmups: int = 1, recording: Recording | None = None
) -> dict[int, CapturedStep]:
    """Warm-up and capture each batch size's step. With a foundry_trace Recording, its graphs are
    saved under their keys, with the step's logits declared as an output."""
    sizes: Sequence[int] = sorted(batch_sizes if batch_sizes is not None else engine.batch_sizes, reverse=True)
    pool = torch.cuda.graph_pool_handle()
    captured: dict[int, CapturedStep] = {}
    for batch in sizes:
        with annotate(f"workload.capture b={batch}"):
            for _ in range(warmups):
                engine.step(batch)
            torch.cuda.synchronize()
            captured[batch] = engine.capture_step(batch, pool, recording)
    torch.cuda.synchronize()
    return captured

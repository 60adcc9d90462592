"""The reference decode step compiled by torch.compile (Inductor: fused Triton kernels, loaded by
Triton's JIT), its compiled forward captured into CUDA graphs by hand, as vLLM does.

The engine's own warm-up step before the restore point runs eagerly, so that a process which
restores the graphs never calls the compiled function: nothing is traced, compiled or JIT-loaded
there (the GPU tests check dynamo's counters). Compilation happens in SAVE, at the first capture.
"""

from __future__ import annotations

import torch

from foundry_trace.bench.workloads.decode import DecodeEngine, shape_of


class CompiledDecodeEngine(DecodeEngine):
    def __init__(
        self, *, preset: str = "small", attention: str = "math", layers: int | None = None,
        batch_sizes: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(shape_of(preset, layers, batch_sizes), attention=attention)
        # One compilation for every batch size (the batch is symbolic), as vLLM compiles.
        self._compiled = torch.compile(super().step, dynamic=True, fullgraph=True)

    def describe(self) -> str:
        return f"torch.compile (Inductor) of the {super().describe()}"

    def warm_up(self) -> None:
        super().step(1)  # eager: the restoring process must not compile

    def step(self, batch: int) -> torch.Tensor:
        return self._compiled(batch)

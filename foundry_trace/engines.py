"""The workloads that `foundry bench`, `foundry verify` and the GPU tests run, by name.

An engine is what a serving engine is to Foundry: state built before the restore point (weights,
KV cache, static inputs, one eager step so that libraries make their workspaces), and a decode
step per batch size that is captured into a CUDA graph. This module imports no torch: the CLI
lists the names without paying for it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

# SDPA kernels a workload's attention may be pinned to. "default" is torch's choice (cuDNN's fused
# attention on Hopper, not bitwise reproducible for batches of 24 and more); math, flash and
# efficient (memory-efficient) are reproducible.
ATTENTION_CHOICES = ("default", "math", "flash", "efficient")


class Engine(Protocol):
    batch_sizes: tuple[int, ...]

    def warm_up(self) -> None:
        """The engine's own eager step before the restore point (libraries allocate here)."""

    def step(self, batch: int) -> torch.Tensor:
        """One decode step on the static inputs of the first `batch` sequences; returns logits."""

    def prepare(self, batch: int, seed: int) -> None:
        """A clean state (KV cache zeroed) and seeded inputs, so that equal graphs give equal outputs."""

    def describe(self) -> str:
        """One line for results files."""


@dataclass(frozen=True)
class Workload:
    module: str  # within foundry_trace
    factory: str
    summary: str
    options: dict[str, object] = field(default_factory=dict)


WORKLOADS: dict[str, Workload] = {
    "tiny": Workload("workload", "decode_model", "Llama-style decode step, 2 small layers, 4 batch sizes", {"preset": "tiny"}),
    "small": Workload("workload", "decode_model", "Llama-style decode step, 4 layers, 7 batch sizes", {"preset": "small"}),
    "llama8b": Workload(
        "workload", "decode_model", "Llama-3-8B-shaped decode step, vLLM's 67 batch sizes", {"preset": "llama8b"}
    ),
    "hf-llama8b": Workload(
        "hf_engine", "HFEngine", "transformers LlamaForCausalLM, Llama-3-8B config, random weights", {"model": "llama8b"}
    ),
    "hf-qwen3": Workload("hf_engine", "HFEngine", "transformers Qwen3ForCausalLM, Qwen3-4B config, random weights", {"model": "qwen3"}),
    "hf-qwen3moe": Workload(
        "hf_engine", "HFEngine",
        "transformers Qwen3MoeForCausalLM, Qwen3-30B-A3B config (24 of 48 layers on one H100), random weights",
        {"model": "qwen3moe"},
    ),
    "compiled": Workload(
        "compiled_engine", "CompiledDecodeModel", "the small decode step compiled by torch.compile (Inductor, Triton)"
    ),
    "streams": Workload(
        "streams_engine", "StreamsModel", "two streams forked and joined (event record/wait nodes), memcpy and memset nodes"
    ),
}


def workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}") from None


def make_engine(name: str, **options: object) -> Engine:
    """The engine's state (weights, caches, static inputs), before its first step.
    Options: attention (ATTENTION_CHOICES), layers, batch_sizes (each engine takes what applies),
    communicator (tensor parallelism, collectives.Communicator: the Llama-style workloads)."""
    chosen = workload(name)
    attention = options.get("attention", "default")
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention {attention!r}: choose one of {', '.join(ATTENTION_CHOICES)}")
    if options.get("communicator") is not None and chosen.module != "workload":
        raise ValueError(f"tensor parallelism: workload {name!r} has none; use tiny, small or llama8b")
    factory = getattr(importlib.import_module(f"foundry_trace.{chosen.module}"), chosen.factory)
    return factory(**chosen.options, **{k: v for k, v in options.items() if v is not None})


def build_engine(name: str, **options: object) -> Engine:
    """The engine state that SAVE and LOAD both rebuild up to the restore point: make_engine() and
    one eager step, so that libraries allocate their lasting workspaces (cuBLAS: per stream, at
    the first matmul) here, in the same arena in every run."""
    engine = make_engine(name, **options)
    engine.warm_up()
    return engine

"""The workloads that `foundry bench`, `foundry verify` and the GPU tests run, by name.

An engine is what a serving engine is to Foundry: state built before the restore point (weights,
KV cache, static inputs, one eager step so that libraries make their workspaces), and a decode
step per batch size that is captured into a CUDA graph. This module imports no torch: the CLI
lists the names without paying for it.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from foundry_trace.errors import WorkloadError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from foundry_trace.bench.capture import CapturedStep
    from foundry_trace.restore import Restored
    from foundry_trace.save.recording import Recording

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

    def capture_step(self, batch: int, pool: object, recording: Recording | None = None) -> CapturedStep:
        """Captures the step of `batch` (its graphs saved under their keys with a recording)."""

    def restored_step(self, restored: Restored, batch: int) -> tuple[Callable[[], None], torch.Tensor]:
        """The step of `batch` from restored graphs: its replay, and a view of its output."""


@dataclass(frozen=True)
class Workload:
    module: str  # within foundry_trace.bench.workloads
    factory: str
    summary: str
    options: dict[str, object] = field(default_factory=dict)
    # A whole model's shape (tens of GB of weights on one GPU): the load bench writes its weights
    # once as a checkpoint that every child loads from disk, and spends fewer replays and no
    # thread sweeps on it (verify.WHOLE_MODEL), so that it runs within one 10-minute device call;
    # its comparisons capture natively one batch size at a time (verify.compare's batch_by_batch),
    # so that beside the restored graphs' pool they hold one step's, not a second pool (on an H100,
    # the few GiB between fitting and not).
    large: bool = False


WORKLOADS: dict[str, Workload] = {
    "tiny": Workload("decode", "decode_engine", "Llama-style decode step, 2 small layers, 4 batch sizes", {"preset": "tiny"}),
    "small": Workload("decode", "decode_engine", "Llama-style decode step, 4 layers, 7 batch sizes", {"preset": "small"}),
    "llama8b": Workload(
        "decode", "decode_engine", "Llama-3-8B-shaped decode step, vLLM's 67 batch sizes", {"preset": "llama8b"}
    ),
    "hf-llama8b": Workload(
        "transformers_models", "TransformersEngine", "transformers LlamaForCausalLM, Llama-3-8B config, random weights", {"model": "llama8b"}
    ),
    "hf-qwen3": Workload("transformers_models", "TransformersEngine", "transformers Qwen3ForCausalLM, Qwen3-4B config, random weights", {"model": "qwen3"}),
    "hf-qwen3moe": Workload(
        "transformers_models", "TransformersEngine",
        "transformers Qwen3MoeForCausalLM, Qwen3-30B-A3B config (24 of 48 layers on one H100), random weights",
        {"model": "qwen3moe"},
    ),
    "qwen3-235b-rank": Workload(
        "transformers_models", "TransformersEngine",
        "transformers Qwen3MoeForCausalLM as one rank of Qwen3-235B-A22B under EP8/TP8 (94 layers, 16 of 128 experts, top-8, "
        "8 query heads, 1 KV head, 61 GB), weights loaded from a safetensors checkpoint",
        {"model": "qwen3-235b-rank"}, large=True,
    ),
    "compiled": Workload(
        "compiled", "CompiledDecodeEngine", "the small decode step compiled by torch.compile (Inductor, Triton)"
    ),
    "streams": Workload(
        "streams", "StreamsEngine", "two streams forked and joined (event record/wait nodes), memcpy and memset nodes"
    ),
    "piecewise": Workload(
        "piecewise", "PiecewiseEngine",
        "vLLM's piecewise capture: the Llama-3-8B-shaped step cut at every attention, 33 pieces x 67 batch sizes (2,211 graphs)",
    ),
    "piecewise-compiled": Workload(
        "piecewise", "PiecewiseEngine", "the piecewise capture with each piece through torch.compile (Inductor, Triton)",
        {"compiled": True},
    ),
}


def workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise WorkloadError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}") from None


def splits_steps(name: str) -> bool:
    """Whether the workload cuts its step into pieces (takes split_every)."""
    return workload(name).module == "piecewise"


def takes_checkpoint(name: str) -> bool:
    """Whether the workload's engine can load its weights from a checkpoint (transformers models)."""
    return workload(name).module == "transformers_models"


def require_checkpoint_support(name: str) -> None:
    """Raises WorkloadError unless the workload's engine can load its weights from a checkpoint."""
    if not takes_checkpoint(name):
        raise WorkloadError(f"checkpoint: workload {name!r} draws its weights in place; the transformers workloads load them from one")


def weights_load_s(engine: Engine) -> float | None:
    """Seconds the engine took to load its weights from disk; None for an engine that drew them
    in place (every engine but a transformers model given a checkpoint)."""
    return getattr(engine, "weights_load_s", None)


def write_checkpoint(name: str, folder: Path, **options: object) -> dict[str, object]:
    """Writes workload `name`'s random weights into `folder` as a checkpoint that its engine
    loads with checkpoint=folder (reused where one of the same model is there); what the
    results file says of it (workloads/checkpoint.py). Options: layers."""
    chosen = workload(name)
    require_checkpoint_support(name)
    module = importlib.import_module(f"foundry_trace.bench.workloads.{chosen.module}")
    return module.write_checkpoint(Path(folder), **chosen.options, **{k: v for k, v in options.items() if v is not None})


def require_decode(name: str, bench: str) -> None:
    """Raises WorkloadError unless the workload is a Llama-style decode engine (what `foundry
    bench <bench>` builds shapes and ranks of)."""
    if workload(name).module != "decode":
        raise WorkloadError(f"foundry bench {bench} runs the Llama-style decode workloads (tiny, small, llama8b), not {name!r}")


def require_pieces(name: str) -> None:
    """Raises WorkloadError unless the workload cuts its steps into pieces (what the cost fit varies)."""
    if not splits_steps(name):
        raise WorkloadError(f"{name} does not cut its steps into pieces: the fit needs a piecewise workload (piecewise, piecewise-compiled)")


def make_engine(name: str, **options: object) -> Engine:
    """The engine's state (weights, caches, static inputs), before its first step.
    Options: attention (ATTENTION_CHOICES), layers, batch_sizes, split_every (each engine takes what applies),
    communicator (tensor parallelism, collectives.Communicator: the Llama-style workloads),
    checkpoint (a folder of write_checkpoint(): the transformers workloads load their weights from it)."""
    chosen = workload(name)
    attention = options.get("attention", "default")
    if attention not in ATTENTION_CHOICES:
        raise WorkloadError(f"attention {attention!r}: choose one of {', '.join(ATTENTION_CHOICES)}")
    if options.get("checkpoint") is not None:
        require_checkpoint_support(name)
    if options.get("communicator") is not None and chosen.module != "decode":
        raise WorkloadError(f"tensor parallelism: workload {name!r} has none; use tiny, small or llama8b")
    factory = getattr(importlib.import_module(f"foundry_trace.bench.workloads.{chosen.module}"), chosen.factory)
    return factory(**chosen.options, **{k: v for k, v in options.items() if v is not None})


def build_engine(name: str, **options: object) -> Engine:
    """The engine state that SAVE and LOAD both rebuild up to the restore point: make_engine() and
    one eager step, so that libraries allocate their lasting workspaces (cuBLAS: per stream, at
    the first matmul) here, in the same arena in every run."""
    engine = make_engine(name, **options)
    engine.warm_up()
    return engine


# Archive metadata the bench's SAVE writes, so that `foundry verify --archive` rebuilds the engine.
METADATA_WORKLOAD = "foundry.bench.workload"
METADATA_OPTIONS = "foundry.bench.options"


def workload_metadata(name: str, options: dict[str, object]) -> dict[str, str]:
    """What an archive records of the workload that wrote it (engine options that are plain values)."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items() if isinstance(v, (str, int, float, bool, tuple, list))}
    return {METADATA_WORKLOAD: name, METADATA_OPTIONS: json.dumps(plain, sort_keys=True)}


def workload_of(metadata: dict[str, str]) -> tuple[str, dict[str, object]] | None:
    """The workload and options an archive's metadata names, or None (not written by the bench)."""
    name = metadata.get(METADATA_WORKLOAD)
    if name is None:
        return None
    options = json.loads(metadata.get(METADATA_OPTIONS, "{}"))
    if "batch_sizes" in options:
        options["batch_sizes"] = tuple(options["batch_sizes"])
    return name, options

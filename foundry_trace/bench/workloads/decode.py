"""The reference workload: a Llama-style decode step with a static KV cache, captured into one CUDA
graph per batch size the way vLLM does it (registry.py lists it with the others).

Shapes are those of real models (llama8b is Llama-3-8B: 32 layers, GQA 32/8, SwiGLU 14336,
vocabulary 128256); weights are random, which changes nothing for graphs and memory layout.

With a communicator of N ranks the step is one rank's share of tensor parallelism, as Megatron
and vLLM split it: the QKV and gate/up projections by columns (heads and intermediate size / N),
the output and down projections by rows, each followed by an all-reduce. The embedding is
replicated; the LM head is vocabulary-parallel, as vLLM's: rank r holds rows r * vocab / N to
(r + 1) * vocab / N of the one head every rank would otherwise replicate, and its step returns
the logits of those words only. That shard is what each graph keeps alive as its output: with a
replicated head, every rank's graph pool held every batch size's float32 logits over the whole
vocabulary (7.95 GiB at the 67 llama8b batch sizes), which kept 8 ranks off one GPU
(docs/tensor-parallelism.md, "Memory per rank"). The shards are not gathered: no collective is
added, and each rank's shard is compared with its own native capture, so every logit is
compared on exactly one rank.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from foundry_alloc.profiling import annotate
from foundry_trace.bench.capture import OneGraphPerStep
from foundry_trace.bench.workloads.registry import ATTENTION_CHOICES

if TYPE_CHECKING:
    from foundry_trace.parallel.collectives import Communicator

VLLM_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, *range(8, 513, 8))  # vLLM's default capture sizes (67)


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    context: int  # tokens the static KV cache holds per sequence
    batch_sizes: tuple[int, ...]
    head_dim: int = 0  # 0: hidden // heads (kept when tensor parallelism divides the heads)

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes)

    def describe(self) -> str:
        """One line for results files."""
        return (
            f"Llama-style decode step, {self.layers} layers, hidden {self.hidden}, {self.parameter_count() / 1e9:.2f} B "
            f"bf16 parameters, static KV cache of {self.context} tokens x batch {self.max_batch}, "
            f"{len(self.batch_sizes)} batch sizes"
        )

    def parameter_count(self) -> int:
        kv = self.kv_heads * self.head_dim
        per_layer = self.hidden * (self.hidden + 2 * kv) + self.hidden * self.hidden + 3 * self.hidden * self.intermediate
        return self.layers * (per_layer + 2 * self.hidden) + 2 * self.vocab * self.hidden + self.hidden


PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(
        layers=2, hidden=256, heads=4, kv_heads=2, intermediate=512, vocab=1024, context=64, batch_sizes=(1, 2, 4, 8)
    ),
    "small": ModelShape(
        layers=4, hidden=1024, heads=8, kv_heads=4, intermediate=2816, vocab=8192, context=128,
        batch_sizes=(1, 2, 4, 8, 16, 32, 64),
    ),
    "llama8b": ModelShape(
        layers=32, hidden=4096, heads=32, kv_heads=8, intermediate=14336, vocab=128256, context=256,
        batch_sizes=VLLM_BATCH_SIZES,
    ),
}


def preset(name: str) -> ModelShape:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(PRESETS)}") from None


class DecodeEngine(OneGraphPerStep):
    """Weights, static KV cache and static inputs (sized for the largest batch), and one decode step.

    Everything a graph reads lives in tensors created here, before any capture: the step for batch
    size b reads tokens[:b] and positions[:b] and writes the KV cache in place.
    """

    def __init__(
        self, shape: ModelShape, *, device: torch.device | str = "cuda", seed: int = 0, attention: str = "default",
        communicator: Communicator | None = None,
    ) -> None:
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention {attention!r}: choose one of {', '.join(ATTENTION_CHOICES)}")
        self.communicator = communicator
        ranks = communicator.world_size if communicator is not None else 1
        self.full_shape = shape
        self.shape = shape = rank_shape(shape, ranks)
        self.attention = attention
        dtype = torch.bfloat16
        rank = communicator.rank if communicator is not None else 0
        # The embedding and the whole LM head drawn alike on every rank (the head then cut to
        # this rank's rows, so that the ranks' shards together are one head); each rank its own
        # shard of every layer.
        replicated = torch.Generator(device=device).manual_seed(seed)
        shard = torch.Generator(device=device).manual_seed(seed + 7919 * (rank + 1))
        h, kv = shape.hidden, shape.kv_heads * shape.head_dim
        q = shape.heads * shape.head_dim

        def weight(*dims: int, generator: torch.Generator = shard) -> torch.Tensor:
            scale = 1.0 / math.sqrt(dims[-1])
            return torch.randn(*dims, device=device, dtype=dtype, generator=generator) * scale

        with annotate("workload.weights"):
            self.embedding = weight(shape.vocab, h, generator=replicated)
            self.layers = [
                {
                    "attn_norm": torch.ones(h, device=device, dtype=dtype),
                    "qkv": weight(q + 2 * kv, h),
                    "out": weight(h, q),
                    "mlp_norm": torch.ones(h, device=device, dtype=dtype),
                    "gate_up": weight(2 * shape.intermediate, h),
                    "down": weight(h, shape.intermediate),
                }
                for _ in range(shape.layers)
            ]
            self.final_norm = torch.ones(h, device=device, dtype=dtype)
            self.logit_rows = vocabulary_rows(shape.vocab, ranks, rank)  # the words this rank's logits are of
            head = weight(shape.vocab, h, generator=replicated)
            self.lm_head = head if ranks == 1 else head[self.logit_rows].clone()
            del head
        with annotate("workload.kv_cache"):
            self.kv_cache = torch.zeros(
                shape.layers, 2, shape.max_batch, shape.kv_heads, shape.context, shape.head_dim, device=device, dtype=dtype
            )
        inverse = 1.0 / (10000 ** (torch.arange(0, shape.head_dim, 2, device=device, dtype=torch.float32) / shape.head_dim))
        angles = torch.outer(torch.arange(shape.context, device=device, dtype=torch.float32), inverse)
        self.cos, self.sin = angles.cos().to(dtype), angles.sin().to(dtype)
        self.tokens = torch.zeros(shape.max_batch, device=device, dtype=torch.long)
        self.positions = torch.zeros(shape.max_batch, device=device, dtype=torch.long)
        self.rows = torch.arange(shape.max_batch, device=device)
        self.slots = torch.arange(shape.context, device=device)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return self.shape.batch_sizes

    def describe(self) -> str:
        text = f"{self.full_shape.describe()}; attention: {self.attention}"
        if self.communicator is not None:
            text += f"; tensor parallelism {self.communicator.world_size} (rank {self.communicator.rank}'s share)"
        return text

    def warm_up(self) -> None:
        self.step(1)

    def prepare(self, batch: int, seed: int) -> None:
        tokens, positions = self.random_inputs(batch, seed)
        self.kv_cache.zero_()
        self.set_inputs(tokens, positions)

    def set_inputs(self, tokens: torch.Tensor, positions: torch.Tensor) -> None:
        """Writes a batch into the static inputs (what a server does before each replay)."""
        self.tokens[: tokens.numel()].copy_(tokens)
        self.positions[: positions.numel()].copy_(positions)

    def random_inputs(self, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator(device=self.tokens.device).manual_seed(seed)
        tokens = torch.randint(0, self.shape.vocab, (batch,), generator=generator, device=self.tokens.device)
        positions = torch.randint(0, self.shape.context, (batch,), generator=generator, device=self.tokens.device)
        return tokens, positions

    def step(self, batch: int) -> torch.Tensor:
        """One decode step for the first `batch` sequences; returns logits [batch, vocab / N]
        (float32): with N ranks, this rank's vocabulary rows (vocabulary_rows), all of them alone."""
        rotary, mask = self.rotary(batch), self.mask(batch)
        x = self.embed(batch)
        for index in range(self.shape.layers):
            x, q = self.before_attention(index, x, batch, rotary)
            x = self.after_attention(index, x, self.attend(index, q, batch, mask), batch)
        return self.head(x)

    # The step's parts, in order: rotary and mask (once a step), embed, then per layer
    # before_attention, attend, after_attention, then head. A piecewise capture (piecewise.py)
    # cuts the step between them.

    def rotary(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary embedding's cos and sin at each sequence's position."""
        positions = self.positions[:batch]
        return self.cos[positions][:, None, :], self.sin[positions][:, None, :]

    def mask(self, batch: int) -> torch.Tensor:
        """Which cache slots each sequence attends to."""
        return (self.slots[None, :] <= self.positions[:batch, None])[:, None, None, :]

    def embed(self, batch: int) -> torch.Tensor:
        return F.embedding(self.tokens[:batch], self.embedding)

    def before_attention(
        self, index: int, x: torch.Tensor, batch: int, rotary: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Norm, QKV projection and rotary embedding of layer `index`, keys and values written
        into the cache; returns (x, q) with q as [batch, heads, head_dim]."""
        s, layer = self.shape, self.layers[index]
        positions, rows = self.positions[:batch], self.rows[:batch]
        cos, sin = rotary
        y = _rms_norm(x, layer["attn_norm"])
        q, k, v = F.linear(y, layer["qkv"]).split([s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dim=-1)
        q = _rotate(q.view(batch, s.heads, s.head_dim), cos, sin)
        k = _rotate(k.view(batch, s.kv_heads, s.head_dim), cos, sin)
        cache_k, cache_v = self.kv_cache[index, 0, :batch], self.kv_cache[index, 1, :batch]
        cache_k[rows, :, positions] = k
        cache_v[rows, :, positions] = v.view(batch, s.kv_heads, s.head_dim)
        return x, q

    def attend(self, index: int, q: torch.Tensor, batch: int, mask: torch.Tensor) -> torch.Tensor:
        """Attention of layer `index` over the cache; returns [batch, heads * head_dim]."""
        s = self.shape
        cache_k, cache_v = self.kv_cache[index, 0, :batch], self.kv_cache[index, 1, :batch]
        return self._attend(q[:, :, None, :], cache_k, cache_v, mask).reshape(batch, s.heads * s.head_dim)

    def after_attention(self, index: int, x: torch.Tensor, attention: torch.Tensor, batch: int) -> torch.Tensor:
        """Output projection and MLP of layer `index`, each added to the residual stream."""
        layer = self.layers[index]
        x = x + self._reduced(F.linear(attention, layer["out"]))
        gate, up = F.linear(_rms_norm(x, layer["mlp_norm"]), layer["gate_up"]).chunk(2, dim=-1)
        return x + self._reduced(F.linear(F.silu(gate) * up, layer["down"]))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_rms_norm(x, self.final_norm), self.lm_head).float()

    def _reduced(self, partial: torch.Tensor) -> torch.Tensor:
        """A row-parallel projection's partial sums, summed over the ranks (in place)."""
        if self.communicator is not None:
            self.communicator.all_reduce(partial)
        return partial

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.attention == "default":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if self.attention in ("flash", "efficient"):  # fused kernels: one key/value head per query head
            repeats = self.shape.heads // self.shape.kv_heads
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        if self.attention == "flash":  # takes no mask: attends over the whole static cache
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v)
        backend = SDPBackend.MATH if self.attention == "math" else SDPBackend.EFFICIENT_ATTENTION
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.attention == "math")


def rank_shape(shape: ModelShape, ranks: int) -> ModelShape:
    """One rank's share of `shape` under tensor parallelism over `ranks` (heads, key/value heads and
    intermediate size divided; hidden size and vocabulary whole: the embedding is replicated, and
    the vocabulary-parallel LM head takes its rows with vocabulary_rows, so `ranks` must divide
    the vocabulary too)."""
    if ranks == 1:
        return shape
    for name in ("heads", "kv_heads", "intermediate", "vocab"):
        if getattr(shape, name) % ranks:
            raise ValueError(f"tensor parallelism {ranks} does not divide {name} ({getattr(shape, name)}): choose a divisor")
    return dataclasses.replace(
        shape, heads=shape.heads // ranks, kv_heads=shape.kv_heads // ranks, intermediate=shape.intermediate // ranks,
    )


def vocabulary_rows(vocab: int, ranks: int, rank: int) -> slice:
    """The LM head's rows that rank `rank` of `ranks` holds, and the logits its step returns: one
    contiguous N-th of the vocabulary (rank_shape has checked that `ranks` divides it)."""
    if vocab % ranks or not 0 <= rank < ranks:
        raise ValueError(f"rank {rank} of {ranks} over a vocabulary of {vocab}: the ranks must divide it and the rank be one of them")
    share = vocab // ranks
    return slice(rank * share, (rank + 1) * share)


def shape_of(preset: str, layers: int | None = None, batch_sizes: tuple[int, ...] | None = None) -> ModelShape:
    """A preset's shape; `layers` and `batch_sizes` override the preset's."""
    shape = PRESETS[preset]
    if layers is not None:
        shape = dataclasses.replace(shape, layers=layers)
    if batch_sizes is not None:
        shape = dataclasses.replace(shape, batch_sizes=tuple(batch_sizes))
    return shape


def decode_engine(
    preset: str, *, attention: str = "default", layers: int | None = None, batch_sizes: tuple[int, ...] | None = None,
    communicator: Communicator | None = None,
) -> DecodeEngine:
    return DecodeEngine(shape_of(preset, layers, batch_sizes), attention=attention, communicator=communicator)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(variance + 1e-5)).to(x.dtype) * weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)

"""What one rank of `foundry bench tp` holds on its GPU, computed from the decode step's shape, so
that the bench says before it starts N rank processes on one GPU whether they fit, and which
--layers would (docs/tensor-parallelism.md, "Memory per rank").

Every figure is arithmetic on the shape (no GPU, no torch): bfloat16 weights and KV cache, the
float32 logits each graph keeps as its output, and one step's transient memory at a batch size,
from the tensors the step makes with math attention (the largest of the SDPA kernels here: it
upcasts keys and values to float32 and repeats them per query head). The graph pool is that of
capture_steps: batch sizes largest first, each keeping its output while the next one's transient
memory comes and goes. Placement overhead (pages, fragmentation) and the CUDA context are not
computed: PROCESS_ALLOWANCE stands for them and for library workspaces and loaded modules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foundry_trace.bench.workloads.decode import ModelShape

GIB = 1 << 30
BF16, F32 = 2, 4
PROCESS_ALLOWANCE = 1 * GIB  # CUDA context, cuBLAS workspaces, modules, placement overhead: not computed
PEER_BUFFER = 64 << 20  # the peer communicator's own buffer (parallel/peer.py DEFAULT_BUFFER_BYTES)


@dataclass(frozen=True)
class RankMemory:
    """One rank's bytes, by what holds them. `comparison_pool` is the native capture that LOAD's
    comparison makes beside the restored pool: one step's when it compares batch by batch, a
    whole second pool otherwise. `eager_peak` is the engine arena's idle memory after the eager
    warm-up steps (the allocator gives it back only when another arena runs short)."""

    ranks: int
    layers: int
    embedding: int
    lm_head: int
    layer_weights: int
    kv_cache: int
    outputs: int
    graph_pool: int
    comparison_pool: int
    eager_peak: int
    process: int

    @property
    def engine(self) -> int:
        return self.embedding + self.lm_head + self.layer_weights + self.kv_cache

    @property
    def load_peak(self) -> int:
        """The LOAD rank's peak, the largest of the bench's roles: engine, restored pool, the
        comparison's native capture, the eager warm-up's idle memory, the process."""
        return self.engine + self.graph_pool + self.comparison_pool + self.eager_peak + self.process

    def rows(self) -> list[tuple[str, int]]:
        """(what, bytes) in the order docs/tensor-parallelism.md lists them."""
        return [
            ("embedding (replicated)", self.embedding), ("LM head", self.lm_head), ("layer weights", self.layer_weights),
            ("KV cache", self.kv_cache), ("restored graph pool", self.graph_pool), ("  of which logits outputs", self.outputs),
            ("comparison's native capture", self.comparison_pool), ("eager warm-up (idle)", self.eager_peak),
            ("process allowance + peer buffer", self.process), ("LOAD rank peak", self.load_peak),
        ]


def head_rows(shape: ModelShape, ranks: int, vocab_parallel: bool) -> int:
    """The LM head's rows on one rank: the vocabulary, or its N-th with a vocabulary-parallel head."""
    return shape.vocab // ranks if vocab_parallel else shape.vocab


def step_transient(shape: ModelShape, ranks: int, batch: int, vocab_parallel: bool) -> int:
    """One rank's transient bytes at the peak of one step of `batch` (its own output excluded):
    math attention's float32 keys and values, their copies repeated per query head and the
    scaled keys, or the bfloat16 logits the float32 output is cast from, whichever is larger,
    plus the residual stream's float32 norms. Heads as rank_shape divides them."""
    heads, kv_heads = shape.heads // ranks, shape.kv_heads // ranks
    per_head = shape.context * shape.head_dim * F32
    attention = batch * per_head * (2 * kv_heads + 3 * heads)
    logits = batch * head_rows(shape, ranks, vocab_parallel) * BF16
    return max(attention, logits) + batch * shape.hidden * 2 * F32


def step_output(shape: ModelShape, ranks: int, batch: int, vocab_parallel: bool) -> int:
    """The float32 logits one graph keeps alive: batch x the rank's vocabulary rows."""
    return batch * head_rows(shape, ranks, vocab_parallel) * F32


def graph_pool(shape: ModelShape, ranks: int, vocab_parallel: bool) -> int:
    """A shared pool's peak under capture_steps: largest batch first, the outputs of the batches
    captured so far held while the next one's transient memory and output come."""
    held, peak = 0, 0
    for batch in sorted(shape.batch_sizes, reverse=True):
        output = step_output(shape, ranks, batch, vocab_parallel)
        peak = max(peak, held + step_transient(shape, ranks, batch, vocab_parallel) + output)
        held += output
    return peak


def rank_memory(shape: ModelShape, ranks: int, *, vocab_parallel: bool = True, batch_by_batch: bool = True) -> RankMemory:
    """One rank's memory at degree `ranks` for the full (unsharded) `shape`. `vocab_parallel`:
    the LM head holds vocab / N rows and the step's logits are that shard (DecodeEngine's head
    with N > 1); False: the replicated head the engine had before. `batch_by_batch`: LOAD's
    comparison captures natively one batch at a time (verify.compare's batch_by_batch); False:
    a whole second pool."""
    sharded = vocab_parallel and ranks > 1
    kv_dim, q_dim = shape.kv_heads * shape.head_dim, shape.heads * shape.head_dim
    per_layer = shape.hidden * (q_dim + 2 * kv_dim) + shape.hidden * q_dim + 3 * shape.hidden * shape.intermediate
    single = max(step_transient(shape, ranks, b, sharded) + step_output(shape, ranks, b, sharded) for b in shape.batch_sizes)
    pool = graph_pool(shape, ranks, sharded)
    return RankMemory(
        ranks=ranks,
        layers=shape.layers,
        embedding=shape.vocab * shape.hidden * BF16,
        lm_head=head_rows(shape, ranks, sharded) * shape.hidden * BF16,
        layer_weights=shape.layers * (per_layer // ranks + 2 * shape.hidden) * BF16,
        kv_cache=shape.layers * 2 * shape.max_batch * (shape.kv_heads // ranks) * shape.context * shape.head_dim * BF16,
        outputs=sum(step_output(shape, ranks, b, sharded) for b in shape.batch_sizes),
        graph_pool=pool,
        comparison_pool=single if batch_by_batch else pool,
        eager_peak=single,
        process=PROCESS_ALLOWANCE + PEER_BUFFER,
    )


def most_layers(shape: ModelShape, ranks: int, ranks_per_gpu: int, free_bytes: int) -> int:
    """The most layers (at most the shape's) whose LOAD peak, times the ranks on one GPU, fits
    `free_bytes`; 0 if not even one layer does. Only weights and KV cache grow with layers."""
    for layers in range(shape.layers, 0, -1):
        if ranks_per_gpu * rank_memory(replace(shape, layers=layers), ranks).load_peak <= free_bytes:
            return layers
    return 0


def refusal(shape: ModelShape, ranks: int, ranks_per_gpu: int, free_bytes: int) -> str | None:
    """Why degree `ranks` cannot run with `ranks_per_gpu` ranks on a GPU with `free_bytes` free,
    naming the --layers that would fit; None where the computed peak fits."""
    need = ranks_per_gpu * rank_memory(shape, ranks).load_peak
    if need <= free_bytes:
        return None
    fit = most_layers(shape, ranks, ranks_per_gpu, free_bytes)
    fix = f"run it with --layers {fit} (the most that fit)" if fit else "no --layers fits: use fewer ranks per GPU"
    return (
        f"degree {ranks}: {ranks_per_gpu} ranks on one GPU need about {need / GIB:.1f} GiB at {shape.layers} layers "
        f"(computed: {rank_memory(shape, ranks).load_peak / GIB:.2f} GiB a rank), {free_bytes / GIB:.1f} GiB is free; {fix}"
    )

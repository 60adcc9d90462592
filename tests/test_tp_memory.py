"""One rank's memory in `foundry bench tp`, on the CPU: the computed figures that decide whether N
ranks fit one GPU (bench/tp_memory.py), the vocabulary-parallel LM head that divides the graphs'
logits by N, the bench's check that the ranks' shards cover every logit, and the comparison
that holds one native step at a time beside the restored pool."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from foundry_trace.bench import tp_bench, tp_memory, verify
from foundry_trace.bench.tp_memory import GIB, graph_pool, most_layers, rank_memory, refusal
from foundry_trace.bench.workloads.decode import VLLM_BATCH_SIZES, DecodeEngine, rank_shape, shape_of, vocabulary_rows

LLAMA8B = shape_of("llama8b")


class _Rank:
    """What DecodeEngine asks of a communicator on the CPU: its place, and an all-reduce that
    leaves the partial sums as they are (one rank's arithmetic is what these tests look at)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def all_reduce(self, tensor: torch.Tensor) -> None:
        pass


def test_the_llama8b_figures_are_those_of_its_shape() -> None:
    """Hand arithmetic for one rank of eight: weights and KV cache from the shape, and every batch
    size's float32 logits over 1/8 of the vocabulary (16,647 rows over 67 batch sizes)."""
    memory = rank_memory(LLAMA8B, 8)
    assert sum(VLLM_BATCH_SIZES) == 16_647 and len(VLLM_BATCH_SIZES) == 67
    assert memory.embedding == 128_256 * 4096 * 2 and memory.lm_head == 128_256 // 8 * 4096 * 2
    assert memory.kv_cache == 32 * 2 * 512 * 1 * 256 * 128 * 2 == 2 * GIB
    assert memory.layer_weights == 32 * ((4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336) // 8 + 2 * 4096) * 2
    assert memory.outputs == 16_647 * 16_032 * 4
    replicated = rank_memory(LLAMA8B, 8, vocab_parallel=False, batch_by_batch=False)
    assert replicated.outputs == 16_647 * 128_256 * 4  # 7.95 GiB: every rank, every batch size, the whole vocabulary
    assert replicated.comparison_pool == replicated.graph_pool, "comparing all batches at once holds a second whole pool"


@given(st.sampled_from([2, 4, 8]))
def test_the_vocabulary_parallel_head_and_the_batch_by_batch_comparison_only_ever_shrink_a_rank(ranks: int) -> None:
    before = rank_memory(LLAMA8B, ranks, vocab_parallel=False, batch_by_batch=False)
    after = rank_memory(LLAMA8B, ranks)
    assert after.outputs * ranks == before.outputs
    assert after.graph_pool < before.graph_pool and after.comparison_pool < after.graph_pool
    assert (after.layer_weights, after.kv_cache, after.embedding) == (before.layer_weights, before.kv_cache, before.embedding)
    assert after.load_peak < before.load_peak


def test_the_pool_holds_every_output_and_the_largest_step_s_transient_memory_at_most() -> None:
    """capture_steps' order: the largest batch's transient memory comes while nothing is held,
    so the pool lies between the outputs alone and the outputs plus that transient memory."""
    for ranks in (1, 2, 4, 8):
        sharded = ranks > 1
        outputs = rank_memory(LLAMA8B, ranks).outputs
        largest = tp_memory.step_transient(LLAMA8B, ranks, 512, sharded)
        assert outputs <= graph_pool(LLAMA8B, ranks, sharded) <= outputs + largest


def test_eight_ranks_fit_an_h100_at_full_depth_with_the_vocabulary_parallel_head_and_not_without_it() -> None:
    """The head decides it; the batch-by-batch comparison adds the margin (one step, not a pool)."""
    h100 = int(79 * GIB)

    def on_one_gpu(vocab_parallel: bool, batch_by_batch: bool) -> int:
        return 8 * rank_memory(LLAMA8B, 8, vocab_parallel=vocab_parallel, batch_by_batch=batch_by_batch).load_peak

    assert refusal(LLAMA8B, 8, 8, h100) is None
    assert on_one_gpu(True, True) < on_one_gpu(True, False) < h100
    assert on_one_gpu(False, True) > h100 and on_one_gpu(False, False) > h100


def test_a_degree_that_does_not_fit_is_refused_naming_the_layers_that_would() -> None:
    free = 55 * GIB
    message = refusal(LLAMA8B, 8, 8, free)
    layers = most_layers(LLAMA8B, 8, 8, free)
    assert message is not None and f"--layers {layers}" in message and "degree 8" in message
    assert 0 < layers < 32
    fits = dataclasses.replace(LLAMA8B, layers=layers)
    assert refusal(fits, 8, 8, free) is None and refusal(dataclasses.replace(LLAMA8B, layers=layers + 1), 8, 8, free) is not None
    assert "no --layers fits" in (refusal(LLAMA8B, 8, 8, GIB) or "")


def test_the_peer_buffer_counted_is_the_communicator_s() -> None:
    from foundry_trace.parallel.peer import DEFAULT_BUFFER_BYTES

    assert tp_memory.PEER_BUFFER == DEFAULT_BUFFER_BYTES


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_the_ranks_heads_are_the_rows_of_one_head_and_their_logits_a_shard(ranks: int) -> None:
    shape = shape_of("small", layers=1, batch_sizes=(1, 2))  # 8 heads, 4 key/value heads: 4 ranks divide them
    whole = DecodeEngine(shape, device="cpu", attention="math")
    heads = []
    for rank in range(ranks):
        engine = DecodeEngine(shape, device="cpu", attention="math", communicator=_Rank(rank, ranks))
        assert engine.logit_rows == vocabulary_rows(8192, ranks, rank)
        engine.prepare(2, seed=3)
        assert engine.step(2).shape == (2, 8192 // ranks)
        heads.append(engine.lm_head)
    assert torch.equal(torch.cat(heads), whole.lm_head), "the shards together are the one head a single rank holds"


def test_vocabulary_rows_refuse_a_rank_count_that_does_not_divide() -> None:
    with pytest.raises(ValueError, match="divide"):
        vocabulary_rows(1000, 3, 0)
    with pytest.raises(ValueError, match="does not divide vocab"):
        rank_shape(dataclasses.replace(shape_of("tiny"), vocab=1001), 2)


def _loaded(rows: list[tuple[int, int]], digests: list[str]) -> list[dict[str, object]]:
    return [{"logit_rows": list(r), "digests": {"1": d, "8": d}} for r, d in zip(rows, digests)]


def test_the_shards_must_tile_the_vocabulary_and_replicated_logits_must_agree() -> None:
    tiled = tp_bench.logit_coverage(_loaded([(0, 512), (512, 1024)], ["a", "b"]), 1024)
    assert tiled["logits"] == "vocabulary-parallel" and tiled["logit_shards_cover_vocabulary"] and tiled["ranks_agree"] is None
    for rows in ([(0, 512), (0, 512)], [(0, 256), (512, 1024)], [(512, 1024), (0, 512)], [(0, 512), (512, 1000)]):
        assert not tp_bench.logit_coverage(_loaded(rows, ["a", "b"]), 1024)["logit_shards_cover_vocabulary"], rows
    replicated = tp_bench.logit_coverage(_loaded([(0, 1024), (0, 1024)], ["a", "a"]), 1024)
    assert replicated["logits"] == "replicated" and replicated["ranks_agree"]
    assert not tp_bench.logit_coverage(_loaded([(0, 1024), (0, 1024)], ["a", "b"]), 1024)["ranks_agree"]


class _Engine:
    """A CPU stand-in for compare(): each batch's step writes a seeded output; `restored_wrong`
    batches' restored step writes another."""

    def __init__(self, restored_wrong: set[int]) -> None:
        self.seed, self.restored_wrong = 0, restored_wrong

    def prepare(self, batch: int, seed: int) -> None:
        self.seed = seed

    def write(self, output: torch.Tensor, shift: int = 0) -> None:
        output.copy_(torch.randn(output.shape, generator=torch.Generator().manual_seed(self.seed + shift)))

    def restored_step(self, restored: object, batch: int) -> tuple[object, torch.Tensor]:
        output = restored.outputs[batch]
        return (lambda: self.write(output, 1 if batch in self.restored_wrong else 0)), output


def test_the_comparison_batch_by_batch_releases_each_native_step_before_the_next_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _Engine(restored_wrong={8})
    alive: list[weakref.ref] = []
    captured: list[int] = []

    def capture(engine_: _Engine, sizes: list[int]) -> dict[int, SimpleNamespace]:
        gc.collect()
        assert not [r for r in alive if r() is not None], "the previous batch's native step is still held"
        (batch,) = sizes
        captured.append(batch)
        output = torch.empty(batch, 4)
        step = SimpleNamespace(batch=batch, output=output, replay=lambda: engine.write(output), graphs=[None])
        alive.append(weakref.ref(output))
        return {batch: step}

    monkeypatch.setattr(verify, "capture_steps", capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    restored = SimpleNamespace(graphs={"1": None, "8": None, "4": None}, outputs={b: torch.empty(b, 4) for b in (1, 4, 8)})
    result = verify.compare(engine, restored, latency_batches=(), batch_by_batch=True)
    assert captured == [8, 4, 1], "largest first, as capture_steps orders a whole pool"
    assert result["mismatched"] == [8] and result["steps"] == 3 and list(result["digests"]) == ["1", "4", "8"]

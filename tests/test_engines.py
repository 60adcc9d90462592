"""The workload registry, and transformers models run as engines (on the CPU here: the same code
the GPU tests capture)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from foundry_trace.bench.workloads import registry as engines


def test_unknown_workloads_and_attention_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown workload 'llama70b'; choose one of tiny, small"):
        engines.make_engine("llama70b")
    with pytest.raises(ValueError, match="attention 'sparse': choose one of default, math, flash, efficient"):
        engines.make_engine("tiny", attention="sparse")


def test_the_cli_lists_workloads_without_importing_torch() -> None:
    probe = "import sys, foundry_trace.cli as c; c.parser(); sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0
    from foundry_trace import cli

    assert "hf-qwen3moe" in cli.WORKLOAD_HELP and "streams" in cli.WORKLOAD_HELP


def test_results_files_are_named_after_the_workload() -> None:
    from foundry_trace.bench.results import ResultsFile

    results = ResultsFile(
        what="load", workload="llama8b-67-math-attention", workload_desc="", device="NVIDIA H100 80GB HBM3", gpus=1,
        driver=None, cuda=None, torch="2.11", commit=None, date="2026-11-24", command="foundry bench", cases=[],
    )
    assert results.file_name() == "load-llama8b-67-math-attention-h100-20261124.json"


transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["llama8b", "qwen3", "qwen3moe"])
def engine(request: pytest.FixtureRequest):  # noqa: ANN201 - TransformersEngine
    from foundry_trace.bench.workloads.transformers_models import TransformersEngine

    return TransformersEngine(request.param, layers=1, batch_sizes=(1, 3), device="cpu", attention="math")


def test_a_step_writes_only_the_chosen_cache_slot(engine) -> None:  # noqa: ANN001
    engine.prepare(3, seed=7)
    slot = int(engine.slot)
    logits = engine.step(3)
    assert logits.shape == (3, 1, engine.config.vocab_size) and torch.isfinite(logits.float()).all()
    written = engine.kv_cache[:, :, :3, :, slot]
    assert torch.count_nonzero(written) > 0
    assert torch.count_nonzero(engine.kv_cache) == torch.count_nonzero(written), "the step wrote outside the slot or the batch"


def test_equal_inputs_give_equal_logits_and_other_inputs_others(engine) -> None:  # noqa: ANN001
    engine.prepare(3, seed=7)
    first = engine.step(3).clone()
    engine.prepare(3, seed=7)
    assert torch.equal(engine.step(3), first)
    engine.prepare(3, seed=8)
    assert not torch.equal(engine.step(3), first)


def test_every_batch_size_shares_one_cache_buffer(engine) -> None:  # noqa: ANN001
    buffer = engine.kv_cache.untyped_storage().data_ptr()
    for cache in engine.caches.values():
        assert all(layer.keys.untyped_storage().data_ptr() == buffer for layer in cache.layers)


def test_flash_attention_is_refused_for_masked_models() -> None:
    from foundry_trace.bench.workloads.transformers_models import TransformersEngine

    with pytest.raises(ValueError, match="flash attention does not take"):
        TransformersEngine("qwen3", attention="flash", device="cpu")

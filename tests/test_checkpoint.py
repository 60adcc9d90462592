"""Weights from disk (issue 35): a workload's random weights written once as a safetensors
checkpoint and loaded by an engine built empty, as a serving engine loads its weights; and the
Qwen3-235B rank's shape. On the CPU: the same code the GPU children run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundry_trace.bench.workloads import checkpoint
from foundry_trace.bench.workloads.checkpoint import TensorSpec
from foundry_trace.errors import WorkloadError


def spec(name: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, shape, "bfloat16", 2)


def test_shards_keep_the_order_and_stay_under_their_size_a_larger_tensor_alone() -> None:
    specs = [spec("a", 10), spec("b", 20), spec("c", 100), spec("d", 5), spec("e", 5)]  # 20, 40, 200, 10, 10 bytes
    shards = checkpoint.shard_plan(specs, shard_bytes=64)
    assert [[s.name for s in shard] for shard in shards] == [["a", "b"], ["c"], ["d", "e"]]
    assert checkpoint.shard_plan([], 64) == []
    assert checkpoint.shard_name(0, 15) == "model-00001-of-00015.safetensors"


MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
/dev/vdb /data xfs rw 0 0
/dev/vdc /data/fast\\040disk ext4 rw 0 0
"""


def test_the_filesystem_is_the_longest_mount_point_holding_the_path() -> None:
    assert checkpoint.filesystem_of(Path("/dev/shm/qwen3-235b-rank"), MOUNTS) == "tmpfs"
    assert checkpoint.filesystem_of(Path("/tmp/x"), MOUNTS) == "ext4"
    assert checkpoint.filesystem_of(Path("/data/ckpt"), MOUNTS) == "xfs"
    assert checkpoint.filesystem_of(Path("/data/fast disk/ckpt"), MOUNTS) == "ext4"
    assert checkpoint.filesystem_of(Path("/datafile"), MOUNTS) == "ext4"  # a prefix of the name is not a parent
    assert checkpoint.filesystem_of(Path("/x"), "") == "unknown"


def test_a_folder_without_room_is_refused_naming_tmpfs() -> None:
    with pytest.raises(WorkloadError, match=r"needs 61.1 GB and /ckpt has 50.0 GB free: .*tmpfs \(/dev/shm\)"):
        checkpoint.require_room(Path("/ckpt"), 61_051_526_144, 50_000_000_000)
    checkpoint.require_room(Path("/ckpt"), 61_051_526_144, 70_000_000_000)


transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
import torch  # noqa: E402

from foundry_trace.bench.workloads import transformers_models  # noqa: E402
from foundry_trace.bench.workloads.transformers_models import MODELS, HFModel, TransformersEngine  # noqa: E402

TINY = HFModel(  # the Qwen3-MoE family at a size the CPU runs in a second
    "qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
    dict(vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_attention_heads=2,
         num_key_value_heads=1, head_dim=16, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, tie_word_embeddings=False),
    layers=2, context=16, batch_sizes=(1, 2), options={"experts_implementation": "grouped_mm"},
)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(MODELS, "tiny-moe", TINY)
    return "tiny-moe"


def _stored(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(folder.glob("model-*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def test_an_engine_built_empty_loads_exactly_what_was_written(tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "SHARD_BYTES", 4096)  # several files, read on several threads
    written = transformers_models.write_checkpoint(tmp_path, model=tiny, device="cpu")
    stored = _stored(tmp_path)
    assert written["shards"] > 2 and not written["reused"] and written["write_s"] > 0
    assert written["bytes"] == sum(t.numel() * t.element_size() for t in stored.values())
    index = json.loads((tmp_path / checkpoint.INDEX).read_text())
    assert set(index["weight_map"]) == set(stored) and index["metadata"]["total_size"] == written["bytes"]

    engine = TransformersEngine(tiny, device="cpu", attention="math", checkpoint=str(tmp_path))
    state = engine.model.state_dict()
    assert set(state) == set(stored)
    assert all(torch.equal(state[name], tensor) for name, tensor in stored.items())
    assert isinstance(engine.weights_load_s, float) and "loaded from a safetensors checkpoint" in engine.describe()
    assert torch.equal(state["model.norm.weight"], torch.ones_like(state["model.norm.weight"]))  # norms one, matrices random
    assert 0.01 < float(state["model.embed_tokens.weight"].float().std()) < 0.03
    engine.prepare(2, seed=3)
    assert torch.isfinite(engine.step(2).float()).all()


def test_the_rotary_frequencies_are_computed_not_loaded(tiny: str, tmp_path: Path) -> None:
    transformers_models.write_checkpoint(tmp_path, model=tiny, device="cpu")
    loaded = TransformersEngine(tiny, device="cpu", attention="math", checkpoint=str(tmp_path))
    drawn = TransformersEngine(tiny, device="cpu", attention="math")
    assert torch.equal(loaded.model.model.rotary_emb.inv_freq, drawn.model.model.rotary_emb.inv_freq)
    assert drawn.weights_load_s is None


def test_a_checkpoint_is_reused_only_by_the_model_that_wrote_it(tiny: str, tmp_path: Path) -> None:
    first = transformers_models.write_checkpoint(tmp_path, model=tiny, device="cpu")
    again = transformers_models.write_checkpoint(tmp_path, model=tiny, device="cpu")
    assert again["reused"] and again["write_s"] is None and again["bytes"] == first["bytes"]
    with pytest.raises(WorkloadError, match="no checkpoint of this model there \\(one of another model, config or seed\\)"):
        TransformersEngine(tiny, device="cpu", layers=1, checkpoint=str(tmp_path))
    with pytest.raises(WorkloadError, match="one of another model, config or seed"):
        TransformersEngine(tiny, device="cpu", seed=1, checkpoint=str(tmp_path))
    one_layer = transformers_models.write_checkpoint(tmp_path, model=tiny, layers=1, device="cpu")
    assert not one_layer["reused"] and one_layer["bytes"] < first["bytes"]
    assert TransformersEngine(tiny, device="cpu", layers=1, checkpoint=str(tmp_path)).weights_load_s is not None


def test_a_write_cut_short_is_never_taken_for_a_checkpoint(tiny: str, tmp_path: Path) -> None:
    transformers_models.write_checkpoint(tmp_path, model=tiny, device="cpu")
    (tmp_path / checkpoint.MARKER).unlink()  # what a write stopped before its last step leaves
    with pytest.raises(WorkloadError, match="no checkpoint of this model there \\(none\\)"):
        TransformersEngine(tiny, device="cpu", checkpoint=str(tmp_path))
    assert not transformers_models.write_checkpoint(tmp_path, model=tiny, device="cpu")["reused"]


def test_a_folder_holding_other_files_is_not_written_into(tiny: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WorkloadError, match=r"holds files that are not a checkpoint of this bench \(notes.txt\)"):
        transformers_models.write_checkpoint(tmp_path, model=tiny, device="cpu")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_tensor_of_another_shape_is_refused_by_name(tiny: str, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    transformers_models.write_checkpoint(tmp_path, model=tiny, device="cpu")
    weight_map = json.loads((tmp_path / checkpoint.INDEX).read_text())["weight_map"]
    file = tmp_path / weight_map["model.norm.weight"]
    tensors = {name: t for name, t in _stored(tmp_path).items() if weight_map[name] == file.name}
    tensors["model.norm.weight"] = torch.ones(7, dtype=torch.bfloat16)
    save_file(tensors, str(file))
    with pytest.raises(WorkloadError, match=r"model.norm.weight is \(7,\) torch.bfloat16, the model's \(32,\)"):
        TransformersEngine(tiny, device="cpu", checkpoint=str(tmp_path))


def test_the_qwen3_235b_rank_is_one_ep8_tp8_rank_of_61_gb_and_layers_scale_it() -> None:
    from foundry_trace.bench.workloads.decode import VLLM_BATCH_SIZES

    spec = MODELS["qwen3-235b-rank"]
    config = transformers_models.model_config(spec)
    assert (config.hidden_size, config.num_hidden_layers, config.num_experts, config.num_experts_per_tok) == (4096, 94, 16, 8)
    assert (config.moe_intermediate_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (1536, 8, 1, 128)
    assert config.vocab_size == 151936 and not config.tie_word_embeddings and spec.batch_sizes == VLLM_BATCH_SIZES
    assert spec.options == {"experts_implementation": "grouped_mm"}
    with torch.device("meta"):
        specs = checkpoint.tensor_specs(transformers_models.instantiate(spec, config, initialise=False))
        two = checkpoint.tensor_specs(transformers_models.instantiate(spec, transformers_models.model_config(spec, 2), initialise=False))
    assert sum(s.nbytes for s in specs) == 61_051_526_144 and {s.dtype for s in specs} == {"bfloat16"}
    per_layer = (sum(s.nbytes for s in specs) - sum(s.nbytes for s in two)) // 92
    assert sum(s.nbytes for s in two) == sum(s.nbytes for s in specs) - 92 * per_layer
    assert per_layer == 2 * (16 * 3 * 4096 * 1536 + 16 * 4096 + 2 * 4096 * 1024 + 2 * 4096 * 128 + 2 * 128 + 2 * 4096)


def test_only_transformers_workloads_take_a_checkpoint(tmp_path: Path) -> None:
    from foundry_trace.bench.workloads import registry

    assert registry.takes_checkpoint("qwen3-235b-rank") and registry.takes_checkpoint("hf-qwen3moe")
    assert not registry.takes_checkpoint("small")
    with pytest.raises(WorkloadError, match="workload 'small' draws its weights in place"):
        registry.make_engine("small", checkpoint=str(tmp_path))
    with pytest.raises(WorkloadError, match="workload 'piecewise' draws its weights in place"):
        registry.write_checkpoint("piecewise", tmp_path)

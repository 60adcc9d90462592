"""Hugging Face transformers models as engines: model code written by others, run as a serving
engine runs it. Built from their configs with random weights (nothing is downloaded), decoding
one token per sequence with a static KV cache that every batch size shares (as vLLM's), each
batch size captured with torch.cuda.graph.

The cache is transformers' own StaticLayer, given views of one shared buffer and a write slot
that the host sets before a step (a self-advancing counter would run off the end of the cache
as graphs replay). The attention mask is passed ready-made (4D), so that transformers' mask code
takes no data-dependent branch during capture; MoE experts run through grouped_mm, whose
routing stays on the device.

With `checkpoint=DIR` the weights come from disk instead, as a serving engine loads them: the
model is built empty (transformers' no_init_weights) and every tensor is copied in from the
safetensors files that write_checkpoint() wrote there (workloads/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from foundry_alloc.profiling import annotate
from foundry_trace.bench.capture import OneGraphPerStep
from foundry_trace.bench.workloads import checkpoint as checkpoints
from foundry_trace.bench.workloads.checkpoint import TensorSpec
from foundry_trace.bench.workloads.decode import VLLM_BATCH_SIZES


@dataclass(frozen=True)
class HFModel:
    module: str  # transformers.models.<module>
    config_class: str
    model_class: str
    config: dict[str, object]
    layers: int
    context: int = 256  # tokens per sequence in the static cache
    batch_sizes: tuple[int, ...] = VLLM_BATCH_SIZES
    options: dict[str, object] = field(default_factory=dict)  # passed to _from_config


MODELS: dict[str, HFModel] = {
    "llama8b": HFModel(  # Llama-3-8B
        "llama", "LlamaConfig", "LlamaForCausalLM",
        dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
             num_key_value_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5),
        layers=32,
    ),
    "qwen3": HFModel(  # Qwen3-4B
        "qwen3", "Qwen3Config", "Qwen3ForCausalLM",
        dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_attention_heads=32,
             num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, tie_word_embeddings=True),
        layers=36,
    ),
    "qwen3moe": HFModel(  # Qwen3-30B-A3B: 128 experts, 8 per token; 24 of its 48 layers fit one H100 with the cache
        "qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
        dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
             num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
             norm_topk_prob=True, rms_norm_eps=1e-6),
        layers=24,
        options={"experts_implementation": "grouped_mm"},
    ),
    # Qwen3-235B-A22B (94 layers, 128 experts, 8 per token, 64 query and 4 KV heads) as ONE rank
    # under expert parallelism 8 and attention tensor parallelism 8: 16 experts, top-8 routing
    # among them; 8 query heads and the 4 KV heads' share, one (replicated); embedding and LM
    # head whole. 30.5 B parameters, 61 GB in bf16.
    "qwen3-235b-rank": HFModel(
        "qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
        dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, moe_intermediate_size=1536,
             num_attention_heads=8, num_key_value_heads=1, head_dim=128, num_experts=16, num_experts_per_tok=8,
             norm_topk_prob=True, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False),
        layers=94,
        options={"experts_implementation": "grouped_mm"},
    ),
}


def model_config(spec: HFModel, layers: int | None = None) -> object:
    """The transformers config of `spec` with `layers` decoder layers (default: the spec's)."""
    family = importlib.import_module(f"transformers.models.{spec.module}")
    return getattr(family, spec.config_class)(**spec.config, num_hidden_layers=layers or spec.layers)


def instantiate(spec: HFModel, config: object, *, initialise: bool) -> torch.nn.Module:
    """The model on torch's current device, in bf16 with SDPA attention. `initialise=False`
    builds it empty (transformers' no_init_weights): its weights are about to be loaded, and
    initialising 61 GB first is work an engine does not do. Buffers that are computed, not
    loaded (the rotary frequencies), are computed either way."""
    from transformers.initialization import no_init_weights

    family = importlib.import_module(f"transformers.models.{spec.module}")
    with contextlib.nullcontext() if initialise else no_init_weights():
        return getattr(family, spec.model_class)._from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa", **spec.options
        ).eval()


def checkpoint_identity(name: str, config: object, seed: int, specs: list[TensorSpec]) -> str:
    """What a checkpoint of model `name` must have been written for (checkpoint.identity)."""
    described = {**MODELS[name].config, "num_hidden_layers": config.num_hidden_layers, "initializer_range": config.initializer_range}
    return checkpoints.identity(name, described, seed, specs)


def write_checkpoint(folder: Path, *, model: str, layers: int | None = None, seed: int = 0, device: str = "cuda") -> dict[str, object]:
    """Writes model `model`'s random weights into `folder` as a safetensors checkpoint (reusing
    one written there for the same model, layers and seed), drawn on `device`: the model is
    built on the meta device only for its tensors' names and shapes."""
    spec = MODELS[model]
    config = model_config(spec, layers)
    with torch.device("meta"):
        specs = checkpoints.tensor_specs(instantiate(spec, config, initialise=False))
    digest = checkpoint_identity(model, config, seed, specs)
    return checkpoints.write(Path(folder), specs, digest, seed=seed, std=config.initializer_range, device=device)


def _pooled_layer_class() -> type:
    from transformers.cache_utils import StaticLayer

    class PooledStaticLayer(StaticLayer):
        """transformers' static cache layer over views of a shared buffer, written at `slot`."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, slot: torch.Tensor) -> None:
            super().__init__(max_cache_len=keys.shape[2])
            self.keys, self.values, self.slot = keys, values, slot
            self.dtype, self.device = keys.dtype, keys.device
            self.batch_size, self.num_heads, _, self.k_head_dim = keys.shape
            self.v_head_dim = values.shape[-1]
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object):  # noqa: ANN201
            self.keys.index_copy_(2, self.slot, key_states)
            self.values.index_copy_(2, self.slot, value_states)
            return self.keys, self.values

    return PooledStaticLayer


class TransformersEngine(OneGraphPerStep):
    def __init__(
        self,
        model: str,
        *,
        attention: str = "efficient",
        layers: int | None = None,
        batch_sizes: tuple[int, ...] | None = None,
        device: str = "cuda",
        seed: int = 0,
        checkpoint: str | None = None,
    ) -> None:
        if attention == "flash":
            raise ValueError("attention 'flash': transformers models pass an attention mask, which flash attention "
                             "does not take; choose efficient, math or default")
        from transformers.cache_utils import Cache

        self.spec = spec = MODELS[model]
        self.name, self.attention = model, attention
        self.batch_sizes = tuple(batch_sizes or spec.batch_sizes)
        self.config = config = model_config(spec, layers)
        torch.manual_seed(seed)
        with annotate("workload.weights"), torch.device(device):
            self.model = instantiate(spec, config, initialise=checkpoint is None)
        self.checkpoint = checkpoint
        # Seconds the weights took to load from the checkpoint; None where they were drawn in place.
        self.weights_load_s = None if checkpoint is None else self._load_weights(Path(checkpoint), seed)
        max_batch, context = max(self.batch_sizes), spec.context
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        with annotate("workload.kv_cache"):
            self.kv_cache = torch.zeros(
                config.num_hidden_layers, 2, max_batch, config.num_key_value_heads, context, head_dim,
                device=device, dtype=torch.bfloat16,
            )
        self.tokens = torch.zeros(max_batch, 1, device=device, dtype=torch.long)
        self.positions = torch.zeros(max_batch, 1, device=device, dtype=torch.long)
        self.mask = torch.zeros(max_batch, 1, 1, context, device=device, dtype=torch.bool)
        self.slot = torch.zeros(1, device=device, dtype=torch.long)
        layer = _pooled_layer_class()
        self.caches = {
            batch: Cache(layers=[layer(self.kv_cache[i, 0, :batch], self.kv_cache[i, 1, :batch], self.slot)
                                 for i in range(config.num_hidden_layers)])
            for batch in self.batch_sizes
        }

    def _load_weights(self, folder: Path, seed: int) -> float:
        """Copies the checkpoint in `folder` into the empty model; the wall seconds it took."""
        state = self.model.state_dict()
        digest = checkpoint_identity(self.name, self.config, seed, checkpoints.tensor_specs(self.model))
        with annotate("workload.weights_load"), torch.no_grad():
            return checkpoints.load(state, folder, digest)

    def describe(self) -> str:
        c, spec = self.config, self.spec
        parameters = sum(p.numel() for p in self.model.parameters())
        weights = "random weights" if self.checkpoint is None else f"random weights loaded from a safetensors checkpoint in {self.weights_load_s:.1f} s"
        return (
            f"transformers {spec.model_class} ({self.name} config, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
            f"{parameters / 1e9:.2f} B bf16 parameters, {weights}), SDPA attention ({self.attention}), "
            f"shared static KV cache of {spec.context} tokens x batch {max(self.batch_sizes)}, {len(self.batch_sizes)} batch sizes"
        )

    def warm_up(self) -> None:
        self.prepare(1, seed=0)
        self.step(1)

    def prepare(self, batch: int, seed: int) -> None:
        generator = torch.Generator(device=self.tokens.device).manual_seed(seed)
        context = self.mask.shape[-1]
        slot = int(torch.randint(0, context, (1,), generator=generator, device=self.tokens.device))
        self.kv_cache.zero_()
        self.tokens[:batch].copy_(torch.randint(0, self.config.vocab_size, (batch, 1), generator=generator, device=self.tokens.device))
        self.positions[:batch].fill_(slot)
        self.slot.fill_(slot)
        self.mask.zero_()
        self.mask[:batch, ..., : slot + 1] = True

    def step(self, batch: int) -> torch.Tensor:
        with torch.inference_mode(), _sdpa_backend(self.attention):
            return self.model(
                input_ids=self.tokens[:batch],
                position_ids=self.positions[:batch],
                attention_mask=self.mask[:batch],
                past_key_values=self.caches[batch],
                use_cache=True,
            ).logits


def _sdpa_backend(attention: str):  # noqa: ANN202 - a context manager
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if attention == "default":
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH if attention == "math" else SDPBackend.EFFICIENT_ATTENTION)

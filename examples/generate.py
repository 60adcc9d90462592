"""Greedy generation with a transformers causal LM on CUDA graphs, captured natively or restored
by Foundry from an archive, with no warm-up and no capture.

    python examples/generate.py --layers 4 --eager               # no graphs: the reference
    python examples/generate.py --layers 4                       # native graphs, plain PyTorch
    python examples/generate.py --layers 4 --save llama.foundry  # native graphs, SAVEd by Foundry
    python examples/generate.py --layers 4 --load llama.foundry  # the graphs restored (a fresh process)

It needs a CUDA GPU and transformers (pip install '.[save,bench,models]', the README's first install).

Every mode builds the same model (random weights drawn from a named config with a fixed seed,
or a local checkpoint with --model), the same static KV cache and input buffers, and decodes the
same seeded prompt greedily: the prompt is prefilled eagerly, then every further token comes
from one replay of the decode step's graph for the batch size. Graphs exist for every size of
--batch-sizes, captured (or restored) before serving, as a server does at start-up. The tokens
are the same in every mode.

What SAVE and LOAD ask of a program (README.md, docs/save.md, docs/load.md):
- foundry_alloc.install() before the first CUDA tensor, in both runs: the same allocations then
  land at the same addresses, which the saved graphs' kernel arguments point to;
- the engine's state before the restore point (weights, KV cache, static inputs, the first eager
  step that creates cuBLAS's workspace) built alike in both runs: none of it may depend on
  --batch, --tokens or --prompt-tokens, while the model, --layers, --batch-sizes and --context
  must match SAVE's (LOAD refuses another layout, printing the difference, and this program
  other batch sizes);
- SAVE: start_tracing() before the model's first kernel, the capture inside record();
  LOAD: prefetch() first thing (modules load and graphs build while the weights are made), and
  load() at the restore point, instead of warming up and capturing.

It prints the seconds from process start to the first generated token, the graph phase (from
the restore point until every graph is ready: warm-up and capture, or restore) and the mean
latency of the tokens after the first; --output writes them and the tokens as JSON.
"""

import time

STARTED = time.perf_counter()  # process start (the interpreter's own start-up, before this line, is not counted)

import argparse  # noqa: E402 - after the clock starts: imports are part of a process's start
import contextlib  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

# Named configs: random weights, so that the example runs with nothing downloaded.
CONFIGS: dict[str, dict[str, object]] = {
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5,
                       max_position_embeddings=8192),
    "small": dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5,
                  max_position_embeddings=8192),
}
# Efficient attention gives the same bits run after run (cuDNN's may not at large batches); math
# where it is unavailable (CPU).
ATTENTION = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
Step = Callable[[], torch.Tensor]  # one decode step of one batch size: returns its next-token logits


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="generate.py", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", choices=tuple(CONFIGS), default="llama-3-8b", help="random weights of this shape (default %(default)s)")
    source.add_argument("--model", type=Path, metavar="DIR", help="a local transformers checkpoint instead")
    parser.add_argument("--layers", type=int, help="keep this many layers (default: the model's)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--save", type=Path, metavar="ARCHIVE", help="capture natively and SAVE the graphs to ARCHIVE")
    mode.add_argument("--load", type=Path, metavar="ARCHIVE", help="restore the graphs from ARCHIVE instead of capturing")
    mode.add_argument("--eager", action="store_true", help="no graphs at all")
    parser.add_argument("--batch", type=int, default=1, help="sequences to generate (one of --batch-sizes; default 1)")
    parser.add_argument("--batch-sizes", type=_sizes, default=(1, 8), help="a graph for each (default 1,8)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens to generate per sequence (default 100)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="length of the seeded prompt (default 32)")
    parser.add_argument("--context", type=int, default=256, help="positions in the KV cache (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the prompt")
    parser.add_argument("--output", type=Path, metavar="FILE.json", help="write the tokens and timings here")
    arguments = parser.parse_args(argv)
    if arguments.batch not in arguments.batch_sizes:
        parser.error(f"--batch {arguments.batch} is not one of --batch-sizes {_text(arguments.batch_sizes)}")
    if arguments.layers is not None and arguments.layers < 1:
        parser.error("--layers must be at least 1")
    if arguments.tokens < 1 or arguments.prompt_tokens < 1:
        parser.error("--tokens and --prompt-tokens must be at least 1")
    if arguments.prompt_tokens + arguments.tokens - 1 > arguments.context:  # the last token is never fed back
        parser.error(f"--prompt-tokens + --tokens - 1 must fit --context {arguments.context}")
    return arguments


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(sorted({int(size) for size in text.split(",")}))
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, not {text!r}")
    return sizes


def _text(sizes: tuple[int, ...]) -> str:
    return ",".join(str(size) for size in sizes)


def build_model(config: str, checkpoint: Path | None, layers: int | None, seed: int,
                device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """The same weights in every process: a checkpoint's, or random ones drawn after seeding."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    overrides = {"num_hidden_layers": layers} if layers else {}
    if checkpoint is not None:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype, attn_implementation="sdpa", **overrides)
        return model.to(device).eval()
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**{**CONFIGS[config], **overrides}), dtype=dtype,
                                                 attn_implementation="sdpa")
    return model.eval()


def _cache_layer() -> type:
    from transformers.cache_utils import StaticLayer

    class SlotLayer(StaticLayer):
        """transformers' static cache layer over views of the shared KV buffer, writing at the
        positions in `write_at`: a tensor the host sets before a replay (transformers' own
        layer advances a counter at every call, which warm-ups and replays would run on)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, write_at: torch.Tensor) -> None:
            super().__init__(max_cache_len=keys.shape[2])
            self.keys, self.values, self.write_at = keys, values, write_at
            self.device, self.dtype = keys.device, keys.dtype
            self.batch_size, self.num_heads, _, self.k_head_dim = keys.shape
            self.v_head_dim = values.shape[-1]
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            self.keys.index_copy_(2, self.write_at, key_states)
            self.values.index_copy_(2, self.write_at, value_states)
            return self.keys, self.values

    return SlotLayer


class StaticDecoder:
    """The decode step's state at fixed addresses, as a graph needs it: one KV cache that every
    batch size shares (each uses its first rows), and the step's inputs (tokens, positions, the
    attention mask, the cache slot to write), which the host sets before each step."""

    def __init__(self, model: torch.nn.Module, batch_sizes: tuple[int, ...], context: int) -> None:
        config, device = model.config, model.device
        rows = max(batch_sizes)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.model, self.context = model, context
        self.kv = torch.zeros(config.num_hidden_layers, 2, rows, config.num_key_value_heads, context, head_dim,
                              device=device, dtype=model.dtype)
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.mask = torch.zeros(rows, 1, 1, context, dtype=torch.bool, device=device)  # 4D: transformers uses it as is
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.caches = {batch: self._cache(batch, self.slot) for batch in batch_sizes}

    def _cache(self, batch: int, write_at: torch.Tensor) -> object:
        from transformers.cache_utils import Cache

        layer = _cache_layer()
        return Cache(layers=[layer(self.kv[i, 0, :batch], self.kv[i, 1, :batch], write_at) for i in range(self.kv.shape[0])])

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: object) -> torch.Tensor:
        """The last position's logits. `past_key_values` is `cache` in recent transformers; the old
        name works in every 5.x."""
        with sdpa_kernel(ATTENTION):
            output = self.model(input_ids=tokens, position_ids=positions, attention_mask=mask, past_key_values=cache,
                                use_cache=True, logits_to_keep=1)
        return output.logits[:, -1]

    def step(self, batch: int) -> torch.Tensor:
        """One decode step of `batch` sequences on the static inputs: what a graph captures."""
        return self._forward(self.tokens[:batch], self.positions[:batch], self.mask[:batch], self.caches[batch])

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Runs the prompt eagerly, filling the cache's first positions; returns the first tokens."""
        batch, length = prompt.shape
        self.kv.zero_()
        self.mask.zero_()
        mask = torch.zeros(batch, 1, length, self.context, dtype=torch.bool, device=prompt.device)
        mask[..., :length] = torch.ones(length, length, dtype=torch.bool, device=prompt.device).tril()  # causal
        positions = torch.arange(length, device=prompt.device)
        logits = self._forward(prompt, positions.expand(batch, length), mask, self._cache(batch, positions))
        self.mask[:batch, ..., :length] = True
        return logits.argmax(-1)

    def feed(self, batch: int, tokens: torch.Tensor, position: int) -> None:
        """Sets the step's inputs to `tokens` at `position`: the host's only work between steps
        (device-side writes: nothing waits for the GPU)."""
        self.tokens[:batch, 0] = tokens
        self.positions[:batch] = position
        self.slot.fill_(position)
        self.mask[:batch, ..., position] = True


def _replayer(replay: Callable[[], None], logits: torch.Tensor) -> Step:
    def step() -> torch.Tensor:
        replay()
        return logits

    return step


def capture(decoder: StaticDecoder, batch_sizes: tuple[int, ...], recording: object = None) -> dict[int, Step]:
    """Native capture, as engines do it: largest batch first, a warm-up each, one memory pool for
    every graph. With a Foundry recording, each graph is saved under its batch size, its logits
    declared as the output that LOAD hands back."""
    pool = torch.cuda.graph_pool_handle()
    steps = {}
    for batch in sorted(batch_sizes, reverse=True):
        decoder.step(batch)  # warm-up: lazy kernels load and libraries choose algorithms outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with recording.key(batch) if recording is not None else contextlib.nullcontext():
            with torch.cuda.graph(graph, pool=pool):
                logits = decoder.step(batch)
        if recording is not None:
            recording.add_output(batch, "logits", logits)
        steps[batch] = _replayer(graph.replay, logits)
    return steps


def restored_steps(restored: object, batch_sizes: tuple[int, ...]) -> dict[int, Step]:
    """The restored graphs as steps: each replays on torch's current stream and writes the
    logits where SAVE's graph did (`outputs` holds a view of them). Exits naming both lists
    unless the archive's graphs are those of `batch_sizes`: the layout check sees only the
    largest batch size (the buffers' rows)."""
    steps = {int(key): _replayer(restored[key].replay, restored[key].outputs["logits"]) for key in restored}
    if sorted(steps) != list(batch_sizes):
        raise SystemExit(f"the archive holds graphs for batch sizes {_text(tuple(sorted(steps)))}, not --batch-sizes "
                         f"{_text(batch_sizes)}: LOAD with SAVE's --batch-sizes")
    return steps


def generate(decoder: StaticDecoder, step: Step, prompt: torch.Tensor, tokens: int) -> tuple[list[list[int]], float, float | None]:
    """Greedy decoding: the prompt prefilled, then one step per further token. Returns the tokens,
    the seconds from process start to the first one on the host, and the mean milliseconds of
    each further token (None for a single token)."""
    batch, length = prompt.shape
    generated = torch.empty(batch, tokens, dtype=torch.long, device=prompt.device)
    generated[:, 0] = decoder.prefill(prompt)
    generated[:, 0].cpu()  # waits for the first token
    first_token_s = time.perf_counter() - STARTED
    began = time.perf_counter()
    for i in range(1, tokens):
        decoder.feed(batch, generated[:, i - 1], length + i - 1)
        generated[:, i] = step().argmax(-1)
    result = generated.tolist()  # waits for the last token
    per_token_ms = (time.perf_counter() - began) * 1e3 / (tokens - 1) if tokens > 1 else None
    return result, first_token_s, per_token_ms


def prompt_tokens(batch: int, length: int, vocabulary: int, seed: int, device: str) -> torch.Tensor:
    """The fixed prompt: token ids drawn on the CPU from `seed` (the same on every machine)."""
    return torch.randint(0, vocabulary, (batch, length), generator=torch.Generator().manual_seed(seed)).to(device)


def main(argv: list[str] | None = None) -> dict[str, object]:
    arguments = parse_arguments(argv)
    warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated")  # see StaticDecoder._forward
    mode = "save" if arguments.save else "load" if arguments.load else "eager" if arguments.eager else "native"
    early = restored = None
    if mode in ("save", "load"):  # the baseline imports nothing of Foundry
        import foundry_alloc

        foundry_alloc.install()  # before the first CUDA tensor, in SAVE and LOAD alike
        import foundry_trace

        if mode == "save":
            foundry_trace.start_tracing()  # before the model's first kernel: every module it loads is seen
        else:
            early = foundry_trace.prefetch(arguments.load)  # modules load, graphs build while the weights are made

    with torch.inference_mode():
        model = build_model(arguments.config, arguments.model, arguments.layers, arguments.seed)
        decoder = StaticDecoder(model, arguments.batch_sizes, arguments.context)
        decoder.step(min(arguments.batch_sizes))  # the first eager step: cuBLAS's workspace, in every mode
        torch.cuda.synchronize()
        restore_point = time.perf_counter()  # the engine's state is complete
        if mode == "eager":
            steps = {batch: (lambda batch=batch: decoder.step(batch)) for batch in arguments.batch_sizes}
        elif mode == "native":
            steps = capture(decoder, arguments.batch_sizes)
        elif mode == "save":
            with foundry_trace.record(arguments.save) as recording:  # its opening is the restore point
                steps = capture(decoder, arguments.batch_sizes, recording)
        else:
            restored = foundry_trace.load(early)  # checks the layout, claims the memory, restores what prefetch left
            steps = restored_steps(restored, arguments.batch_sizes)
        torch.cuda.synchronize()
        graph_phase_s = time.perf_counter() - restore_point
        prompt = prompt_tokens(arguments.batch, arguments.prompt_tokens, model.config.vocab_size, arguments.seed, "cuda")
        tokens, first_token_s, per_token_ms = generate(decoder, steps[arguments.batch], prompt, arguments.tokens)
    if restored is not None:
        restored.release()

    config = model.config
    report = {
        "mode": mode, "batch": arguments.batch, "batch_sizes": list(arguments.batch_sizes), "tokens": tokens,
        "first_token_s": first_token_s, "graph_phase_s": graph_phase_s, "per_token_ms": per_token_ms,
        "model": str(arguments.model or arguments.config), "layers": config.num_hidden_layers,
        "description": f"{type(model).__name__} ({'checkpoint' if arguments.model else 'random weights'}), "
                       f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                       f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, {model.dtype}",
        "prompt_tokens": arguments.prompt_tokens, "context": arguments.context,
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
    }
    phase = {"eager": "none", "native": "capture", "save": "capture + SAVE", "load": "restore"}[mode]
    per_token = f"{per_token_ms:.2f} ms" if per_token_ms is not None else "n/a"
    print(f"{mode}, batch {arguments.batch}, {arguments.tokens} tokens: first token {first_token_s:.2f} s after process "
          f"start; graph phase ({phase}) {graph_phase_s:.3f} s; per token {per_token}")
    print(f"first sequence: {tokens[0][:16]}{' ...' if arguments.tokens > 16 else ''}")
    if arguments.output is not None:
        arguments.output.write_text(json.dumps(report) + "\n")
    return report


if __name__ == "__main__":
    main()

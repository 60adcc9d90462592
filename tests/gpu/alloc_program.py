"""Programs the GPU tests run in fresh processes; each prints one JSON object on its last line.

    python -m tests.gpu.alloc_program layout [--noisy]   the determinism program
    python -m tests.gpu.alloc_program <scenario>         one of SCENARIOS
"""

from __future__ import annotations

import json
import sys

import foundry_alloc as fa

BATCHES = (1, 2, 4, 8)


def _tensor_addresses(model) -> dict[str, list[int]]:  # noqa: ANN001
    named = {"embedding": model.embedding, "kv_cache": model.kv_cache, "lm_head": model.lm_head, "tokens": model.tokens}
    for index, layer in enumerate(model.layers):
        named.update({f"layer{index}.{k}": v for k, v in layer.items()})
    return {name: [t.data_ptr(), t.numel() * t.element_size()] for name, t in named.items()}


def layout_program(noisy: bool) -> dict[str, object]:
    """Weights, KV cache, warm-up, capture of a few batch sizes. The noisy run adds transient
    traffic, extra warm-ups and freed engine traffic, none of which may move anything else."""
    fa.install()
    import torch

    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.workloads.registry import build_engine

    if noisy:
        scratch = [torch.randn(n, device="cuda") for n in (1000, 1 << 20, 5 << 20)]
        del scratch  # freed engine traffic before the model: leaves no trace
    model = build_engine("tiny")  # the first step, where cuBLAS allocates its workspace, in 'engine'
    if noisy:
        with fa.arena(fa.TRANSIENT):
            profile = [torch.empty(n, device="cuda") for n in (4096, 3 << 20, 17 << 20)]
            model.step(8)  # a profiling pass, as vLLM does, in the transient arena
    graphs = capture_steps(model, BATCHES, warmups=3 if noisy else 1)
    if noisy:
        del profile
    results = {}
    for batch, step in graphs.items():
        tokens, positions = model.random_inputs(batch, seed=batch)
        model.set_inputs(tokens, positions)
        step.replay()
        replayed = step.output.clone()
        model.set_inputs(tokens, positions)
        eager = model.step(batch)
        results[batch] = {"output": step.output.data_ptr(), "replay_equals_eager": bool(torch.equal(replayed, eager))}
    torch.cuda.synchronize()
    layout = fa.layout().select([fa.ENGINE, fa.GRAPH])
    return {
        "tensors": _tensor_addresses(model),
        "graphs": results,
        "layout": json.loads(layout.model_dump_json()),
        "fingerprint": layout.fingerprint(),
        "graph_blocks": sum(1 for a in layout.allocations if a.arena == fa.GRAPH),
    }


def out_of_memory() -> dict[str, object]:
    fa.install()
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    keep = torch.ones(1 << 20, device="cuda")
    try:
        torch.empty(total * 2, dtype=torch.uint8, device="cuda")
        error = None
    except torch.OutOfMemoryError as oom:
        error = ("OutOfMemoryError", str(oom))
    except RuntimeError as other:
        error = ("RuntimeError", str(other))
    after = torch.ones(1 << 20, device="cuda")  # the allocator still works
    from foundry_alloc import _native

    return {
        "error": error,
        "still_works": bool((keep + after).eq(2).all()),
        "live": fa.stats().live_blocks,
        "torch_oom_available": _native.library().fa_torch_oom_available(),
    }


def install_after_cuda() -> dict[str, object]:
    import torch

    torch.zeros(1, device="cuda")
    try:
        fa.install()
    except fa.AllocatorAlreadyInitializedError as error:
        return {"error": str(error)}
    return {"error": None}


def range_taken() -> dict[str, object]:
    """Someone else holds the range: install() sees it in the address map; a range taken between
    install() and the first allocation is refused by the driver reservation itself."""
    from cuda.bindings import driver

    config = fa.AllocatorConfig.create()
    (status,) = driver.cuInit(0)
    outcome: dict[str, object] = {}
    status, taken = driver.cuMemAddressReserve(config.size, 0, config.base, 0)
    assert status == driver.CUresult.CUDA_SUCCESS and int(taken) == config.base, (status, taken)
    try:
        fa.install()
    except fa.ReservationError as error:
        outcome["install_error"] = str(error)
    (status,) = driver.cuMemAddressFree(taken, config.size)
    fa.install()
    status, taken = driver.cuMemAddressReserve(config.size, 0, config.base, 0)
    assert status == driver.CUresult.CUDA_SUCCESS and int(taken) == config.base, (status, taken)
    import torch

    try:
        fa.reserve(0)
    except fa.ReservationError as error:
        outcome["reserve_error"] = str(error)
    try:
        torch.empty(16, device="cuda")
    except RuntimeError as error:
        outcome["tensor_error"] = str(error)
    return outcome


def empty_cache_keeps_graphs() -> dict[str, object]:
    fa.install()
    import torch

    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.workloads.decode import DecodeEngine, preset

    model = DecodeEngine(preset("tiny"))
    step = capture_steps(model, (4,))[4]
    tokens, positions = model.random_inputs(4, seed=3)
    model.set_inputs(tokens, positions)
    step.replay()
    before = step.output.clone()
    graph_mapped = fa.stats().arenas[fa.GRAPH].mapped_bytes
    scratch = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    del scratch
    released = fa.empty_cache()
    # Overwrite every freed engine byte with new tensors: the graph must not see any of it.
    filler = [torch.full((8 << 20,), 7.0, device="cuda") for _ in range(8)]
    model.set_inputs(tokens, positions)
    step.replay()
    torch.cuda.synchronize()
    return {
        "released": released,
        "graph_mapped_kept": fa.stats().arenas[fa.GRAPH].mapped_bytes == graph_mapped > 0,
        "same_output": bool(torch.equal(before, step.output)),
        "filler": len(filler),
    }


def multistream() -> dict[str, object]:
    fa.install()
    import torch

    side = torch.cuda.Stream()
    results = []
    for round_ in range(20):
        with torch.cuda.stream(side):
            a = torch.full((4 << 20,), float(round_), device="cuda")
            b = a * 2
        main = torch.cuda.current_stream()
        main.wait_stream(side)
        b.record_stream(main)
        total = b.sum()
        del a, b  # freed on the side stream; reused next round by either stream
        c = torch.full((4 << 20,), 1.0, device="cuda")
        results.append(float(total) == 2.0 * round_ * (4 << 20) and bool(c.eq(1).all()))
    return {"all_correct": all(results), "layout_blocks": len(fa.layout().allocations)}


SCENARIOS = {
    "out_of_memory": out_of_memory,
    "install_after_cuda": install_after_cuda,
    "range_taken": range_taken,
    
    "empty_cache_keeps_graphs": empty_cache_keeps_graphs,
    "multistream": multistream,
}


if __name__ == "__main__":
    name = sys.argv[1]
    result = layout_program("--noisy" in sys.argv) if name == "layout" else SCENARIOS[name]()
    print(json.dumps(result))

"""SAVE in one process, LOAD in another: python -m tests.gpu.load_program save|load|wrong-layout ARCHIVE"""

from __future__ import annotations

import json
import sys

import foundry_alloc as fa
import foundry_trace as ft
from foundry_trace.workload import build_engine

BATCHES = (1, 2, 4, 8)


def save(path: str) -> dict[str, object]:
    fa.install()
    ft.start_tracing()
    from foundry_trace.workload import capture_steps

    model = build_engine("tiny")
    with ft.record(path) as recording:
        capture_steps(model, BATCHES, recording=recording)
    return {"saved": True}


def load(path: str) -> dict[str, object]:
    fa.install()
    from foundry_trace.verify import compare

    model = build_engine("tiny")
    restored = ft.load(path)
    result = compare(model, restored, latency_batches=(1, 8))
    stats_before = fa.stats().live_blocks
    restored.release()
    result["released_blocks"] = stats_before - fa.stats().live_blocks
    result["phases"] = restored.phases
    return result


def wrong_layout(path: str) -> dict[str, object]:
    """An engine that allocates one more buffer than at SAVE must be refused, and leave nothing."""
    fa.install()
    import torch

    model = build_engine("tiny")
    extra = torch.empty(1 << 20, device="cuda")
    before = (fa.stats().live_blocks, fa.stats().mapped_bytes)
    try:
        ft.load(path)
    except ft.LayoutMismatchError as error:
        return {"error": str(error), "unchanged": before == (fa.stats().live_blocks, fa.stats().mapped_bytes), "extra": extra.numel() + model.shape.layers}
    return {"error": None}


SCENARIOS = {"save": save, "load": load, "wrong-layout": wrong_layout}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](sys.argv[2])))

"""vLLM's piecewise capture shape (bench/workloads/piecewise.py), on the CPU: the pieces, run in
order with attention between them, compute the whole step bit for bit; keys name the batch and
the piece, and sort in serving order over batch sizes."""

from __future__ import annotations

import pytest
import torch

from foundry_trace.archive.keys import batch_of, group_of, key_order
from foundry_trace.bench.workloads.decode import DecodeEngine, shape_of
from foundry_trace.bench.workloads.piecewise import PiecewiseEngine


@pytest.mark.parametrize("split_every", [1, 2, 3, 4])
def test_the_pieces_in_order_compute_the_whole_step(split_every: int) -> None:
    engine = PiecewiseEngine(preset="tiny", layers=4, split_every=split_every, device="cpu")
    whole = DecodeEngine(shape_of("tiny", 4), attention="math", device="cpu")
    assert engine.pieces == len(range(0, 4, split_every)) + 1
    for batch in (1, 4):
        engine.prepare(batch, seed=batch)
        whole.prepare(batch, seed=batch)
        output = None
        for piece in range(engine.pieces):
            output = engine.run_piece(batch, piece)
            if piece < engine.pieces - 1:
                assert output is None
                engine.attend_between(batch, piece)
        assert torch.equal(output, whole.step(batch)), "the cut must not change a single kernel's inputs"
        assert torch.equal(engine.kv_cache, whole.kv_cache)


def test_keys_name_batch_and_piece_and_sort_by_batch_size_first() -> None:
    engine = PiecewiseEngine(preset="tiny", layers=12, device="cpu")
    keys = [engine.key(batch, piece) for batch in (8, 1, 64) for piece in range(engine.pieces)]
    assert engine.key(8, 3) == "8/03" and group_of("8/03") == "8" and batch_of("8/03") == 8
    ordered = sorted(keys, key=key_order)
    assert ordered[: engine.pieces] == [engine.key(1, p) for p in range(engine.pieces)]
    assert [batch_of(k) for k in ordered] == sorted(batch_of(k) for k in keys)
    assert sorted(["8/10", "8/9", "8/100"], key=key_order) == ["8/9", "8/10", "8/100"]


@pytest.mark.parametrize("pieces", [1, 2, 33])
def test_waiting_on_every_piece_queues_the_step_once_in_order(pieces: int) -> None:
    """An eager load waits on each graph in turn: the first wait queues the step's pieces in
    order, and the rest only wait (2N calls into the pipeline, not N squared as measured on the
    H200 before: 72,963 calls for 2,211 graphs)."""
    from functools import partial
    from types import SimpleNamespace

    from foundry_trace.restore.load import _StepRequest

    asked: list[str] = []
    pipeline = SimpleNamespace(graph=lambda entry: asked.append(entry.key) or entry.key)
    step = [SimpleNamespace(key=f"8/{piece}") for piece in range(pieces)]
    request = _StepRequest(pipeline, step)
    handles = [partial(request, entry) for entry in step]
    for piece in reversed(range(pieces)):  # whichever piece is asked for first, the step starts at piece 0
        assert handles[piece]() == f"8/{piece}"
    assert asked[:pieces] == [entry.key for entry in step]
    assert len(asked) == 2 * pieces

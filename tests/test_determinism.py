"""The nondeterminism finder names the first operation whose outputs change on equal inputs."""

from __future__ import annotations

import torch

from foundry_trace.bench.determinism import first_divergence


def test_a_deterministic_step_has_no_divergence() -> None:
    x = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    assert first_divergence(lambda: (x @ x).relu().sum(), lambda: None, attempts=3) is None


def test_the_first_changing_operation_is_named() -> None:
    x = torch.ones(4, 4)
    state = {"calls": 0}

    def step() -> torch.Tensor:
        y = x * 2  # deterministic
        state["calls"] += 1
        z = y + state["calls"] % 2  # differs between consecutive runs: aten.add
        return z.sum()

    found = first_divergence(step, lambda: None, attempts=3)
    assert found is not None
    assert found.operation == "aten.add.Tensor" and found.index == 1 and found.attempts == 1
    assert found.shapes[0] == (4, 4)

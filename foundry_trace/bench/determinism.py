"""Why a native graph is nondeterministic: which operation of the step gives different outputs
on equal inputs. A graph replays the kernels of the eager step it captured, so the step is run
eagerly, twice on the same inputs, under a dispatch mode that keeps every operation's outputs;
the first operation whose outputs differ (all earlier ones agreed, so its inputs did too) is
the one whose kernels are nondeterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class Divergence:
    operation: str  # e.g. aten.mm.default
    index: int  # position among the step's operations
    shapes: tuple[tuple[int, ...], ...]  # of the operation's tensor inputs
    attempts: int  # runs until the difference appeared


class _Recorder(TorchDispatchMode):
    """Keeps (name, input shapes, output copies) of every operation, or compares with a reference."""

    def __init__(self, reference: list[tuple[str, tuple, list[torch.Tensor]]] | None = None) -> None:
        super().__init__()
        self.records: list[tuple[str, tuple, list[torch.Tensor]]] = []
        self.reference = reference
        self.divergence: tuple[str, int, tuple] | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        result = func(*args, **(kwargs or {}))
        index = len(self.records)
        shapes = tuple(tuple(t.shape) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor))
        outputs = [t.detach().clone() for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
        self.records.append((str(func), shapes, outputs))
        if self.reference is not None and self.divergence is None and index < len(self.reference):
            expected = self.reference[index][2]
            if len(expected) != len(outputs) or not all(torch.equal(a, b) for a, b in zip(expected, outputs)):
                self.divergence = (str(func), index, shapes)
        return result


def first_divergence(step: Callable[[], object], reset: Callable[[], None], attempts: int = 8) -> Divergence | None:
    """Runs `step` (after `reset`, which restores its inputs and state) once as the reference and
    up to `attempts` more times; names the first operation that differed, or None."""
    reset()
    with _Recorder() as recorder:
        step()
    _synchronize()
    for attempt in range(1, attempts + 1):
        reset()
        with _Recorder(recorder.records) as again:
            step()
        _synchronize()
        if again.divergence is not None:
            operation, index, shapes = again.divergence
            return Divergence(operation, index, shapes, attempt)
    return None


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def explain(workload: str, batches: list[int], layers: int = 2, **options: object) -> dict[str, dict[str, object] | None]:
    """For each batch size: the first nondeterministic operation of the workload's step (on an
    engine of its shapes with `layers` layers: every layer runs the same kernels)."""
    import dataclasses

    from foundry_trace.bench.workloads.registry import make_engine

    engine = make_engine(workload, **{**options, "layers": layers, "batch_sizes": tuple(batches)})
    found: dict[str, dict[str, object] | None] = {}
    for batch in batches:
        divergence = first_divergence(lambda batch=batch: engine.step(batch), lambda batch=batch: engine.prepare(batch, seed=batch))
        found[str(batch)] = dataclasses.asdict(divergence) if divergence else None
    return found

"""The output comparison behind every bit-for-bit claim, on the CPU: digests of fixed-input
steps, and the determinism verdict over repeated replays."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from foundry_trace.bench.verify import (
    RECHECK_REPLAYS,
    output_digest,
    reference_outputs,
    split_nondeterministic,
    varying_on_replay,
)


@dataclass
class _Engine:
    """Writes a seeded output for each batch; `noisy` batches add a replay counter (as a
    nondeterministic kernel would change some bits between replays)."""

    noisy: set[int] = field(default_factory=set)
    seed: int = 0
    replays: int = 0

    def prepare(self, batch: int, seed: int) -> None:
        self.seed = seed

    def step(self, batch: int, output: torch.Tensor) -> None:
        self.replays += 1
        values = torch.randn(output.shape, generator=torch.Generator().manual_seed(self.seed))
        if batch in self.noisy:
            values[0, 0] += self.replays
        output.copy_(values)


def _steps(engine: _Engine, batches: tuple[int, ...]) -> dict[int, SimpleNamespace]:
    steps = {}
    for batch in batches:
        output = torch.empty(batch, 16)
        steps[batch] = SimpleNamespace(replay=lambda b=batch, o=output: engine.step(b, o), output=output)
    return steps


def test_a_deterministic_step_has_one_digest_and_a_noisy_one_is_named() -> None:
    engine = _Engine(noisy={4})
    references = reference_outputs(engine, _steps(engine, (1, 4, 8)))
    assert {b: r["deterministic"] for b, r in references.items()} == {"1": True, "4": False, "8": True}
    expected = torch.randn(8, 16, generator=torch.Generator().manual_seed(1000 + 8))
    assert references["8"]["digest"] == output_digest(expected)


def test_nan_outputs_compare_by_their_bits() -> None:
    engine = _Engine()
    steps = _steps(engine, (2,))
    steps[2].replay = lambda o=steps[2].output: o.fill_(float("nan"))
    assert reference_outputs(engine, steps)["2"]["deterministic"]


def test_a_restored_step_that_differed_is_rechecked_by_its_own_replays() -> None:
    """Only the steps whose replays differ among themselves are named, each replayed the same
    number of times whatever it shows."""
    engine = _Engine(noisy={16})
    steps = _steps(engine, (8, 16))
    counted = {8: 0, 16: 0}
    engine.restored_step = lambda restored, batch: (
        lambda: (counted.__setitem__(batch, counted[batch] + 1), steps[batch].replay()), steps[batch].output)
    assert varying_on_replay(engine, None, [8, 16]) == [16]
    assert counted == {8: 1 + RECHECK_REPLAYS, 16: 1 + RECHECK_REPLAYS}
    assert varying_on_replay(engine, None, []) == []


def test_a_difference_from_save_counts_unless_the_native_graph_here_is_nondeterministic() -> None:
    assert split_nondeterministic([8, 72, 96], [72, 512]) == ([8, 96], [72])
    assert split_nondeterministic([], [72]) == ([], [])


def test_every_replay_count_is_the_same_on_every_rank() -> None:
    """With collectives in the graphs, a rank that replays more than its peer waits for ever: the
    comparison replays every graph the same number of times whatever it finds, and the ranks
    agree on the latency's replays per run through the communicator."""
    import threading

    from foundry_trace.bench.verify import REFERENCE_REPLAYS, agreed_count

    engine = _Engine(noisy={4})
    counted = {1: 0, 4: 0}
    steps = _steps(engine, (1, 4))
    for batch, step in steps.items():
        step.replay = lambda b=batch, o=step.output, replay=step.replay: (counted.__setitem__(b, counted[b] + 1), replay())
    reference_outputs(engine, steps)
    assert counted == {1: 1 + REFERENCE_REPLAYS, 4: 1 + REFERENCE_REPLAYS}, "a differing replay must not stop the others"

    class Ranks:
        """Two ranks in two threads; all_reduce sums what both put in, as NCCL does."""

        def __init__(self) -> None:
            self.world_size, self.barrier, self.values, self.lock = 2, threading.Barrier(2), [], threading.Lock()

        def all_reduce(self, tensor: torch.Tensor) -> None:
            with self.lock:
                self.values.append(tensor.clone())
            self.barrier.wait()
            tensor.copy_(sum(self.values))
            self.barrier.wait()

    ranks, agreed = Ranks(), {}
    threads = [threading.Thread(target=lambda rank, count: agreed.__setitem__(rank, agreed_count(count, ranks, device="cpu")), args=(r, c))
               for r, c in ((0, 3), (1, 20))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert agreed[0] == agreed[1] == 12, agreed
    assert agreed_count(7, None) == 7


def test_a_native_difference_where_save_saw_nondeterminism_is_set_apart() -> None:
    """A few native replays can agree by chance on a nondeterministic graph (cuDNN's attention at
    batch 144 on the H200): a difference there says nothing about the restore, when SAVE's own
    replays disagreed. Every other difference counts."""
    from foundry_trace.bench.verify import against_native

    here = {str(b): {"digest": f"native-{b}", "deterministic": b != 24} for b in (1, 24, 144, 256)}
    restored = {"1": "native-1", "24": "x", "144": "other", "256": "other"}
    saved = {str(b): {"digest": f"native-{b}", "deterministic": b not in (24, 144)} for b in (1, 24, 144, 256)}
    verdict = against_native([1, 24, 144, 256], here, restored, saved)
    assert verdict["mismatched"] == [256]
    assert verdict["mismatched_nondeterministic_at_save"] == [144]
    assert verdict["nondeterministic_native"] == [24]
    assert verdict["nondeterministic_saved"] == [24, 144]
    assert against_native([1, 144], here, restored, None) == {"mismatched": [144], "nondeterministic_native": []}


def test_digests_are_taken_while_the_next_output_is_made_one_waiting_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing (restored_digests, reference_outputs): each digest is hashlib's of the output's
    bytes, in the order submitted, and a submit returns only once the previous output is hashed,
    so no more than two outputs are held whatever the hashing's speed."""
    import time

    import torch

    from foundry_trace.bench import verify

    events: list[tuple[str, int]] = []
    real = verify.output_digest

    def slow(tensor: torch.Tensor) -> str:
        time.sleep(0.02)
        events.append(("hashed", int(tensor[0])))
        return real(tensor)

    monkeypatch.setattr(verify, "output_digest", slow)
    hashing = verify.Hashing()
    outputs = {str(i): torch.full((4,), float(i)) for i in range(5)}
    for key, output in outputs.items():
        hashing.submit(key, output)
        events.append(("submitted", int(key)))
    digests = hashing.results()
    assert list(digests) == list(outputs)
    assert digests == {key: hashlib.sha256(output.numpy().tobytes()).hexdigest() for key, output in outputs.items()}
    for i in range(1, 5):
        assert events.index(("hashed", i - 1)) < events.index(("submitted", i))


def test_piecewise_workloads_spend_two_checking_replays_and_the_full_latency_effort() -> None:
    from foundry_trace.bench.verify import FULL, PIECEWISE, effort_of

    assert effort_of("piecewise") == effort_of("piecewise-compiled") == PIECEWISE
    assert PIECEWISE.reference_replays == 2 < FULL.reference_replays
    assert (PIECEWISE.latency_rounds, PIECEWISE.latency_batches) == (FULL.latency_rounds, FULL.latency_batches)
    assert effort_of("llama8b") == FULL


def test_a_comparison_of_some_batch_sizes_names_them_and_compares_those_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench tp --compare latency: 8 ranks on one GPU at full size compare the latency batch
    sizes only; the result says which, and a full comparison says none were left out."""
    from foundry_trace.bench import verify

    seen: list[list[int]] = []

    def each_batch(engine, restored, sizes, latency_batches, communicator, effort, spent):  # noqa: ANN001, ANN202
        seen.append(list(sizes))
        return {str(b): {"digest": "d", "deterministic": True} for b in sizes}, {str(b): "d" for b in sizes}, {}

    monkeypatch.setattr(verify, "restored_batches", lambda restored: [1, 2, 64, 256])
    monkeypatch.setattr(verify, "_compare_each_batch", each_batch)
    some = verify.compare(None, SimpleNamespace(graphs={}), batch_by_batch=True, only=(1, 64, 256, 512))
    assert seen[-1] == [1, 64, 256] and some["compared_batches"] == [1, 64, 256] and some["bitwise_equal"] and some["steps"] == 3
    every = verify.compare(None, SimpleNamespace(graphs={}), batch_by_batch=True)
    assert seen[-1] == [1, 2, 64, 256] and every["compared_batches"] is None
    assert every["native_s"] == every["compare_s"]["capture"] == 0.0 and set(every["compare_s"]) >= {"capture", "references", "restored", "latency"}

"""The command lines that only GPU tests hand to bench children, parsed and dispatched here as the
children do it, each child's work stubbed: a child's flags or positional arguments changed under
them (a rank's threads were positional once, which the GPU tests' rank commands did not give)
fail here instead of in a device call."""

from __future__ import annotations

import pytest

from foundry_trace.restore import DEFAULT_THREADS

from .gpu.test_coverage_gpu import CASES
from .gpu.test_peer_gpu import TINY
from .gpu.test_tp_gpu import LLAMA, OPTIONS

TP_CHILDREN = ("child_save", "child_native", "child_driver", "child_load", "child_memory")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # tests/gpu/test_tp_gpu.py: the archives fixtures, one rank's LOAD, two native and two LOAD ranks
        (["save", "small", "2", "/a/tp2.foundry", "nccl", *OPTIONS],
         ("child_save", ("small", 2, "/a/tp2.foundry", "nccl", {"layers": 2, "batch_sizes": (1, 8, 64)}))),
        (["save", "llama8b", "1", "/a/tp1.foundry", "nccl", *LLAMA],
         ("child_save", ("llama8b", 1, "/a/tp1.foundry", "nccl", {"attention": "math", "layers": 2, "batch_sizes": (1, 8, 64, 256)}))),
        (["load", "small", "/a", "nccl", *OPTIONS],
         ("child_load", ("small", "/a", "nccl", DEFAULT_THREADS, "all", {"layers": 2, "batch_sizes": (1, 8, 64)}, None, None))),
        (["native", "llama8b", "nccl", *LLAMA],
         ("child_native", ("llama8b", "nccl", {"attention": "math", "layers": 2, "batch_sizes": (1, 8, 64, 256)}))),
        (["load", "llama8b", "/a", "nccl", *LLAMA],
         ("child_load", ("llama8b", "/a", "nccl", DEFAULT_THREADS, "all", {"attention": "math", "layers": 2, "batch_sizes": (1, 8, 64, 256)}, None, None))),
        # tests/gpu/test_peer_gpu.py: the SAVE of two ranks' archive, each rank of the killed LOAD
        (["save", "tiny", "2", "/a/tp2.foundry", "peer", *TINY], ("child_save", ("tiny", 2, "/a/tp2.foundry", "peer", {"batch_sizes": (1, 8)}))),
        (["load", "tiny", "/a", "peer", *TINY], ("child_load", ("tiny", "/a", "peer", DEFAULT_THREADS, "all", {"batch_sizes": (1, 8)}, None, None))),
        # the bench's own (tp_bench._degree_case, free_memory)
        (["driver", "tiny", "/a", "peer", "--layers", "2", "--threads", "4"], ("child_driver", ("tiny", "/a", "peer", 4, {"layers": 2}))),
        (["load", "tiny", "/a", "peer", "--threads", "4", "--compare", "latency"], ("child_load", ("tiny", "/a", "peer", 4, "latency", {}, None, None))),
        (["load", "tiny", "/a", "peer", "--threads", "4", "--builders", "2", "--compare", "none"],
         ("child_load", ("tiny", "/a", "peer", 4, "none", {}, 2, None))),
        (["load", "tiny", "/a", "peer", "--threads", "4", "--builders", "1", "--chunk-nodes", "1000000", "--compare", "none"],
         ("child_load", ("tiny", "/a", "peer", 4, "none", {}, 1, 1000000))),
        (["memory"], ("child_memory", ())),
    ],
)
def test_the_gpu_tests_rank_commands_reach_their_tp_child(argv: list[str], expected: tuple[str, tuple], monkeypatch: pytest.MonkeyPatch) -> None:
    from foundry_trace.bench import tp_bench

    called: list[tuple[str, tuple]] = []
    for name in TP_CHILDREN:
        monkeypatch.setattr(tp_bench, name, lambda *arguments, name=name: called.append((name, arguments)) or {})
    tp_bench._run(tp_bench._parser().parse_args(argv))
    assert called == [expected]


@pytest.mark.parametrize("case", list(CASES))
def test_the_coverage_gpu_tests_save_and_verify_commands_reach_their_role(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/gpu/test_coverage_gpu.py's save_and_verify: `small-flash` is the small workload
    with flash attention, the others the workload of their name."""
    from foundry_trace.bench import roles
    from foundry_trace.bench.workloads.registry import WORKLOADS

    called: list[tuple] = []
    monkeypatch.setattr(roles, "save", lambda workload, archive, options, references: called.append((workload, options, references)) or {})
    monkeypatch.setattr(roles, "verify", lambda workload, archive, threads, options: called.append((workload, options, threads)) or {})
    workload = case.split("-")[0] if case.startswith("small-") else case
    for role in ("save", "verify"):
        roles._run(roles._parser().parse_args([role, workload, "/a.foundry", *CASES[case]]))
    (saved, saved_options, references), (verified, verified_options, threads) = called
    assert saved == verified == workload in WORKLOADS and references and threads == DEFAULT_THREADS
    assert saved_options == verified_options and saved_options["batch_sizes"] == (1, 8, 64)
    assert saved_options.get("attention") == (case.split("-")[1] if case.startswith("small-") else None)

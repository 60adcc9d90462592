"""The peer communicator with two ranks on ONE GPU (what every GPU machine can run): its sums bit
for bit against the rank-ordered float32 reference, a missing peer turned into StallError within
the stall time-out, a tensor-parallel archive SAVEd on one GPU restored unchanged by both ranks
(one digest, each rank's logits shard bit for bit with a native two-rank capture, the shards
tiling the vocabulary), and a rank killed mid-LOAD: its peer raises within the time-out and the
GPU's memory is free again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from foundry_trace.bench.children import ENV_TIMEOUT, run_child

from ..conftest import clean_environment
from .ranks import kill_rank_one_at_load

pytestmark = pytest.mark.gpu
MODULE = "foundry_trace.bench.tp_bench"
TINY = ["--batch-sizes", "1,8"]


def test_two_ranks_on_one_gpu_sum_bit_for_bit_eagerly_and_in_graphs() -> None:
    from foundry_trace.bench.probes.peer_collectives import run

    results = run("check", [2], timeout=240)[2]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for result in results:
        assert result["mismatched"] == [], f"rank {result['rank']}: {result['mismatched']}"


def test_a_peer_that_never_arrives_raises_stall_error_within_the_stall_time_out() -> None:
    from foundry_trace.bench.probes.peer_collectives import run

    waiting = next(r for r in run("stall", [2], stall_timeout=2.0, timeout=120)[2] if r["rank"] == 0)
    assert waiting["raised_after_s"] is not None and 2.0 <= waiting["raised_after_s"] < 4.0, waiting
    assert "rank 0 of 2" in waiting["error"] and "for rank 1" in waiting["error"], waiting["error"]


def test_one_archive_saved_on_one_gpu_restores_unchanged_on_both_ranks(tmp_path: Path) -> None:
    from foundry_trace.bench.tp_bench import run

    results = run("tiny", None, degrees="2", archive=tmp_path, layers=2, communicator="peer")
    (case,) = results["cases"]
    assert case["degree"] == 2 and case["ranks_per_gpu"] == 2
    assert case["collective_nodes"] > 0, "the archive holds the peer all-reduce kernels"
    assert case["ranks_bitwise_equal"] == [True, True], case["mismatched_by_rank"]
    assert case["logits"] == "vocabulary-parallel" and case["logit_shards_cover_vocabulary"], case["logit_rows_by_rank"]
    assert len(set(case["archive_digests"])) == 1
    early = case["prefetch_cold"]
    assert early["bitwise_equal_to_load_by_rank"] == [True, True], early  # prefetch() before the communicator and the engine


def test_a_rank_killed_mid_load_stops_its_peer_within_the_time_out(tmp_path: Path) -> None:
    """Rank 1 is killed as it starts LOAD; rank 0 must raise (its peer left) well within its
    time-out, and the GPU's memory must be free afterwards."""
    from foundry_trace.bench.tp_bench import peer_rank_environment

    archive = tmp_path / "tp2.foundry"
    run_child(MODULE, ["save", "tiny", "2", str(archive), "peer", *TINY], clean_environment(), timeout=300)
    timeout = 60
    socket = str(tmp_path / "rendezvous.sock")
    processes = []
    for rank in range(2):
        env = {**peer_rank_environment(rank, 2, socket), **clean_environment(FOUNDRY_PEER_SOCKET=socket), ENV_TIMEOUT: str(timeout)}
        processes.append(subprocess.Popen(
            [sys.executable, "-P", "-m", MODULE, "load", "tiny", str(tmp_path), "peer", *TINY], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env,
        ))
    elapsed, status, errors = kill_rank_one_at_load(processes, timeout + 30)
    assert elapsed < 30, "rank 0 must see its peer leave at once, not at its time-out"
    assert status != 0, "rank 0 cannot have finished without its peer"
    assert "StallError" in errors and "rank 1" in errors, errors[-3000:]
    probe = "import json, torch; print(json.dumps(torch.cuda.mem_get_info(0)))"
    available, total = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=clean_environment(), timeout=120).stdout)
    assert total - available < 4 << 30, f"GPU memory still held after the ranks ended: {available} of {total} free"

"""Tensor parallelism from a single-GPU SAVE: one rank's step SAVEd per degree with no peer, then
restored by ranks that bind their live NCCL communicator (the children of `foundry bench tp`).
One GPU runs degree 1 through the same path (a one-rank NCCL communicator, collectives bound);
two ranks need two GPUs: native ranks that capture and close under a time-out, a two-rank LOAD of
llama8b shapes whose replays take milliseconds (so the ranks' own timings differ), and a rank
killed mid-LOAD, after which its peer ends within the time-out and the GPUs are free again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundry_trace.bench.children import ENV_TIMEOUT, run_child

from ..conftest import clean_environment
from .ranks import kill_rank_one_at_load

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ["--layers", "2", "--batch-sizes", "1,8,64"]
LLAMA = ["--layers", "2", "--batch-sizes", "1,8,64,256", "--attention", "math"]
MODULE = "foundry_trace.bench.tp_bench"
two_gpus = pytest.mark.skipif("__import__('torch').cuda.device_count() < 2", reason="two ranks need two GPUs")


def child(role: str, *arguments: str, options: list[str] = OPTIONS) -> dict:
    from foundry_trace.bench.tp_bench import rank_environment

    return run_child(MODULE, [role, *arguments, *options], {**rank_environment(0), **clean_environment()}, timeout=600)


def ranks(role: str, *arguments: str, options: list[str], timeout: float = 300) -> list[dict]:
    from foundry_trace.bench.tp_bench import run_degree

    return run_degree([role, *arguments, *options], 2, timeout=timeout)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    directory = tmp_path_factory.mktemp("tp")
    saved = {degree: child("save", "small", str(degree), str(directory / f"tp{degree}.foundry"), "nccl") for degree in (1, 2, 4)}
    return directory, saved


@pytest.fixture(scope="module")
def llama_archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tp1 and tp2 of llama8b shapes with 2 layers, from one offline run on one GPU."""
    directory = tmp_path_factory.mktemp("tp-llama")
    for degree in (1, 2):
        child("save", "llama8b", str(degree), str(directory / f"tp{degree}.foundry"), "nccl", options=LLAMA)
    return directory


def test_one_save_run_writes_an_archive_per_degree(archives: tuple[Path, dict[int, dict]]) -> None:
    from foundry_trace.archive.format import Archive

    directory, saved = archives
    for degree, result in saved.items():
        with Archive(directory / f"tp{degree}.foundry") as archive:
            manifest = archive.manifest
            assert manifest.tensor_parallel == degree
            assert len(manifest.collectives) == result["collectives"] > 0
            nodes = [n for entry in manifest.graphs for n in archive.graph(entry).nodes if n.kind == "collective"]
            assert len(nodes) == 3 * 2 * 2, "two all-reduces per layer in each of the three graphs"
            assert all(s.dtype == "bfloat16" and s.operation == "all_reduce" for s in manifest.collectives)


def test_each_degrees_archive_inspects_as_its_degree_with_the_same_collectives(archives: tuple[Path, dict[int, dict]]) -> None:
    from foundry_trace.bench.tp_bench import disagreeing_graphs, inspect_archives

    directory, saved = archives
    inspected = inspect_archives(directory, sorted(saved))
    for degree, found in inspected.items():
        assert found["archive_degree"] == degree and found["graphs"] == 3
        assert found["collectives_per_graph"] == [2 * 2], "two all-reduces per layer in every graph"
        assert {bytes_ for _, bytes_ in found["per_graph"].values()} == {2 * 2 * b * 1024 * 2 for b in (1, 8, 64)}
    assert disagreeing_graphs(inspected) == []


def test_one_rank_binds_its_communicator_and_matches_a_native_capture(archives: tuple[Path, dict[int, dict]]) -> None:
    directory, _ = archives
    result = child("load", "small", str(directory), "nccl")
    assert "collectives" in result["phases"]
    assert result["graphs"] == 3
    assert result["bitwise_equal"], f"restored graphs differ from the native TP capture: {result['mismatched']}"


def test_a_degree_the_communicator_does_not_have_is_refused_and_leaves_nothing(archives: tuple[Path, dict[int, dict]]) -> None:
    directory, _ = archives
    program = f"""
import foundry_alloc; foundry_alloc.install()
import torch, foundry_trace
from foundry_trace.bench.workloads.registry import build_engine
from foundry_trace.errors import NcclError, TensorParallelError
from foundry_trace.parallel import NcclCommunicator
from foundry_trace.parallel.nccl import new_unique_id
foundry_alloc.reserve()
with NcclCommunicator(0, 1, new_unique_id(), timeout=60) as communicator:
    engine = build_engine("small", communicator=communicator, layers=2, batch_sizes=(1, 8, 64))  # as the SAVE child built it
    before = foundry_alloc.mappings(0)
    try:
        foundry_trace.load({str(directory / 'tp2.foundry')!r}, communicator=communicator)
    except TensorParallelError as error:
        print("refused:", error)
    assert foundry_alloc.mappings(0) == before, "the refusal left memory behind"
    restored = foundry_trace.load({str(directory / 'tp1.foundry')!r}, communicator=communicator)
    try:
        communicator.close()
    except NcclError as error:
        print("close refused:", error)
    restored.release()
print("closed after release")
"""
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, env=clean_environment(), timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "saved for tensor parallelism 2, but the communicator has 1 ranks" in completed.stdout
    assert "close refused: rank 0 of 1:" in completed.stdout and "release the Restored" in completed.stdout
    assert "closed after release" in completed.stdout


@two_gpus
def test_two_native_ranks_capture_and_close_under_a_time_out() -> None:
    start = time.monotonic()
    results = ranks("native", "llama8b", "nccl", options=LLAMA, timeout=240)
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["graphs"] == 4 for r in results)
    assert time.monotonic() - start < 240


@two_gpus
def test_two_ranks_restore_llama_shapes_and_match_native_tp_bit_for_bit(llama_archives: Path) -> None:
    results = ranks("load", "llama8b", str(llama_archives), "nccl", options=LLAMA, timeout=300)
    for result in results:
        assert result["graphs"] == 4
        assert not result["nondeterministic_native"], f"rank {result['rank']}: math attention must be deterministic"
        assert result["bitwise_equal"], f"rank {result['rank']}: {result['mismatched']}"


@two_gpus
def test_a_rank_killed_mid_load_ends_its_peer_within_the_time_out_and_frees_the_gpus(llama_archives: Path) -> None:
    """Rank 1 is killed as it starts LOAD; rank 0, left alone, must end by itself (its own
    watchdog, or NCCL's error) within its time-out, and both GPUs must be free afterwards."""
    from foundry_trace.bench.tp_bench import free_port, rank_environment

    port, timeout = free_port(), 60
    processes = []
    for rank in range(2):
        env = {**rank_environment(rank, rank, 2, port), **clean_environment(), ENV_TIMEOUT: str(timeout)}
        env.update(CUDA_VISIBLE_DEVICES=str(rank), RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        processes.append(subprocess.Popen(
            [sys.executable, "-P", "-m", MODULE, "load", "llama8b", str(llama_archives), "nccl", *LLAMA], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env,
        ))
    elapsed, status, errors = kill_rank_one_at_load(processes, timeout + 30)
    assert elapsed < timeout + 30
    assert status != 0, "rank 0 cannot have finished without its peer"
    assert "Timeout" in errors or "NcclError" in errors or "Stall" in errors, errors[-3000:]
    probe = "import json, torch; print(json.dumps([torch.cuda.mem_get_info(d) for d in range(2)]))"
    free = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=clean_environment(), timeout=120).stdout)
    for available, total in free:
        assert total - available < 4 << 30, f"GPU memory still held after the ranks ended: {free}"

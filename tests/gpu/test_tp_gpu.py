"""Tensor parallelism from a single-GPU SAVE: one rank's step SAVEd per degree with no peer, then
restored by ranks that bind their live NCCL communicator (the children of `foundry bench tp`).
One GPU runs degree 1 through the same path (a one-rank NCCL communicator, collectives bound);
two ranks need two GPUs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from foundry_trace.bench_children import run_child

from ..conftest import clean_environment

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ["--layers", "2", "--batch-sizes", "1,8,64"]


def child(role: str, *arguments: str, rank: int = 0, ranks: int = 1, port: int = 0) -> dict:
    environment = clean_environment(CUDA_VISIBLE_DEVICES=str(rank), RANK=str(rank), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    environment.setdefault("NCCL_NVLS_ENABLE", "0")
    return run_child("foundry_trace.bench_tp", [role, *arguments, *OPTIONS], environment, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    directory = tmp_path_factory.mktemp("tp")
    saved = {degree: child("save", "small", str(degree), str(directory / f"tp{degree}.foundry")) for degree in (1, 2, 4)}
    return directory, saved


def test_one_save_run_writes_an_archive_per_degree(archives: tuple[Path, dict[int, dict]]) -> None:
    from foundry_trace.archive import Archive

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
    from foundry_trace.bench_tp import disagreeing_graphs, inspect_archives

    directory, saved = archives
    inspected = inspect_archives(directory, sorted(saved))
    for degree, found in inspected.items():
        assert found["archive_degree"] == degree and found["graphs"] == 3
        assert found["collectives_per_graph"] == [2 * 2], "two all-reduces per layer in every graph"
        assert {bytes_ for _, bytes_ in found["per_graph"].values()} == {2 * 2 * b * 1024 * 2 for b in (1, 8, 64)}
    assert disagreeing_graphs(inspected) == []


def test_one_rank_binds_its_communicator_and_matches_a_native_capture(archives: tuple[Path, dict[int, dict]]) -> None:
    directory, _ = archives
    result = child("load", "small", str(directory))
    assert "collectives" in result["phases"]
    assert result["graphs"] == 3
    assert result["bitwise_equal"], f"restored graphs differ from the native TP capture: {result['mismatched']}"


def test_a_degree_the_communicator_does_not_have_is_refused_and_leaves_nothing(archives: tuple[Path, dict[int, dict]]) -> None:
    directory, _ = archives
    program = f"""
import foundry_alloc; foundry_alloc.install()
import torch, foundry_trace
from foundry_trace.errors import TensorParallelError
from foundry_trace.nccl import NcclCommunicator, new_unique_id
torch.zeros(1, device="cuda")
before = foundry_alloc.mappings(0)
communicator = NcclCommunicator(0, 1, new_unique_id())
try:
    foundry_trace.load({str(directory / 'tp2.foundry')!r}, communicator=communicator)
except TensorParallelError as error:
    print("refused:", error)
assert foundry_alloc.mappings(0) == before, "the refusal left memory behind"
"""
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, env=clean_environment(), timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "saved for tensor parallelism 2, but the communicator has 1 ranks" in completed.stdout


@pytest.mark.skipif("__import__('torch').cuda.device_count() < 2", reason="two ranks need two GPUs")
def test_two_ranks_restore_one_archive_and_match_native_tp(archives: tuple[Path, dict[int, dict]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from foundry_trace.bench_tp import _free_port

    directory, _ = archives
    port = _free_port()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda rank: child("load", "small", str(directory), rank=rank, ranks=2, port=port), range(2)))
    for result in results:
        assert result["bitwise_equal"], f"rank {result['rank']}: {result['mismatched']}"

"""The allocator on a real GPU, each scenario in fresh processes (an allocator is chosen once per process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import foundry_alloc as fa

from ..conftest import clean_environment

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def run_program(*arguments: str, **env: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.gpu.alloc_program", *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_environment(**env),
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def layout_runs() -> tuple[dict, dict, dict]:
    return run_program("layout"), run_program("layout"), run_program("layout", "--noisy")


def test_two_fresh_processes_give_identical_addresses(layout_runs: tuple[dict, dict, dict]) -> None:
    first, second, _ = layout_runs
    assert first["tensors"] == second["tensors"]
    assert first["graphs"] == second["graphs"]
    assert first["layout"] == second["layout"]
    assert first["graph_blocks"] > 0, "nothing was allocated during capture"
    config = fa.AllocatorConfig.create()
    assert all(config.base <= address < config.base + config.size for address, _ in first["tensors"].values())


def test_graphs_captured_under_foundry_replay_correctly(layout_runs: tuple[dict, dict, dict]) -> None:
    for run in layout_runs:
        assert all(graph["replay_equals_eager"] for graph in run["graphs"].values())


def test_other_transient_and_warm_up_traffic_moves_nothing(layout_runs: tuple[dict, dict, dict]) -> None:
    first, _, noisy = layout_runs
    assert noisy["tensors"] == first["tensors"]
    assert noisy["graphs"] == first["graphs"]
    if noisy["fingerprint"] != first["fingerprint"]:
        diff = fa.diff_layouts(fa.Layout(**first["layout"]), fa.Layout(**noisy["layout"]))
        pytest.fail(diff.render("quiet run", "noisy run"))


def test_out_of_memory_is_torchs_error_with_foundry_stats() -> None:
    result = run_program("out_of_memory")
    kind, message = result["error"]
    assert kind == "OutOfMemoryError", (message, result["torch_oom_available"])
    assert "Foundry holds" in message and "By arena" in message
    assert result["still_works"]


def test_install_after_cuda_was_used_is_refused() -> None:
    result = run_program("install_after_cuda")
    assert result["error"] and "call install() before the first CUDA tensor" in result["error"]


def test_unavailable_range_names_it_and_suggests_another_base() -> None:
    result = run_program("range_taken")
    assert "overlaps" in result["install_error"] and "FOUNDRY_ALLOC_BASE=0x" in result["install_error"]
    for key in ("reserve_error", "tensor_error"):
        assert "cannot reserve the fixed range [0x200000000000" in result[key]
        assert "FOUNDRY_ALLOC_BASE" in result[key] and "e.g. 0x" in result[key]


def test_environment_activation_installs_without_code_changes(regular_install: tuple[Path, Path], tmp_path: Path) -> None:
    """A program that never imports Foundry, in an environment where it is installed (the
    start-up hook, foundry_alloc.pth, comes with a regular install): FOUNDRY_ALLOC=1 installs
    the allocator on the configured range when the program imports torch."""
    _, python = regular_install
    program = tmp_path / "plain.py"
    program.write_text(
        "import json, torch\n"
        "tensor = torch.ones(1000, device='cuda')\n"
        "import foundry_alloc as fa\n"
        "config = fa.installed_config()\n"
        "print(json.dumps({'installed': fa.installed() is not None, 'pointer': tensor.data_ptr(),"
        " 'base': config.base if config else None, 'size': config.size if config else None}))\n"
    )
    completed = subprocess.run(
        [str(python), str(program)], capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env=clean_environment(FOUNDRY_ALLOC="1", FOUNDRY_ALLOC_BASE="0x300000000000", FOUNDRY_ALLOC_SIZE="1T"),
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["installed"] and result["base"] == 0x300000000000
    assert result["base"] <= result["pointer"] < result["base"] + result["size"]


def test_empty_cache_keeps_graph_memory() -> None:
    result = run_program("empty_cache_keeps_graphs")
    assert result["released"] > 0
    assert result["graph_mapped_kept"]
    assert result["same_output"]


def test_allocations_on_several_streams() -> None:
    assert run_program("multistream")["all_correct"]

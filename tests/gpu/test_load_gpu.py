"""LOAD on a real GPU: an archive saved in one process restores in another, bit for bit, in every
mode; every refusal is clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import clean_environment

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def run(name: str, archive: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.gpu.load_program", name, str(archive)],
        capture_output=True, text=True, cwd=ROOT, env=clean_environment(), timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("load") / "tiny.foundry"
    run("save", path)
    return path


def test_restored_graphs_equal_saved_and_native_ones_bit_for_bit(archive: Path) -> None:
    result = run("load", archive)
    assert result["graphs"] == 4
    assert result["bitwise_equal_saved"] and not result["nondeterministic_saved"], result
    assert result["bitwise_equal"], result
    assert result["released_blocks"] > 0
    for batch, latency in result["latency"].items():
        assert latency["restored_ms"] > 0, batch


def test_background_and_lazy_loads_give_the_same_outputs(archive: Path) -> None:
    result = run("modes", archive)
    assert result["lazy"]["ready_at_return"] == 0
    assert result["lazy"]["started"] == [result["lazy"]["first"]], result  # the smallest batch, at once
    assert len(result["background"]["started"]) == 4, result
    for mode in ("background", "lazy"):  # graphs in serving order, each built after its modules
        assert result[mode]["order"] == sorted(result[mode]["order"], key=int) and result[mode]["builds_after_modules"], result
    for mode in ("background", "lazy"):
        assert result[mode]["equal_saved"] and result[mode]["compared"] == 4, result


def test_prefetch_at_process_start_then_load_gives_the_same_outputs(archive: Path) -> None:
    result = run("prefetch", archive)
    for mode in ("eager", "background", "lazy"):
        assert result[mode]["equal_saved"] and result[mode]["compared"] == 4, result


def test_prefetch_builds_graphs_with_memsets_and_memcpys_into_graph_memory_before_the_engine_exists(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path = tmp_path_factory.mktemp("streams") / "streams.foundry"
    run("save-streams", path)
    result = run("prefetch-copies", path)
    assert result["copy_arenas"] == ["graph"], result
    assert result["built_early"] == result["graphs"] == 7, result
    assert result["equal_saved"] and result["compared"] == 7, result


def test_a_different_engine_layout_is_refused_with_a_diff(archive: Path) -> None:
    result = run("wrong-layout", archive)
    assert result["error"] and "only in here" in result["error"]
    assert result["unchanged"]


def test_graph_memory_held_by_the_process_is_refused_with_the_layout_diff(archive: Path) -> None:
    result = run("graph-memory-held", archive)
    for way in ("load", "prefetch"):
        held = [line for line in (result[way]["error"] or "").splitlines() if line.strip().startswith("+ graph ")]
        assert held and all(line.endswith("only in here") for line in held), (way, result)
        assert result[way]["unchanged"], (way, result)


def test_every_refusal_is_clean_and_leaves_nothing_behind(archive: Path) -> None:
    result = run("refusals", archive)
    for name in ("fingerprint", "missing_section", "corrupted_blob", "driver_refusal"):
        assert result[name]["outcomes"] == ["refused"] * 3, (name, result[name])
        assert result[name]["unchanged"], (name, result)
    assert result["retry_loads"] and result["unchanged_after_retry"], result


def test_a_signed_archive_restores_and_unsigned_foreign_or_tampered_ones_are_refused_leaving_nothing(archive: Path) -> None:
    result = run("trust", archive)
    assert result["signed"]["equal_saved"] and result["signed"]["compared"] == 4, result
    assert "signed by nobody" in result["unsigned"], result
    assert "only archives signed by a trusted key" in result["stranger"], result
    assert "changed after it was signed" in result["tampered"], result
    assert result["unchanged"], result


def test_a_failing_graph_in_lazy_and_background_loads_releases_the_whole_load(archive: Path) -> None:
    result = run("lazy-failure", archive)
    for mode in ("lazy", "background"):
        outcome = result[mode]
        assert outcome["error"] and "released everything this load made" in outcome["error"], result
        assert outcome["first_after_release"] == "refused", result
        assert outcome["unchanged"], result

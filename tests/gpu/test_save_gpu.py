"""SAVE on a real GPU: tracing, walking, archive writing and refusals, in fresh processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import clean_environment
from ..cubin_checks import ENTRIES

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def run_scenario(name: str, archive: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.gpu.save_program", name, str(archive)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_environment(),
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    archive = tmp_path_factory.mktemp("save") / "tiny.foundry"
    return run_scenario("save", archive), archive


def test_save_writes_every_graph_and_kernel(saved: tuple[dict, Path]) -> None:
    result, archive = saved
    summary = result["summary"]
    assert sorted(g["key"] for g in summary["graphs"]) == ["1", "2", "4", "8"]
    assert all(g["outputs"] == ["logits"] for g in summary["graphs"])
    assert summary["nodes_by_kind"].get("kernel", 0) > 0
    assert all(k["launches"] > 0 for k in summary["kernels"])
    assert summary["modules"] and summary["memory_segments"] > 0


def test_no_graph_is_truncated(saved: tuple[dict, Path]) -> None:
    for key, (walked, reported) in saved[0]["walked_vs_driver"].items():
        assert walked == reported, f"graph {key}: {walked} nodes walked, the driver reports {reported}"


def test_inspect_reads_the_archive(saved: tuple[dict, Path]) -> None:
    _, archive = saved
    completed = subprocess.run(
        [sys.executable, "-m", "foundry_trace.cli", "inspect", str(archive)], capture_output=True, text=True, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stderr
    assert "4 graphs" in completed.stdout and "kernels by launches" in completed.stdout


def test_saved_modules_hold_only_the_kernels_the_graphs_launch(saved: tuple[dict, Path]) -> None:
    from foundry_trace.archive.format import Archive
    from foundry_trace.binary.cubin import module_symbols

    with Archive(saved[1]) as archive:
        manifest = archive.manifest
        assert any(module.trimmed for module in manifest.modules)
        for index, module in enumerate(manifest.modules):
            if module.trimmed:
                used = {f.name for f in manifest.functions if f.module == index}
                assert used <= module_symbols(archive.blob(module.digest)).entries
                assert module.size < module.loaded_size


def test_a_module_is_cut_only_where_the_driver_accepts_it_and_keeps_changed_variables() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.gpu.module_image_program"], capture_output=True, text=True, cwd=ROOT, env=clean_environment(), timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    cases = json.loads(completed.stdout.strip().splitlines()[-1])
    kept_and_pointed_to = ["_Z10pointed_toPf", "_Z4keptPf"]
    expected = {"untouched": "compacted", "compacted_refused": "stubbed", "both_refused": "whole", "kernel_missing": "whole"}
    for case, cut in expected.items():
        assert cases[case]["cut"] == cut and cases[case]["trimmed"] is (cut != "whole"), case
        assert cases[case]["reported_cut"] == {"stubbed": "stubs"}.get(cut, cut), case
        assert (cases[case]["not_compacted"] is None) is (cut == "compacted"), case
        assert cases[case]["entries"] == (kept_and_pointed_to if cut != "whole" else ENTRIES), case
        assert cases[case]["runs_the_same"], case
    assert "compacted: declined: not a cubin" in cases["compacted_refused"]["not_compacted"]
    assert "stubs: declined: not a cubin" in cases["both_refused"]["not_compacted"]
    assert cases["kernel_missing"]["not_compacted"].count("a kept kernel is no longer an entry") == 2
    assert len(cases["both_refused"]["entries"]) == 6
    assert cases["jump_table"]["cut"] == "compacted" and cases["jump_table"]["runs_the_same"]
    assert cases["jump_table"]["entries"] == ["_Z10pointed_toPf", "_Z8switchedPi"]
    for case in expected:
        assert cases[case]["variables"] == [] and cases[case]["own_pointer"] and cases[case]["tag"] == 7, case
    written = cases["variable_written"]
    assert written["variables"] == ["scale", "tagged"] and written["relocated"] == {"tagged": [0]}, written
    assert written["scale"] == 5.0 and written["tag"] == 9 and written["own_pointer"] and written["cut"] == "compacted"


def test_host_callbacks_are_refused_by_name(tmp_path: Path) -> None:
    result = run_scenario("host_node", tmp_path / "host.foundry")
    assert result["error"] and "host node" in result["error"] and "host callback" in result["error"]
    assert not result["archive_left"]


def test_conditional_nodes_are_refused_by_name(tmp_path: Path) -> None:
    result = run_scenario("conditional_node", tmp_path / "conditional.foundry")
    assert result["error"] and "conditional" in result["error"] and "capture each branch" in result["error"]
    assert not result["archive_left"]


def test_kernels_loaded_before_tracing_are_named(tmp_path: Path) -> None:
    result = run_scenario("late_tracing", tmp_path / "late.foundry")
    assert result["error"] and "before tracing started" in result["error"]
    assert not result["archive_left"]


def test_micro_archive_for_ci(tmp_path: Path) -> None:
    """Writes the small real archive that the CPU suite reads (tests/data/micro.foundry)."""
    archive = tmp_path / "micro.foundry"
    result = run_scenario("micro", archive)
    assert result["bytes"] < 8 << 20
    if os.environ.get("OUT"):
        shutil.copy(archive, Path(os.environ["OUT"]) / "micro.foundry")


def test_environment_activation_saves_an_unmodified_program(regular_install: tuple[Path, Path], tmp_path: Path) -> None:
    """FOUNDRY_MODE=save on a program that knows nothing of Foundry, run where Foundry is
    installed as a container gets it (the start-up hook comes with a regular install)."""
    _, python = regular_install
    archive = tmp_path / "plain.foundry"
    completed = subprocess.run(
        [str(python), str(ROOT / "tests" / "gpu" / "plain_capture.py")], cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_environment(FOUNDRY_MODE="save", FOUNDRY_ARCHIVE=str(archive)),
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "foundry_trace: wrote" in completed.stderr
    from foundry_trace.archive.format import Archive

    with Archive(archive) as opened:
        assert [g.key for g in opened.manifest.graphs] == ["0", "1"]


def test_environment_activation_restores_an_opted_in_program(regular_install: tuple[Path, Path], tmp_path: Path) -> None:
    """One program, run under FOUNDRY_MODE=save then FOUNDRY_MODE=load: the second restores the
    graphs at foundry_trace.restore_point() and computes the same outputs bit for bit."""
    _, python = regular_install
    archive = tmp_path / "opt-in.foundry"
    outputs = {}
    for mode in ("save", "load"):
        completed = subprocess.run(
            [str(python), str(ROOT / "tests" / "gpu" / "opt_in_program.py")], cwd=tmp_path,
            capture_output=True, text=True, env=clean_environment(FOUNDRY_MODE=mode, FOUNDRY_ARCHIVE=str(archive)), timeout=600,
        )
        assert completed.returncode == 0, completed.stderr[-4000:]
        outputs[mode] = completed.stdout.split()
    assert outputs["save"][0] == "captured" and outputs["load"][0] == "restored"
    assert outputs["save"][1:] == outputs["load"][1:]

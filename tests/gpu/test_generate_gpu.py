"""examples/generate.py on a real GPU at a small size, each mode a fresh process as a user runs it:
native graphs, SAVE, LOAD (prefetch at process start) and eager give the same greedy tokens; then
`foundry bench e2e` on the same small model (its five graph runs; eager is checked above) writes
its case per batch size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import clean_environment, run_process_tree

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "generate.py"
SMALL = ["--config", "small", "--layers", "2", "--batch-sizes", "1,4", "--tokens", "24"]
RUN_TIMEOUT_S = 180  # a hung run fails its test, leaving the rest of the GPU suite the device call's time


def generate(folder: Path, *flags: str) -> dict[str, object]:
    output = folder / f"run-{len(list(folder.glob('run-*.json')))}.json"
    run = subprocess.run([sys.executable, str(EXAMPLE), *SMALL, *flags, "--output", str(output)], cwd=folder,
                         capture_output=True, text=True, env=clean_environment(), timeout=RUN_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-5000:]
    assert "first token" in run.stdout and "per token" in run.stdout, run.stdout
    return json.loads(output.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, dict[str, object]]]:
    folder = tmp_path_factory.mktemp("generate")
    archive = str(folder / "small.foundry")
    found: dict[str, dict[int, dict[str, object]]] = {"save": {1: generate(folder, "--save", archive)}}
    for mode, flags in (("native", ()), ("load", ("--load", archive)), ("eager", ("--eager",))):
        found[mode] = {batch: generate(folder, *flags, "--batch", str(batch)) for batch in (1, 4)}
    return found


def test_save_load_and_native_graphs_generate_the_same_tokens(runs: dict[str, dict[int, dict[str, object]]]) -> None:
    for batch in (1, 4):
        native = runs["native"][batch]["tokens"]
        assert len(native) == batch and all(len(row) == 24 for row in native)
        assert runs["load"][batch]["tokens"] == native, batch
    assert runs["save"][1]["tokens"] == runs["native"][1]["tokens"]
    assert runs["native"][4]["tokens"][0] != runs["native"][4]["tokens"][1], "each row has a prompt of its own"


def test_eager_generates_the_graphs_tokens(runs: dict[str, dict[int, dict[str, object]]]) -> None:
    """The example pins efficient attention, whose kernels give the same bits run after run, so
    the model is deterministic here and eager must agree too."""
    for batch in (1, 4):
        assert runs["eager"][batch]["tokens"] == runs["native"][batch]["tokens"], batch


def test_every_mode_reports_its_timings(runs: dict[str, dict[int, dict[str, object]]]) -> None:
    for mode, by_batch in runs.items():
        for report in by_batch.values():
            assert report["mode"] == mode and report["first_token_s"] > report["graph_phase_s"] >= 0, report
            assert report["per_token_ms"] > 0 and report["device"], report


def test_the_e2e_bench_writes_a_case_per_batch_size(tmp_path: Path) -> None:
    run = run_process_tree(
        [sys.executable, "-m", "foundry_trace.cli", "bench", "e2e", "--workload", "small", "--layers", "2", "--batches", "1,4",
         "--tokens", "12", "--repeats", "1", "--no-eager", "--output", str(tmp_path), "--json"],
        cwd=ROOT, env=clean_environment(), timeout=3 * RUN_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    [written] = tmp_path.glob("e2e-small-2-layers-*.json")
    results = json.loads(written.read_text())
    assert results["what"] == "e2e" and results["device"] and [c["name"] for c in results["cases"]] == ["small-b1", "small-b4"]
    for case in results["cases"]:
        assert case["tokens"] == 12 and case["tokens_equal"] is True and case["tokens_equal_eager"] is None, case
        assert case["graph_phase_speedup"] > 0 and case["per_token_ms_foundry"] > 0, case

"""Model code Foundry did not write, saved and restored in fresh processes through the public API
(the children of `foundry bench`): transformers models (dense and MoE), a torch.compile'd step,
two streams with event, memcpy and memset nodes, and the fused SDPA kernels. Each restored graph
must compute what SAVE's graph computed, bit for bit, and what a native capture computes here.
The cases run side by side on the one GPU (each in its own processes, none above a few GiB), so
that the whole GPU suite fits in one call of the device tool."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from foundry_trace.bench.children import run_child

from ..conftest import clean_environment

pytestmark = pytest.mark.gpu
SMALL = ["--batch-sizes", "1,8,64"]
CASES = {
    "hf-llama8b": ["--layers", "2", *SMALL],
    "hf-qwen3": ["--layers", "2", *SMALL],
    "hf-qwen3moe": ["--layers", "2", *SMALL],
    "compiled": ["--layers", "2", *SMALL],
    "streams": SMALL,
    "small-flash": ["--attention", "flash", *SMALL],
    "small-efficient": ["--attention", "efficient", *SMALL],
}


def child(*arguments: str) -> dict:
    return run_child("foundry_trace.bench.roles", list(arguments), clean_environment(), timeout=600)


def save_and_verify(case: str, directory: Path) -> tuple[Path, dict]:
    workload = case.split("-")[0] if case.startswith("small-") else case
    archive = directory / f"{case}.foundry"
    child("save", workload, str(archive), *CASES[case])
    return archive, child("verify", workload, str(archive), *CASES[case])


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Every case's archive and LOAD result (or the failure), all cases run at once."""
    directory = tmp_path_factory.mktemp("coverage")
    with ThreadPoolExecutor(len(CASES)) as pool:
        futures = {case: pool.submit(save_and_verify, case, directory) for case in CASES}
    return {case: future.exception() or future.result() for case, future in futures.items()}


def summary(archive: Path) -> dict:
    from foundry_trace.archive.summary import summarize

    return summarize(archive)


@pytest.mark.parametrize("case", list(CASES))
def test_restored_graphs_compute_what_saved_and_native_ones_do(case: str, outcomes: dict[str, object]) -> None:
    outcome = outcomes[case]
    if isinstance(outcome, BaseException):
        raise outcome
    archive, result = outcome
    assert result["graphs"] == 3
    assert result["bitwise_equal_saved"], f"restored graphs differ from SAVE's: {result['mismatched_saved']}"
    assert not result["nondeterministic_saved"], "SAVE's graphs were not deterministic: the case proves nothing"
    assert result["bitwise_equal"], f"restored graphs differ from a native capture: {result['mismatched']}"
    assert result["compiled_graphs_at_restore"] == 0, "the restore compiled something"
    kinds = summary(archive)["nodes_by_kind"]
    if case == "streams":
        for kind in ("event_record", "event_wait", "memcpy", "memset", "kernel"):
            assert kinds.get(kind, 0) >= 3, f"no {kind} node in each graph: {kinds}"

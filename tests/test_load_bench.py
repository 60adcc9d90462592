"""The load bench's cold ratio: repeated fresh-process runs, restore and driver alone
alternating, reported as the pairs' median with min and max."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_trace.bench import load_bench


def test_the_cold_ratio_is_the_median_of_alternating_pairs_with_min_and_max() -> None:
    runs = load_bench.cold_ratios([0.90, 1.00, 0.80], [0.80, 1.00, 1.00])
    assert (runs["ratio_median"], runs["ratio_min"], runs["ratio_max"]) == (1.0, 0.8, 1.125)
    assert (runs["restore_s_median"], runs["driver_cold_s_median"]) == (0.9, 1.0)
    with pytest.raises(ValueError):
        load_bench.cold_ratios([1.0, 1.0], [1.0])  # every restore has its driver-alone pair


def test_the_bench_runs_each_side_cold_three_times_alternating(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    order: list[str] = []

    def child(module: str, arguments: list[str]) -> dict[str, object]:
        order.append(arguments[0])
        return {"driver_cold_s": 1.0, "restore_s": 1.1, "nondeterministic_native": [], "mismatched": []}

    def role(name: str, workload: str, path: Path, **_: object) -> dict[str, object]:
        order.append(name)
        path.write_bytes(b"archive")
        return {"native_s": 9.0, "engine_s": 1.0}

    monkeypatch.setattr(load_bench, "run_child", child)
    monkeypatch.setattr(load_bench, "run_role", role)
    _, loaded = load_bench.run_children("small", 8)
    assert order == ["save", "native", "driver", "load", "driver", "cold", "driver", "cold", "prefetch"]
    assert loaded["cold_runs"]["ratio_median"] == pytest.approx(1.1)


def test_the_table_shows_the_repeated_cold_ratio() -> None:
    """A results file of the bench (H200, llama8b) with the repeated runs' fields added."""
    import json

    from foundry_trace.bench.load_report import render

    results = json.loads((Path(__file__).parents[1] / "bench/results/load-llama8b-67-h200-20261201.json").read_text())
    case = results["cases"][0]
    case["cold_runs"] = load_bench.cold_ratios([0.80, 0.78, 0.83], [0.76, 0.77, 0.80])
    case.update(restore_over_driver_cold=case["cold_runs"]["ratio_median"], restore_over_driver_cold_min=case["cold_runs"]["ratio_min"],
                restore_over_driver_cold_max=case["cold_runs"]["ratio_max"])
    table = render(results)
    assert "restore / driver alone cold: median of 3 pairs (min-max)" in table and "(1.013-1.053)" in table

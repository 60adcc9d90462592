"""The load bench's cold ratio: repeated fresh-process runs, restore and driver alone
alternating, reported as the pairs' median with min and max."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_trace.bench import driver_alone, load_bench
from foundry_trace.bench.budget import RESERVE_S, Budget


def test_the_cold_ratio_is_the_median_of_alternating_pairs_with_min_and_max() -> None:
    runs = driver_alone.cold_ratios([0.90, 1.00, 0.80], [0.80, 1.00, 1.00])
    assert (runs["ratio_median"], runs["ratio_min"], runs["ratio_max"]) == (1.0, 0.8, 1.125)
    assert (runs["restore_s_median"], runs["driver_cold_s_median"]) == (0.9, 1.0)
    with pytest.raises(ValueError):
        driver_alone.cold_ratios([1.0, 1.0], [1.0])  # every restore has its driver-alone pair


def _fake_children(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Every child the bench starts, as (role, its arguments), each answering with fixed figures."""
    calls: list[tuple[str, list[str]]] = []

    def child(module: str, arguments: list[str], **_: object) -> dict[str, object]:
        role = "checkpoint" if module == load_bench.CHECKPOINT_MODULE else arguments[0]
        calls.append((role, list(arguments)))
        return {"driver_build_s": 0.4, "driver_instantiate_s": 0.6, "driver_cold_s": 1.0, "restore_s": 1.1, "nondeterministic_native": [],
                "mismatched": [], "weights_load_s": 2.0, "ready_small_batches_s": 0.05, "ready_all_s": 1.2}

    def role(name: str, workload: str, path: Path, timeout: float | None = None, **options: object) -> dict[str, object]:
        calls.append((name, load_bench.option_arguments(options)))
        path.write_bytes(b"archive")
        return {"native_s": 9.0, "engine_s": 1.0, "weights_load_s": 2.5}

    monkeypatch.setattr(load_bench, "run_child", child)
    monkeypatch.setattr(load_bench, "run_role", role)
    return calls


def _ticking_children(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[str, list[str]]], list[float]]:
    """_fake_children, each child taking 10 s of the fake clock returned (clock[0])."""
    clock = [0.0]
    calls = _fake_children(monkeypatch)

    def ticking(call):  # noqa: ANN001, ANN202
        def run(*arguments, **options):  # noqa: ANN002, ANN003, ANN202
            clock[0] += 10.0
            return call(*arguments, **options)
        return run

    monkeypatch.setattr(load_bench, "run_child", ticking(load_bench.run_child))
    monkeypatch.setattr(load_bench, "run_role", ticking(load_bench.run_role))
    return calls, clock


def test_the_bench_runs_each_side_cold_three_times_alternating(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_children(monkeypatch)
    _, loaded = load_bench.run_children("small", 8)
    assert [role for role, _ in calls] == ["save", "native", "driver", "load", "prefetch", "background", "driver", "cold", "driver", "cold"]
    assert loaded["cold_runs"]["ratio_median"] == pytest.approx(1.1)
    assert loaded["driver_alone"] == {"driver_build_s": 0.4, "driver_instantiate_s": 0.6, "driver_cold_s": 1.0}
    assert loaded["checkpoint"] is None and not any("--checkpoint" in arguments for _, arguments in calls)


def test_a_large_workload_writes_its_checkpoint_first_and_every_child_loads_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_children(monkeypatch)
    folder = tmp_path / "weights"
    _, loaded = load_bench.run_children("qwen3-235b-rank", 8, layers=4, checkpoint=folder)
    assert calls[0] == ("checkpoint", ["qwen3-235b-rank", str(folder), "--layers", "4"])
    assert [role for role, _ in calls[1:]] == ["save", "native", "driver", "load", "prefetch", "background", "driver", "cold", "driver", "cold"]
    for _, arguments in calls[1:]:
        assert arguments[arguments.index("--checkpoint") + 1] == str(folder) and arguments[arguments.index("--layers") + 1] == "4"
    assert loaded["weights_load_s_by_child"] == {
        "native": 2.5, "driver": [2.0, 2.0, 2.0], "load": 2.0, "cold": [2.0, 2.0], "prefetch": 2.0, "background": 2.0, "save": 2.5,
    }


def test_the_checkpoint_goes_where_asked_else_into_scratch_for_large_workloads_only(tmp_path: Path) -> None:
    from foundry_trace.errors import WorkloadError

    assert load_bench.checkpoint_folder("qwen3-235b-rank", None, tmp_path) == tmp_path / "checkpoint"
    assert load_bench.checkpoint_folder("qwen3-235b-rank", "/dev/shm/q", tmp_path) == Path("/dev/shm/q")
    assert load_bench.checkpoint_folder("hf-qwen3moe", None, tmp_path) is None
    assert load_bench.checkpoint_folder("hf-qwen3moe", tmp_path / "w", tmp_path) == tmp_path / "w"
    with pytest.raises(WorkloadError, match="workload 'small' draws its weights in place"):
        load_bench.checkpoint_folder("small", tmp_path / "w", tmp_path)


def test_results_files_name_the_layers_of_a_scaled_down_workload() -> None:
    assert load_bench.workload_label("qwen3-235b-rank", 67, None) == "qwen3-235b-rank-67"
    assert load_bench.workload_label("qwen3-235b-rank", 67, None, 4) == "qwen3-235b-rank-67-4-layers"
    assert load_bench.workload_label("llama8b", 67, "math") == "llama8b-67-math-attention"


def test_large_workloads_spend_fewer_checking_replays_and_others_the_full_effort() -> None:
    from foundry_trace.bench.verify import FULL, effort_of

    assert effort_of("qwen3-235b-rank").reference_replays == 2 < FULL.reference_replays
    assert effort_of("qwen3-235b-rank").latency_batches == FULL.latency_batches
    assert effort_of("hf-qwen3moe") == FULL


def test_the_archive_counts_are_what_inspect_counts() -> None:
    from foundry_trace.bench.load_roles import archive_counts

    counts = archive_counts(Path(__file__).parent / "data" / "micro.foundry")
    assert counts == {"nodes": 2, "kernel_nodes": 2, "nodes_by_kind": {"kernel": 2}, "kernel_functions": 2, "modules": 2, "templates": 1}


def test_the_first_steps_modules_are_listed_largest_first_with_what_they_hold() -> None:
    from foundry_trace.archive.format import Archive
    from foundry_trace.bench.load_roles import first_step_modules

    with Archive(Path(__file__).parent / "data" / "micro.foundry") as archive:
        manifest = archive.manifest
        listed = first_step_modules(manifest)
    assert [m["module"] for m in listed] == sorted(manifest.graphs[0].modules, key=lambda m: -manifest.modules[m].size)
    assert [m["stored_bytes"] for m in listed] == sorted((manifest.modules[m].size for m in manifest.graphs[0].modules), reverse=True)
    assert sum(m["functions"] for m in listed) == len(manifest.functions) == 2 and all(m["trimmed"] in (True, False) for m in listed)


class _Graph:
    def __init__(self, ready_at: float, clock: list[float]) -> None:
        self.ready_at, self.clock = ready_at, clock

    def wait(self) -> None:
        self.clock[0] = max(self.clock[0], self.ready_at)  # the wait returns when the graph is ready


class _Restored:
    """Graphs by batch, each ready at a given time on a fake clock, two pieces for batch 8."""

    def __init__(self, clock: list[float]) -> None:
        self.groups = {1: [_Graph(0.03, clock)], 2: [_Graph(0.02, clock)], 8: [_Graph(0.04, clock), _Graph(0.09, clock)], 16: [_Graph(0.5, clock)]}

    def group(self, batch: int) -> list[_Graph]:
        return self.groups[batch]


def test_small_batches_are_ready_when_the_last_of_their_graphs_is() -> None:
    from foundry_trace.bench.load_roles import ready_after, small_batches

    assert small_batches([1, 2, 4, 8, 16, 24, 512]) == [1, 2, 4, 8]
    clock = [0.0]
    restored = _Restored(clock)
    start = 0.01
    assert ready_after(restored, [1, 2, 8], start, lambda: clock[0]) == pytest.approx(0.08)
    assert ready_after(restored, [1, 2, 8, 16], start, lambda: clock[0]) == pytest.approx(0.49)


def test_the_table_shows_the_repeated_cold_ratio() -> None:
    """A results file of the bench (H200, llama8b) with the repeated runs' fields added."""
    import json

    from foundry_trace.bench.load_report import render

    results = json.loads((Path(__file__).parents[1] / "bench/results/load-llama8b-67-h200-20261201.json").read_text())
    case = results["cases"][0]
    case["cold_runs"] = driver_alone.cold_ratios([0.80, 0.78, 0.83], [0.76, 0.77, 0.80])
    case.update(restore_over_driver_cold=case["cold_runs"]["ratio_median"], restore_over_driver_cold_min=case["cold_runs"]["ratio_min"],
                restore_over_driver_cold_max=case["cold_runs"]["ratio_max"])
    table = render(results)
    assert "restore / driver alone cold: median of 3 pairs (min-max)" in table and "(1.013-1.053)" in table


def test_the_table_shows_counts_weights_from_disk_and_serving_before_every_graph_is_ready() -> None:
    import json

    from foundry_trace.bench.load_report import render

    results = json.loads((Path(__file__).parents[1] / "bench/results/load-llama8b-67-h200-20261201.json").read_text())
    case = results["cases"][0]
    background = {"returned_s": 0.021, "small_batches": [1, 2, 4, 8], "ready_small_batches_s": 0.064, "ready_all_s": 4.2,
                  "weights_load_s": 9.5, "compared": 4, "mismatched": []}
    case["cold_runs"] = driver_alone.cold_ratios([0.80, 0.78, 0.83], [0.76, 0.77, 0.80])
    case.update(
        restore_over_driver_cold=1.0, restore_over_driver_cold_min=1.0, restore_over_driver_cold_max=1.0,
        kernel_nodes=100781, nodes_by_kind={"kernel": 100781, "memset": 858}, kernel_functions=244, modules=173, templates=6,
        weights_load_s=9.1, weights_load_s_by_child={"save": 9.9, "driver": [9.0, 9.2], "cold": [8.8]},
        checkpoint={"path": "/dev/shm/q", "filesystem": "tmpfs", "bytes": 61_051_526_144, "tensors": 1037, "shards": 15,
                    "write_s": None, "reused": True},
        background_cold=background, ready_small_batches_s=0.064, ready_all_s=4.2, instantiate_only_s_by_threads=None, best_possible_speedup=None,
    )
    case["prefetch_cold"]["weights_load_s"] = 9.4
    case["prefetch_cold"]["ready_small_batches_s"] = 0.0123
    table = render(results)
    assert f"67 / {case['nodes']:,} / 100,781" in table and "244 / 173 / 6" in table
    assert "61.1 GB in 15 files on tmpfs, reused" in table and "9.10 s (8.80-9.90 s)" in table
    assert "cold: returned after" in table and "0.021 s" in table and "batches up to 8 ready / all" in table and "0.064 / 4.200 s" in table
    assert "batches 1, 2, 4, 8 bit-identical to SAVE's" in table and "True (differ: none)" in table
    assert "not measured (a large workload)" in table and "weights loaded meanwhile" in table and "1.02 / 9.40 s" in table
    assert "restore point to batches up to 8 ready (background)" in table and "0.012 s" in table


def test_a_bench_short_of_time_keeps_the_first_pair_and_names_what_it_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fake child takes 10 s; with 85 s for children, SAVE, native, the first pair (driver,
    LOAD), prefetch, background and one more pair run, then the third pair's driver no longer
    fits: the cold ratio is of the two pairs measured, the skipped phase is named."""
    calls, clock = _ticking_children(monkeypatch)
    budget = Budget(RESERVE_S + 85.0, clock=lambda: clock[0])
    _, loaded = load_bench.run_children("small", 8, budget=budget)
    assert [role for role, _ in calls] == ["save", "native", "driver", "load", "prefetch", "background", "driver", "cold"]
    assert len(loaded["cold_runs"]["restore_s"]) == 2 and loaded["prefetched"] is not None and loaded["background"] is not None
    assert [s["phase"] for s in budget.skipped] == ["driver 3"]
    assert budget.children_s == {"save": 10.0, "native": 10.0, "driver 1": 10.0, "load": 10.0, "prefetch": 10.0, "background": 10.0,
                                 "driver 2": 10.0, "cold 2": 10.0}


def test_the_fit_expects_its_children_to_take_what_like_children_took() -> None:
    children = {"save": 100.0, "native": 30.0, "driver 1": 9.0, "load": 140.0, "driver 2": 11.0, "cold 2": 10.0, "cold 3": 12.5}
    assert load_bench.fit_expectations(children, 45.0) == {"save": 55.0, "cold": 12.5, "driver": 11.0}
    assert load_bench.fit_expectations({"save": 20.0}, None) == {"save": 20.0}


def test_the_table_names_the_budget_and_what_it_left_out() -> None:
    import json

    from foundry_trace.bench.load_report import render

    results = json.loads((Path(__file__).parents[1] / "bench/results/load-llama8b-67-h200-20261201.json").read_text())
    case = results["cases"][0]
    case["cold_runs"] = driver_alone.cold_ratios([0.80], [0.76])
    case.update(restore_over_driver_cold=1.05, restore_over_driver_cold_min=1.05, restore_over_driver_cold_max=1.05, prefetch_cold=None,
                budget_s=540.0, bench_s=512.3, skipped_for_time=[{"phase": "prefetch", "why": "not started: too little time left"}])
    table = render(results)
    assert "median of 1 pairs" in table and "not measured (left out for time)" in table
    assert "540 / 512 s" in table and "left out for time: prefetch" in table
    case.update(compare_s={"capture": 28.0, "references": 30.25, "restored": 9.0, "latency": 20.0, "release": 1.0}, archive_reused=True)
    table = render(results)
    assert "28.0 / 30.2 / 9.0 / 20.0 / 1.0 s" in table and "not SAVEd by this run" in table


def test_what_only_prefetch_and_background_measure_comes_before_the_later_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fake child takes 10 s; with 55 s for children, the prefetch child runs after the
    first pair and the background child no longer fits; with 15 s left after the first pair,
    a driver-alone run whose cold restore could not follow would be thrown away (a ratio needs
    both sides), so neither later pair starts. What was left out measures None."""
    calls, clock = _ticking_children(monkeypatch)
    budget = Budget(RESERVE_S + 55.0, clock=lambda: clock[0])
    _, loaded = load_bench.run_children("small", 8, budget=budget)
    assert [role for role, _ in calls] == ["save", "native", "driver", "load", "prefetch"]
    assert [s["phase"] for s in budget.skipped] == ["background", "driver 2", "driver 3"]
    assert budget.skipped[1]["expected_s"] == 20.0 and len(loaded["cold_runs"]["restore_s"]) == 1
    assert loaded["background"] is None and loaded["weights_load_s_by_child"]["background"] is None
    assert load_bench.readiness_fields({**loaded, **{k: 0 for k in ("kernel_nodes", "nodes_by_kind", "kernel_functions", "modules", "templates")}})[
        "ready_all_s"] is None


def test_a_reused_archive_must_be_the_benchs_own_for_this_workload_and_options(tmp_path: Path) -> None:
    """--archive: a new one needs its folder; an existing one must be an archive whose metadata
    names the workload and engine options (the checkpoint folder aside), else the bench would
    build an engine LOAD then refuses, minutes into a device call."""
    from foundry_trace.bench.workloads.registry import workload_metadata
    from foundry_trace.errors import WorkloadError

    from .archive_samples import fixed_contents, write_archive

    load_bench.check_archive(tmp_path / "new.foundry", "small", {"layers": None})  # SAVEd there
    with pytest.raises(WorkloadError, match="folder .* does not exist"):
        load_bench.check_archive(tmp_path / "no" / "new.foundry", "small", {})
    garbage = tmp_path / "garbage.foundry"
    garbage.write_bytes(b"not an archive" * 10)
    with pytest.raises(WorkloadError, match="cannot be reused: .*remove it"):
        load_bench.check_archive(garbage, "small", {})
    manifest, blobs = fixed_contents()
    saved = tmp_path / "saved.foundry"
    write_archive(saved, manifest.model_copy(update={"metadata": workload_metadata("qwen3-235b-rank", {"layers": 4, "checkpoint": "/a"})}), blobs)
    load_bench.check_archive(saved, "qwen3-235b-rank", {"layers": 4, "attention": None, "checkpoint": "/b"})
    for workload, options in (("qwen3-235b-rank", {"layers": 8}), ("qwen3-235b-rank", {}), ("small", {"layers": 4})):
        with pytest.raises(WorkloadError, match="was SAVEd for .*not"):
            load_bench.check_archive(saved, workload, options)
    unnamed = tmp_path / "unnamed.foundry"
    write_archive(unnamed, manifest, blobs)
    with pytest.raises(WorkloadError, match="no bench workload"):
        load_bench.check_archive(unnamed, "small", {})


def test_a_given_archive_is_saved_once_and_reused_without_a_save(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_children(monkeypatch)
    archive = tmp_path / "kept.foundry"
    load_bench.run_children("small", 8, archive)
    assert calls[0][0] == "save" and archive.exists()
    calls.clear()
    saved, _ = load_bench.run_children("small", 8, archive)
    assert "save" not in [role for role, _ in calls] and saved["archive_bytes"] == archive.stat().st_size

"""What `foundry bench load` shows of its results: the table, and a PNG timeline of the cold
restore's tasks per thread."""

from __future__ import annotations

import sys
from pathlib import Path


def plot_timeline(results: dict[str, object], path: Path) -> Path | None:
    """A PNG: native vs restore totals, and the restore's tasks per thread over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no timeline ({path.name}); pip install 'foundry[bench]'", file=sys.stderr)
        return None
    case = results["cases"][0]
    colors = {"module": "#4c72b0", "build": "#55a868", "instantiate": "#c44e52", "upload": "#8172b2"}
    figure, (totals, lanes) = plt.subplots(2, 1, figsize=(11, 6.5), gridspec_kw={"height_ratios": [1, 3]})
    totals.barh(["Foundry restore", "native warm-up + capture"], [case["restore_s"], case["native_s"]], color=["#55a868", "#999999"])
    totals.set_xlabel("seconds")
    totals.set_title(f"{results['device']} / {results['workload']}: restore {case['speedup']:.1f}x faster than capture")
    start = 0.0
    for name, seconds in case["phases_s"].items():
        if name != "graphs":
            lanes.barh("main", seconds, left=start, color="#dd8452")
            start += seconds
    for span in case["spans"]:
        lanes.barh(span["worker"].replace("foundry-load_", "thread "), span["end"] - span["start"], left=span["start"], color=colors[span["phase"]])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in [*colors.values(), "#dd8452"]]
    lanes.legend(handles, [*colors, "open + verify + memory"], loc="lower right", fontsize=8)
    lanes.set_xlabel(f"seconds since LOAD began (threads={case['threads']}; the native runner's threads share one lane)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _count_rows(c: dict[str, object]) -> list[tuple[str, str]]:
    """What the graphs hold (results files before issue 35 have the node count alone)."""
    if c.get("kernel_nodes") is None:
        return [("graphs / nodes", f"{c['graphs']} / {c['nodes']:,}")]
    return [
        ("graphs / nodes / kernel nodes", f"{c['graphs']} / {c['nodes']:,} / {c['kernel_nodes']:,}"),
        ("  kernel functions / modules / graph topologies", f"{c['kernel_functions']} / {c['modules']} / {c['templates']}"),
    ]


def _weights_rows(c: dict[str, object]) -> list[tuple[str, str]]:
    """The weights loaded from a checkpoint on disk, where the workload's engine did."""
    checkpoint = c.get("checkpoint")
    if not checkpoint:
        return []
    written = "reused" if checkpoint["reused"] else f"written in {checkpoint['write_s']:.1f} s"
    by_child = [v for v in _flattened(c["weights_load_s_by_child"]) if v is not None]
    return [
        ("weights: safetensors checkpoint", f"{checkpoint['bytes'] / 1e9:.1f} GB in {checkpoint['shards']} files on {checkpoint['filesystem']}, {written}"),
        ("  loaded from it: LOAD child (every child, min-max)",
         f"{c['weights_load_s']:.2f} s ({min(by_child):.2f}-{max(by_child):.2f} s)" if by_child else "not measured"),
    ]


def _flattened(by_child: dict[str, object]) -> list[float | None]:
    """Each child's weights-load time, the repeated children's lists opened up."""
    return [v for value in by_child.values() for v in (value if isinstance(value, list) else [value])]


def _background_rows(c: dict[str, object]) -> list[tuple[str, str]]:
    """Serving before every graph is ready: the background child's times from the restore point."""
    b = c.get("background_cold")
    if not b:
        return []
    small = ", ".join(str(batch) for batch in b["small_batches"])
    return [
        ("load(mode='background') cold: returned after", f"{b['returned_s']:.3f} s"),
        ("  from the restore point: batches up to 8 ready / all", f"{b['ready_small_batches_s']:.3f} / {b['ready_all_s']:.3f} s"),
        (f"  batches {small} bit-identical to SAVE's", f"{not b['mismatched']} (differ: {b['mismatched'] or 'none'}"
         + (f"; nondeterministic: {b['mismatched_nondeterministic']})" if b.get("mismatched_nondeterministic") else ")")),
    ]


def _instantiate_rows(c: dict[str, object]) -> list[tuple[str, str]]:
    """Instantiation alone on several thread counts (not measured for large workloads)."""
    if not c.get("instantiate_only_s_by_threads"):
        return [("instantiation alone on several threads", "not measured (a large workload)")]
    return [
        *((f"instantiation alone on {n} threads (graphs prebuilt)", f"{v:.3f} s") for n, v in c["instantiate_only_s_by_threads"].items()),
        ("speed-up bound: native / best instantiation alone", f"{c['best_possible_speedup']:.1f}x"),
    ]


def _prefetch_rows(c: dict[str, object]) -> list[tuple[str, str]]:
    p = c["prefetch_cold"]
    if p is None:
        return [("prefetch() at start (cold)", "not measured (left out for time)")]
    weights = [("  restore point reached / weights loaded meanwhile", f"{p['engine_s']:.2f} / {p['weights_load_s']:.2f} s")
               if p.get("weights_load_s") is not None else ("  restore point reached at", f"{p['engine_s']:.2f} s")]
    return [
        ("prefetch() at start (cold): restore point to all ready", f"{p['at_restore_point_s']:.3f} s ({c['speedup_with_prefetch_cold']:.1f}x)"),
        *([("  restore point to batches up to 8 ready (background)", f"{p['ready_small_batches_s']:.3f} s")] if p.get("ready_small_batches_s") is not None else []),
        ("  graphs ready before the restore point / prefetch work ended at", f"{p['ready_before_restore_point']} of {c['graphs']} / {p['prefetch_work_s']:.2f} s"),
        *weights,
        ("  process start to ready: native / with prefetch", f"{c['native_engine_s'] + c['native_s']:.2f} / {p['engine_s'] + p['at_restore_point_s']:.2f} s"),
        ("  prefetched graphs bit-identical to SAVE's", f"{not p['mismatched']} ({p['compared']} compared, differ: {p['mismatched'] or 'none'}"
         + (f"; nondeterministic: {p['mismatched_nondeterministic']})" if p.get("mismatched_nondeterministic") else ")")),
    ]


def _compare_rows(c: dict[str, object]) -> list[tuple[str, str]]:
    """Where the LOAD child's comparison spent its time, and whether SAVE's archive was an
    earlier run's (results files before these fields have neither)."""
    rows = []
    if c.get("compare_s"):
        rows.append(("LOAD child's comparison: " + " / ".join(c["compare_s"]), " / ".join(f"{v:.1f}" for v in c["compare_s"].values()) + " s"))
    if c.get("archive_reused"):
        rows.append(("archive", "an earlier run's (--archive), not SAVEd by this run"))
    return rows


def _budget_rows(c: dict[str, object]) -> list[tuple[str, str]]:
    """The time budget (results files before it have none) and what it left out."""
    if c.get("budget_s") is None:
        return []
    skipped = c.get("skipped_for_time") or []
    return [
        ("time budget / whole bench", f"{c['budget_s']:.0f} / {c['bench_s']:.0f} s"),
        *((f"  left out for time: {s['phase']}", str(s["why"])[:60]) for s in skipped),
    ]


def _builds(c: dict[str, object]) -> str:
    """The restore row's note of LOAD's cap on builds at a time and its chunk, where the case records them (earlier results do not)."""
    builders, chunk = c.get("builders"), c.get("chunk_nodes")
    note = "" if builders is None else f", {builders} build{'s' if builders != 1 else ''} at a time"
    return note + ("" if chunk is None else f", chunks of {chunk:,} nodes")


def _by_phase(spans: list[dict[str, object]]) -> dict[str, list[dict[str, object]]]:
    grouped: dict[str, list[dict[str, object]]] = {}
    for span in spans:
        grouped.setdefault(str(span["phase"]), []).append(span)
    return grouped


def render(results: dict[str, object]) -> str:
    from rich.table import Table

    from foundry_trace.bench.results import table_text

    c = results["cases"][0]
    table = Table(title=f"{results['device']} / {results['workload']}: {c['graphs']} graphs, archive {c['archive_bytes'] / 2**20:.1f} MiB")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        *_count_rows(c),
        ("native warm-up + capture + instantiate (cold, plain PyTorch)", f"{c['native_s']:.3f} s"),
        (f"Foundry restore (cold, {c['threads']} threads{_builds(c)})", f"{c['restore_s']:.3f} s"),
        ("speed-up", f"{c['speedup']:.1f}x"),
        ("warm, after other restores: native / restore", f"{c['native_warm_s']:.3f} / {c['warm_restore_s']:.3f} s"),
        ("driver instantiation alone (1 thread)", f"{c['instantiate_floor_s']:.3f} s"),
        ("restore / instantiation floor", f"{c['restore_over_floor']:.2f}"),
        (f"driver alone, cold: build + instantiate on {c['threads']} threads", f"{c['driver_build_s']:.3f} + {c['driver_instantiate_s']:.3f} s"),
        (f"restore / driver alone cold: median of {len(c['cold_runs']['restore_s'])} pairs (min-max)",
         f"{c['restore_over_driver_cold']:.3f} ({c['restore_over_driver_cold_min']:.3f}-{c['restore_over_driver_cold_max']:.3f})"),
        ("  cold restore / driver alone, medians", f"{c['cold_runs']['restore_s_median']:.3f} / {c['cold_runs']['driver_cold_s_median']:.3f} s"),
        ("speed-up bound: native / driver alone cold", f"{c['speedup_bound_driver_cold']:.1f}x"),
        *_instantiate_rows(c),
        ("with prefetch() (warm): restore at the restore point", f"{c['restore_at_restore_point_s']:.3f} s ({c['speedup_with_prefetch']:.1f}x)"),
        *_weights_rows(c),
        *_prefetch_rows(c),
        *_background_rows(c),
        (f"first graph launched (lazy, key {c['first_graph_key']})", f"{c['first_graph_s'] * 1000:.1f} ms"),
        ("  and its run done", f"{c['first_graph_run_s'] * 1000:.1f} ms"),
        ("  its LOAD phases", ", ".join(f"{k} {v * 1000:.1f}" for k, v in c["first_graph_phases_s"].items()) + " ms"),
        *((f"  its {phase} tasks: first start, last end", f"{min(s['start'] for s in spans) * 1000:.1f}, {max(s['end'] for s in spans) * 1000:.1f} ms")
          for phase, spans in _by_phase(c["first_graph_spans"]).items()),
        ("first graph launched (lazy, after prefetch())", f"{c['first_graph_prefetched_s'] * 1000:.1f} ms"),
        *((f"phase {k}", f"{v * 1000:.1f} ms") for k, v in c["phases_s"].items()),
        *((f"busy {k} (all threads)", f"{v * 1000:.1f} ms") for k, v in c["busy_s"].items()),
        ("bit-identical to SAVE's graphs", f"{c['bitwise_equal_saved']} (differ: {c['mismatched_saved'] or 'none'}"
         + (f"; nondeterministic natively: {c['mismatched_saved_nondeterministic']})" if c["mismatched_saved_nondeterministic"] else ")")),
        ("bit-identical to a native capture here", f"{c['bitwise_equal']} (differ: {c['mismatched'] or 'none'}"
         + (f"; nondeterministic at SAVE: {c['mismatched_nondeterministic_at_save']})" if c.get("mismatched_nondeterministic_at_save") else ")")),
        ("native graphs nondeterministic", str(c["nondeterministic_native"] or "none")),
        *((f"b={b}: first nondeterministic operation", f"{d['operation']} on {d['shapes']}" if d else "none found")
          for b, d in c["nondeterminism"].items()),
        *((f"replay b={b} native / restored", f"{v['native_ms']:.3f} / {v['restored_ms']:.3f} ms ({v['delta_pct']:+.2f} %)") for b, v in c["replay_ms"].items()),
        *((f"  its graphs alone, b={b}", f"{g['native_ms']:.3f} / {g['restored_ms']:.3f} ms ({g['delta_pct']:+.2f} %)")
          for b, v in c["replay_ms"].items() if (g := v.get("graphs_only"))),
        *((f"cost fit, {side}: per graph / per node / fixed", f"{f['per_graph_us']:.1f} us / {f['per_node_us']:.2f} us / {f['fixed_s']:.3f} s")
          for side, f in ((side, (c.get("cost_fit") or {}).get(side)) for side in ("restore", "driver_alone")) if f),
        *_compare_rows(c),
        *_budget_rows(c),
    ]
    for row in rows:
        table.add_row(*row)
    return table_text(table, width=120)

"""`foundry bench tp`: tensor parallelism from a single-GPU SAVE.

One offline run SAVEs one rank's step for each tensor-parallel degree, each in a fresh process on
one GPU with no peer (collectives.RecordingCommunicator), into one archive directory
(tp1.foundry, tp2.foundry, ...). Then, for each degree the machine has GPUs for, N rank
processes (one GPU each, NCCL) capture natively, cold and timed; and N fresh rank processes
restore the same archive, cold and timed, binding their live communicator, then capture natively
in the same process and compare outputs bit for bit and replay latency, rank by rank.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import tempfile
import time
from pathlib import Path

from foundry_trace.archive.keys import key_order
from foundry_trace.bench.children import (
    add_option_flags,
    child_main,
    note,
    option_arguments,
    parsed_options,
    phase,
    run_child,
    run_ranks,
)
from foundry_trace.bench.results import device_fields
from foundry_trace.parallel.collectives import archive_path

MODULE = "foundry_trace.bench.tp_bench"
RANK_TIMEOUT_S = 480.0  # one rank's child, all phases: well inside a 10-minute device call


def child_save(workload: str, degree: int, archive: str, options: dict[str, object]) -> dict[str, object]:
    import foundry_alloc

    foundry_alloc.install()
    import foundry_trace
    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.verify import record_references
    from foundry_trace.bench.workloads.registry import build_engine, workload_metadata
    from foundry_trace.parallel.collectives import RecordingCommunicator

    foundry_trace.start_tracing()
    foundry_alloc.reserve()
    communicator = RecordingCommunicator(degree)
    try:
        phase("engine")
        model = build_engine(workload, communicator=communicator, **options)
        note(f"built {workload}, rank 0 of {degree}")
        phase("save")
        start = time.perf_counter()
        with foundry_trace.record(archive) as recording:
            captured = capture_steps(model, recording=recording)
            if degree == 1:  # one rank's outputs are the step's: a reference only where no peer adds to them
                record_references(recording, model, captured)
            recording.metadata.update(workload_metadata(workload, options))
        save_s = time.perf_counter() - start
        note(f"captured and saved in {save_s:.1f} s")
        del captured
    finally:
        communicator.close()
    return {"archive_bytes": Path(archive).stat().st_size, "save_s": save_s, "collectives": len(communicator.specs), "description": model.describe()}


def child_native(workload: str, options: dict[str, object]) -> dict[str, object]:
    """A rank without Foundry: NCCL, engine, then warm-up + capture + instantiate (timed). The
    graphs are destroyed before the communicator closes: NCCL waits for them otherwise."""
    import torch

    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.workloads.registry import build_engine
    from foundry_trace.parallel.nccl import NcclCommunicator

    phase("rendezvous")
    with NcclCommunicator.from_environment() as communicator:
        phase("engine")
        model = build_engine(workload, communicator=communicator, **options)
        note(f"rank {communicator.rank}: built {workload}")
        torch.cuda.synchronize()
        phase("capture")
        start = time.perf_counter()
        captured = capture_steps(model)
        torch.cuda.synchronize()
        native_s = time.perf_counter() - start
        graphs = len(captured)
        note(f"rank {communicator.rank}: captured {graphs} graphs in {native_s:.1f} s")
        phase("close")
        del captured, model
        gc.collect()
        torch.cuda.synchronize()
        rank = communicator.rank
    return {"rank": rank, "native_s": native_s, "graphs": graphs}


def child_load(workload: str, directory: str, options: dict[str, object]) -> dict[str, object]:
    """A rank with Foundry: NCCL, engine, restore (timed, cold), then the native capture here and
    the comparison. Every rank replays the same graphs the same number of times (verify.py), so
    collectives always meet their peers; graphs are released before the communicator closes."""
    import foundry_alloc

    foundry_alloc.install()
    import torch

    import foundry_trace
    from foundry_trace.bench.verify import compare
    from foundry_trace.bench.workloads.registry import build_engine
    from foundry_trace.parallel.collectives import tensor_parallel_archive
    from foundry_trace.parallel.nccl import NcclCommunicator

    foundry_alloc.reserve()  # the fixed range first: NCCL reserves address space of its own
    phase("rendezvous")
    with NcclCommunicator.from_environment() as communicator:
        phase("engine")
        model = build_engine(workload, communicator=communicator, **options)
        torch.cuda.synchronize()
        phase("load")
        start = time.perf_counter()
        restored = foundry_trace.load(
            tensor_parallel_archive(directory, communicator.world_size), communicator=communicator, timeout=RANK_TIMEOUT_S / 2
        )
        torch.cuda.synchronize()
        restore_s = time.perf_counter() - start
        note(f"rank {communicator.rank}: restored in {restore_s:.3f} s")
        with restored:
            phase("compare")
            result = compare(model, restored, communicator=communicator)
            note(f"rank {communicator.rank}: captured natively and compared")
            phase("close")
        gc.collect()
        torch.cuda.synchronize()
        result.update(rank=communicator.rank, restore_s=restore_s, phases=restored.phases, busy=restored.busy_seconds(),
                      **device_fields())
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_environment(gpu: int, rank: int = 0, ranks: int = 1, port: int = 0) -> dict[str, str]:
    """One rank's environment: its GPU alone, torchrun's variables, NVLink multicast off."""
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), RANK=str(rank), WORLD_SIZE=str(ranks))
    environment.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    environment.setdefault("NCCL_NVLS_ENABLE", "0")
    environment.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    return environment


def run_degree(role: list[str], degree: int, timeout: float = RANK_TIMEOUT_S) -> list[dict[str, object]]:
    """The `degree` ranks of a role, one GPU each, under one watchdog: a rank that fails or
    stalls stops them all, and the error names it and its phase."""
    port = free_port()
    return run_ranks(
        MODULE, [role] * degree, [rank_environment(rank, rank, degree, port) for rank in range(degree)], timeout=timeout,
        labels=[f"{role[0]} rank {rank} of {degree}" for rank in range(degree)],
    )


def save_all(workload: str, degrees: list[int], directory: Path, **options: object) -> dict[int, dict[str, object]]:
    """SAVE every degree on GPU 0, one fresh process each (no peer needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = option_arguments(options)
    return {
        d: run_child(MODULE, ["save", workload, str(d), str(archive_path(directory, d)), *extra], rank_environment(0), timeout=RANK_TIMEOUT_S)
        for d in degrees
    }


def inspect_archives(directory: Path, degrees: list[int]) -> dict[int, dict[str, object]]:
    """What each degree's archive holds (as `foundry inspect` reads it): what the single-GPU SAVE of
    a degree can show without its ranks, on any machine."""
    from foundry_trace.archive.summary import summarize

    inspected = {}
    for degree in degrees:
        summary = summarize(archive_path(directory, degree))
        per_graph = {g["key"]: (g["collectives"], g["collective_bytes"]) for g in summary["graphs"]}
        inspected[degree] = {
            "archive_degree": summary["tensor_parallel"], "graphs": len(per_graph), "nodes": summary["nodes"],
            "collective_nodes": sum(count for count, _ in per_graph.values()),
            "collectives_per_graph": sorted({count for count, _ in per_graph.values()}),
            "per_graph": per_graph,
        }
    return inspected


def disagreeing_graphs(inspected: dict[int, dict[str, object]]) -> list[str]:
    """Graph keys whose collectives (count and bytes) differ between degrees, or that some degree
    lacks. An all-reduce sums the full hidden state whatever the degree, so only the per-rank
    compute may differ between the archives of one workload."""
    graphs = [i["per_graph"] for i in inspected.values()]
    keys = set().union(*graphs)
    return sorted((k for k in keys if len({g.get(k) for g in graphs}) > 1), key=key_order)


def run(
    workload: str, output_dir: Path | None, degrees: str = "1,2", archive: Path | None = None, layers: int | None = None,
    attention: str | None = None,
) -> dict[str, object]:
    """SAVE each degree of the comma list `degrees` into `archive` (a directory; default a
    temporary one), then run the degrees that this machine has the GPUs for."""
    if archive is None:
        with tempfile.TemporaryDirectory(prefix="foundry-tp-") as scratch:
            return run(workload, output_dir, degrees, Path(scratch), layers, attention)
    return _run_degrees(workload, [int(d) for d in degrees.split(",")], archive, output_dir, layers=layers, attention=attention)


def _run_degrees(workload: str, degrees: list[int], directory: Path, output_dir: Path | None, **options: object) -> dict[str, object]:
    import torch

    from foundry_trace.bench.results import Case, ResultsFile

    gpus = torch.cuda.device_count()
    saved = save_all(workload, degrees, directory, **options)
    inspected = inspect_archives(directory, degrees)
    extra = option_arguments(options)
    cases, first, single_rank_restore_s = [], None, None
    for degree in degrees:
        shown = {k: v for k, v in inspected[degree].items() if k != "per_graph"}
        case = {"name": f"tp{degree}", "archive_bytes": saved[degree]["archive_bytes"], "save_s": saved[degree]["save_s"],
                "collectives": saved[degree]["collectives"], **shown}
        if degree > gpus:
            cases.append(Case(**case, not_run=f"needs {degree} GPUs, this machine has {gpus}"))
            continue
        native = run_degree(["native", workload, *extra], degree)
        loaded = run_degree(["load", workload, str(directory), *extra], degree)
        first = first or loaded[0]
        native_s = [n["native_s"] for n in sorted(native, key=lambda n: n["rank"])]
        restore_s = [r["restore_s"] for r in sorted(loaded, key=lambda r: r["rank"])]
        if degree == 1:
            single_rank_restore_s = restore_s[0]
        deltas = {b: max((r["latency"][b]["delta_pct"] for r in loaded), key=abs) for b in loaded[0]["latency"]}
        cases.append(Case(
            **case, native_s=max(native_s), restore_s=max(restore_s),
            speedup=min(n / r for n, r in zip(native_s, restore_s)),
            native_s_by_rank=native_s, restore_s_by_rank=restore_s,
            bitwise_equal=all(r["bitwise_equal"] for r in loaded),
            mismatched_by_rank=[r["mismatched"] for r in loaded],
            nondeterministic_native=sorted({b for r in loaded for b in r["nondeterministic_native"]}),
            replay_delta_pct=deltas, replay_ms_by_rank=[r["latency"] for r in loaded],
            phases_s_by_rank=[r["phases"] for r in loaded],
            restore_over_tp1=max(restore_s) / single_rank_restore_s if single_rank_restore_s and degree > 1 else None,
            graphs_restored=[r["graphs"] for r in loaded],
        ))
    results = ResultsFile.of_this_run(
        first or device_fields(),
        what="tp", workload=f"{workload}-tp{'-'.join(str(d) for d in degrees)}" + (f"-{options['attention']}-attention" if options.get("attention") else ""),
        workload_desc=f"{saved[degrees[-1]]['description']}; one rank's step SAVEd per degree on one GPU with no peer; "
        "each rank restores the same archive with its live NCCL communicator vs native warm-up + capture per rank, cold",
        gpus=gpus,
        cases=cases, collectives_disagree=disagreeing_graphs(inspected),
    )
    if output_dir is not None:
        results.write(output_dir)
    return results.model_dump()


def render(results: dict[str, object]) -> str:
    from rich.table import Table

    from foundry_trace.bench.results import table_text

    table = Table(title=f"{results['device']} x {results['gpus']} / {results['workload']}")
    columns = ("degree", "graphs / nodes", "collective nodes (per graph)", "archive MiB", "native s (worst rank)",
               "restore s (worst rank)", "speed-up", "restore / tp1", "bitwise", "replay delta %")
    for column in columns:
        table.add_column(column, justify="right")
    for c in results["cases"]:
        saved = [
            f"{c['name']} (archive: {c['archive_degree']})", f"{c['graphs']} / {c['nodes']}",
            f"{c['collective_nodes']} ({', '.join(map(str, c['collectives_per_graph']))})", f"{c['archive_bytes'] / 2**20:.1f}",
        ]
        if c.get("not_run"):
            table.add_row(*saved, c["not_run"], "", "", "", "", "")
            continue
        deltas = " ".join(f"b{b}:{d:+.2f}" for b, d in c["replay_delta_pct"].items())
        ratio = f"{c['restore_over_tp1']:.2f}" if c.get("restore_over_tp1") else ""
        table.add_row(*saved, f"{c['native_s']:.2f}", f"{c['restore_s']:.3f}", f"{c['speedup']:.1f}x", ratio, str(c["bitwise_equal"]), deltas)
    disagree = results["collectives_disagree"]
    agreement = (
        "every graph holds the same collectives in every degree's archive" if not disagree
        else f"graphs whose collectives differ between degrees: {', '.join(disagree)}"
    )
    return table_text(table, width=160) + agreement + "\n"


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    options = parsed_options(arguments)
    if arguments.role == "save":
        workload, degree, archive = arguments.rest
        return child_save(workload, int(degree), archive, options)
    if arguments.role == "native":
        return child_native(arguments.rest[0], options)
    return child_load(arguments.rest[0], arguments.rest[1], options)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="a child process of `foundry bench tp` (one rank)")
    parser.add_argument("role", choices=("save", "native", "load"))
    parser.add_argument("rest", nargs="*")
    add_option_flags(parser)
    return parser


if __name__ == "__main__":
    child_main(_run, _parser())

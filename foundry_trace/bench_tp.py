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
import json
import os
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .bench_children import add_option_flags, note, option_arguments, parsed_options, run_child
from .collectives import archive_path


def child_save(workload: str, degree: int, archive: str, options: dict[str, object]) -> dict[str, object]:
    import foundry_alloc

    foundry_alloc.install()
    import foundry_trace

    from .capture import capture_steps
    from .collectives import RecordingCommunicator
    from .engines import build_engine

    foundry_trace.start_tracing()
    foundry_alloc.reserve()
    communicator = RecordingCommunicator(degree)
    try:
        model = build_engine(workload, communicator=communicator, **options)
        note(f"built {workload}, rank 0 of {degree}")
        start = time.perf_counter()
        with foundry_trace.record(archive) as recording:
            capture_steps(model, recording=recording)
        save_s = time.perf_counter() - start
        note(f"captured and saved in {save_s:.1f} s")
    finally:
        communicator.close()
    return {"archive_bytes": Path(archive).stat().st_size, "save_s": save_s, "collectives": len(communicator.specs), "description": model.describe()}


def child_native(workload: str, options: dict[str, object]) -> dict[str, object]:
    """A rank without Foundry: NCCL, engine, then warm-up + capture + instantiate (timed)."""
    import torch

    from .capture import capture_steps
    from .engines import build_engine
    from .nccl import NcclCommunicator

    communicator = NcclCommunicator.from_environment()
    model = build_engine(workload, communicator=communicator, **options)
    note(f"rank {communicator.rank}: built {workload}")
    torch.cuda.synchronize()
    start = time.perf_counter()
    captured = capture_steps(model)
    torch.cuda.synchronize()
    native_s = time.perf_counter() - start
    note(f"rank {communicator.rank}: captured {len(captured)} graphs in {native_s:.1f} s")
    communicator.close()
    return {"rank": communicator.rank, "native_s": native_s, "graphs": len(captured)}


def child_load(workload: str, directory: str, options: dict[str, object]) -> dict[str, object]:
    """A rank with Foundry: NCCL, engine, restore (timed, cold), then the native capture here and
    the comparison. Every rank runs the same steps in the same order, so collectives match."""
    import foundry_alloc

    foundry_alloc.install()
    import torch

    import foundry_trace

    from .collectives import tensor_parallel_archive
    from .engines import build_engine
    from .nccl import NcclCommunicator
    from .verify import compare

    foundry_alloc.reserve()  # the fixed range first: NCCL reserves address space of its own
    communicator = NcclCommunicator.from_environment()
    model = build_engine(workload, communicator=communicator, **options)
    torch.cuda.synchronize()
    start = time.perf_counter()
    restored = foundry_trace.load(tensor_parallel_archive(directory, communicator.world_size), communicator=communicator)
    torch.cuda.synchronize()
    restore_s = time.perf_counter() - start
    note(f"rank {communicator.rank}: restored in {restore_s:.3f} s")
    result = compare(model, restored)
    note(f"rank {communicator.rank}: captured natively and compared")
    result.update(rank=communicator.rank, restore_s=restore_s, phases=restored.phases, busy=restored.busy_seconds(),
                  device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda)
    restored.release()
    communicator.close()
    return result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(arguments: list[str], environment: dict[str, str]) -> dict[str, object]:
    return run_child("foundry_trace.bench_tp", arguments, environment)


def _environment(gpu: int, rank: int = 0, ranks: int = 1, port: int = 0) -> dict[str, str]:
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), RANK=str(rank), WORLD_SIZE=str(ranks))
    environment.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    environment.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off
    return environment


def _ranks(role: list[str], degree: int) -> list[dict[str, object]]:
    port = _free_port()
    with ThreadPoolExecutor(degree) as pool:
        return list(pool.map(lambda rank: _run(role, _environment(rank, rank, degree, port)), range(degree)))


def save_all(workload: str, degrees: list[int], directory: Path, **options: object) -> dict[int, dict[str, object]]:
    """SAVE every degree on GPU 0, one fresh process each (no peer needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = option_arguments(options)
    return {d: _run(["save", workload, str(d), str(archive_path(directory, d)), *extra], _environment(0)) for d in degrees}


def inspect_archives(directory: Path, degrees: list[int]) -> dict[int, dict[str, object]]:
    """What each degree's archive holds (as `foundry inspect` reads it): what the single-GPU SAVE of
    a degree can show without its ranks, on any machine."""
    from .summary import summarize

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
    return sorted((k for k in keys if len({g.get(k) for g in graphs}) > 1), key=lambda k: (len(k), k))


def run(
    workload: str, output_dir: Path | None, degrees: str = "1,2", archive: Path | None = None, layers: int | None = None
) -> dict[str, object]:
    """SAVE each degree of the comma list `degrees` into `archive` (a directory; default a
    temporary one), then run the degrees that this machine has the GPUs for."""
    if archive is None:
        with tempfile.TemporaryDirectory(prefix="foundry-tp-") as scratch:
            return run(workload, output_dir, degrees, Path(scratch), layers)
    return _run_degrees(workload, [int(d) for d in degrees.split(",")], archive, output_dir, layers=layers)


def _run_degrees(workload: str, degrees: list[int], directory: Path, output_dir: Path | None, **options: object) -> dict[str, object]:
    import torch

    from .results import Case, ResultsFile, command_line, driver_version, project_commit, today

    gpus = torch.cuda.device_count()
    saved = save_all(workload, degrees, directory, **options)
    inspected = inspect_archives(directory, degrees)
    extra = option_arguments(options)
    cases, first = [], None
    for degree in degrees:
        shown = {k: v for k, v in inspected[degree].items() if k != "per_graph"}
        case = {"name": f"tp{degree}", "archive_bytes": saved[degree]["archive_bytes"], "save_s": saved[degree]["save_s"],
                "collectives": saved[degree]["collectives"], **shown}
        if degree > gpus:
            cases.append(Case(**case, not_run=f"needs {degree} GPUs, this machine has {gpus}"))
            continue
        native = _ranks(["native", workload, *extra], degree)
        loaded = _ranks(["load", workload, str(directory), *extra], degree)
        first = first or loaded[0]
        native_s = [n["native_s"] for n in sorted(native, key=lambda n: n["rank"])]
        restore_s = [r["restore_s"] for r in sorted(loaded, key=lambda r: r["rank"])]
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
        ))
    results = ResultsFile(
        what="tp", workload=f"{workload}-tp{'-'.join(str(d) for d in degrees)}",
        workload_desc=f"{saved[degrees[-1]]['description']}; one rank's step SAVEd per degree on one GPU with no peer; "
        "each rank restores the same archive with its live NCCL communicator vs native warm-up + capture per rank, cold",
        device=first["device"] if first else torch.cuda.get_device_name(), gpus=gpus, driver=driver_version(),
        cuda=torch.version.cuda, torch=torch.__version__, commit=project_commit(), date=today(), command=command_line(),
        cases=cases, collectives_disagree=disagreeing_graphs(inspected),
    )
    if output_dir is not None:
        results.write(output_dir)
    return results.model_dump()


def render(results: dict[str, object]) -> str:
    from .results import table_text
    from rich.table import Table

    table = Table(title=f"{results['device']} x {results['gpus']} / {results['workload']}")
    columns = ("degree", "graphs / nodes", "collective nodes (per graph)", "archive MiB", "native s (worst rank)",
               "restore s (worst rank)", "speed-up", "bitwise", "replay delta %")
    for column in columns:
        table.add_column(column, justify="right")
    for c in results["cases"]:
        saved = [
            f"{c['name']} (archive: {c['archive_degree']})", f"{c['graphs']} / {c['nodes']}",
            f"{c['collective_nodes']} ({', '.join(map(str, c['collectives_per_graph']))})", f"{c['archive_bytes'] / 2**20:.1f}",
        ]
        if c.get("not_run"):
            table.add_row(*saved, c["not_run"], "", "", "", "")
            continue
        deltas = " ".join(f"b{b}:{d:+.2f}" for b, d in c["replay_delta_pct"].items())
        table.add_row(*saved, f"{c['native_s']:.2f}", f"{c['restore_s']:.3f}", f"{c['speedup']:.1f}x", str(c["bitwise_equal"]), deltas)
    disagree = results["collectives_disagree"]
    agreement = (
        "every graph holds the same collectives in every degree's archive" if not disagree
        else f"graphs whose collectives differ between degrees: {', '.join(disagree)}"
    )
    return table_text(table, width=160) + agreement + "\n"


def _main() -> None:
    parser = argparse.ArgumentParser(description="child process of `foundry bench tp`")
    parser.add_argument("role", choices=("save", "native", "load"))
    parser.add_argument("rest", nargs="*")
    add_option_flags(parser)
    a = parser.parse_args()
    options = parsed_options(a)
    if a.role == "save":
        workload, degree, archive = a.rest
        result = child_save(workload, int(degree), archive, options)
    elif a.role == "native":
        result = child_native(a.rest[0], options)
    else:
        result = child_load(a.rest[0], a.rest[1], options)
    print(json.dumps(result))


if __name__ == "__main__":
    _main()

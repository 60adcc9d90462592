"""The child processes every benchmark shares, each a fresh process printing one JSON line:

    save     SAVE a workload: warm-up + capture inside foundry_trace.record, the graphs' outputs on
             fixed inputs stored in the archive as references (not with --no-references), the
             workload named in its metadata
    native   the baseline as a server without Foundry starts: build the engine, then warm up,
             capture and instantiate every graph (timed), first thing in a fresh process
    verify   one timed restore, then a native capture in the same process and the comparison
             with it and with the archive's references (what `foundry verify` runs)

    python -P -m foundry_trace.bench.roles ROLE WORKLOAD ARCHIVE [THREADS] [--attention ...]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from foundry_trace.bench.children import (
    DEFAULT_TIMEOUT_S,
    child_main,
    child_parser,
    note,
    option_arguments,
    parsed_options,
    phase,
    run_child,
)
from foundry_trace.bench.results import device_fields

if TYPE_CHECKING:
    from foundry_trace.bench.workloads.registry import Engine
    from foundry_trace.restore.restored import Restored
    from foundry_trace.save.modules import ModuleCut

MODULE = "foundry_trace.bench.roles"


def save(workload: str, archive: str, options: dict[str, object], references: bool = True) -> dict[str, object]:
    """`references`: also store the graphs' outputs on fixed inputs (what LOAD is compared with);
    a SAVE that is only timed (the load bench's cost fit) skips them, as they take longer than
    the capture itself for thousands of graphs."""
    import foundry_alloc

    foundry_alloc.install()
    import foundry_trace
    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.verify import effort_of, record_references
    from foundry_trace.bench.workloads.registry import build_engine, weights_load_s, workload_metadata

    foundry_trace.start_tracing()
    phase("engine")
    model = build_engine(workload, **options)
    note(f"built {workload}")
    phase("save")
    start = time.perf_counter()
    with foundry_trace.record(archive) as recording:
        captured = capture_steps(model, recording=recording)
        captured_at = time.perf_counter()
        if references:
            record_references(recording, model, captured, effort_of(workload).reference_replays)
        referenced_s = time.perf_counter() - captured_at
        recording.metadata.update(workload_metadata(workload, options))
    save_s = time.perf_counter() - start - referenced_s
    note(f"captured and saved {len(captured)} graphs in {save_s:.1f} s (and their reference outputs in {referenced_s:.1f} s)")

    return {
        "archive_bytes": Path(archive).stat().st_size, "save_s": save_s, "references_s": referenced_s if references else None,
        "graphs": len(captured), "description": model.describe(), "weights_load_s": weights_load_s(model),
        "module_cuts": module_cuts(recording.module_cuts), **device_fields(),
    }


def module_cuts(cuts: list[ModuleCut]) -> dict[str, object]:
    """How SAVE cut the modules' binaries: a count of each way, and every module not compacted
    (LOAD's driver pays for the kernels left in it), with why."""
    from foundry_trace.save.modules import cut_counts

    return {**cut_counts(cuts), "not_compacted": [asdict(cut) for cut in cuts if cut.cut != "compacted"]}


def native(workload: str, options: dict[str, object]) -> dict[str, object]:
    import torch

    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.workloads.registry import build_engine, weights_load_s

    began = time.perf_counter()
    phase("engine")
    model = build_engine(workload, **options)
    torch.cuda.synchronize()
    start = time.perf_counter()
    note(f"built {workload}")
    phase("capture")
    captured = capture_steps(model)
    torch.cuda.synchronize()
    native_s = time.perf_counter() - start
    note(f"captured {len(captured)} graphs in {native_s:.1f} s")
    return {"native_s": native_s, "engine_s": start - began, "graphs": len(captured), "weights_load_s": weights_load_s(model)}


def engine_at_restore_point(workload: str, options: dict[str, object]) -> Engine:
    """What a LOAD child does first: the allocator, then the engine's state as SAVE built it
    (weights, caches, inputs, workspaces), synchronised: the process is at its restore point."""
    import foundry_alloc

    foundry_alloc.install()
    import torch

    from foundry_trace.bench.workloads.registry import build_engine

    phase("engine")
    model = build_engine(workload, **options)  # kept alive by the caller: LOAD compares its memory with SAVE's
    note(f"built {workload}")
    torch.cuda.synchronize()
    return model


def cold_load(
    workload: str, archive: str, threads: int, options: dict[str, object]
) -> tuple[Engine, Restored, float]:
    """The engine at its restore point, then one restore (timed, cold: the first of the process)."""
    import torch

    import foundry_trace

    model = engine_at_restore_point(workload, options)
    phase("load")
    start = time.perf_counter()
    restored = foundry_trace.load(archive, threads=threads)
    torch.cuda.synchronize()
    restore_s = time.perf_counter() - start
    note(f"restored {len(restored.graphs)} graphs cold in {restore_s:.3f} s")
    return model, restored, restore_s


def verify(workload: str, archive: str, threads: int, options: dict[str, object]) -> dict[str, object]:

    from foundry_trace.bench.verify import compare, effort_of, saved_references
    from foundry_trace.bench.workloads.registry import weights_load_s
    from foundry_trace.bench.workloads.registry import workload as chosen

    model, restored, restore_s = cold_load(workload, archive, threads, options)
    compiled = compiled_graphs()  # before the native capture: what the restore itself compiled
    phase("compare")
    saved = saved_references(restored.archive.manifest)
    result = compare(model, restored, saved, effort=effort_of(workload), batch_by_batch=chosen(workload).large)
    note(f"captured natively in {result['native_s']:.1f} s and compared")
    release = restored.release()
    result.update(
        restore_s=restore_s, weights_load_s=weights_load_s(model), compiled_graphs_at_restore=compiled, description=model.describe(), phases=restored.phases,
        busy=restored.busy_seconds(), released=str(release), has_references=saved is not None, **device_fields(),
    )
    return result


def compiled_graphs() -> int:
    """Graphs that torch.compile has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_role(
    role: str, workload: str, archive: Path, *, threads: int | None = None, references: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
    **options: object,
) -> dict[str, object]:
    """Runs one of this module's roles in a fresh process (the watchdog's `timeout` applies: a
    bench with a time budget gives what is left of it). `references=False`: a SAVE without
    reference outputs (see save())."""
    arguments = [role, workload, str(archive), *([str(threads)] if threads is not None else []), *option_arguments(options)]
    if not references:
        arguments.append("--no-references")
    return run_child(MODULE, arguments, timeout=timeout)


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    options = parsed_options(arguments)
    if arguments.role == "save":
        return save(arguments.workload, arguments.archive, options, references=arguments.references)
    if arguments.role == "native":
        return native(arguments.workload, options)
    return verify(arguments.workload, arguments.archive, arguments.threads, options)


def _parser() -> argparse.ArgumentParser:
    parser = child_parser("a child process of `foundry bench` and `foundry verify`", ("save", "native", "verify"))
    parser.add_argument("--no-references", dest="references", action="store_false", help="save: store no reference outputs")
    return parser


if __name__ == "__main__":
    child_main(_run, _parser())

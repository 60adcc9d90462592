"""What the probes share: each variant runs as a fresh child process (so every one pays the
driver's first-use costs) through the bench's one child runner (its watchdog included), with
the environment variables the variant names; its JSON line, or its error, is printed as it comes.

    python -m foundry_trace.bench.probes.<probe> ARGUMENT [VARIANT ...] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from foundry_trace.bench.children import child_main, run_child
from foundry_trace.bench.hardware import require_gpu
from foundry_trace.errors import ChildProcessFailed, NoGpuError, WorkloadError

if TYPE_CHECKING:
    from foundry_trace.bench.workloads.registry import Engine


def engine_of(archive: str, workloads: tuple[str, ...] | None = None) -> tuple[str, dict[str, object], Engine]:
    """The engine state the archive's SAVE built (its metadata names the workload and options),
    built here for a LOAD of it; `workloads`: the ones the probe can use (None: any)."""
    from foundry_trace.archive.format import Archive
    from foundry_trace.bench.workloads.registry import build_engine, workload_of

    with Archive(archive) as opened:
        named = workload_of(opened.manifest.metadata)
    if named is None or (workloads is not None and named[0] not in workloads):
        wanted = ", ".join(workloads) if workloads else "a workload of `foundry bench`"
        raise WorkloadError(f"{archive}: the probe rebuilds the engine of the workload that saved it ({wanted}); save one with "
                            "`python -m foundry_trace.bench.roles save WORKLOAD A.foundry`")
    name, options = named
    return name, options, build_engine(name, **options)


def timed(work: Callable[[], object]) -> tuple[object, dict[str, float]]:
    """work()'s result, and its wall seconds and the process's resource use meanwhile (CPU
    time, page faults, context switches: what tells driver work from waiting or fresh memory)."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = work()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return result, {
        "wall_s": round(wall, 4),
        "user_s": round(after.ru_utime - before.ru_utime, 4),
        "system_s": round(after.ru_stime - before.ru_stime, 4),
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "voluntary_switches": after.ru_nvcsw - before.ru_nvcsw,
        "involuntary_switches": after.ru_nivcsw - before.ru_nivcsw,
    }


def print_variants(module: str, argument: str, variants: list[str], environments: Mapping[str, Mapping[str, str]] | None = None) -> None:
    """`environments`: extra environment variables of a variant's process, by variant."""
    for variant in variants:
        environment = {**os.environ, **(environments or {}).get(variant, {})}
        try:
            print(json.dumps(run_child(module, ["child", argument, variant], environment, label=f"{module.rsplit('.', 1)[-1]} {variant}")), flush=True)
        except ChildProcessFailed as error:
            print(json.dumps({"variant": variant, "error": str(error)[-3000:]}), flush=True)


def child_entry(child: Callable[[str, str], dict[str, object]]) -> None:
    """The child side of a probe: `... child ARGUMENT VARIANT` runs one variant in this process."""
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("child",))
    parser.add_argument("argument")
    parser.add_argument("variant")
    child_main(lambda arguments: child(arguments.argument, arguments.variant), parser)


def probe_main(module: str, child: Callable[[str, str], dict[str, object]], default_variants: tuple[str, ...],
               environments: Mapping[str, Mapping[str, str]] | None = None,
               prologue: Callable[[str], dict[str, object]] | None = None) -> None:
    """A probe's command line: `ARCHIVE [VARIANT ...] [--rounds N]` runs each variant in a child
    of its own, the list N times over (alternating, so that a drift of clocks hits every
    variant alike). `prologue`: what the probe reads of the archive without a GPU, printed as
    the first line (before the GPU is required)."""
    import sys

    if sys.argv[1:2] == ["child"]:
        child_entry(child)
        return
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.add_argument("archive", help="the archive (from `foundry bench save --archive`)")
    parser.add_argument("variants", nargs="*", help=f"default: {' '.join(default_variants)}")
    parser.add_argument("--rounds", type=int, default=1, help="run the variants this many times over, alternating")
    arguments = parser.parse_args()
    if not Path(arguments.archive).is_file():
        raise SystemExit(f"{module}: no archive at {arguments.archive}: save one with `foundry bench save --archive PATH`")
    if arguments.rounds < 1:
        raise SystemExit(f"{module}: --rounds {arguments.rounds}: give 1 or more")
    if prologue is not None:
        print(json.dumps(prologue(arguments.archive)), flush=True)
    try:
        require_gpu(f"python -m {module}")
    except NoGpuError as error:
        raise SystemExit(str(error)) from None
    print_variants(module, arguments.archive, list(arguments.variants or default_variants) * arguments.rounds, environments)

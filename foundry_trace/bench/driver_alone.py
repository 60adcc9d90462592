"""The driver alone, cold: every graph of an archive built and instantiated straight from its node
tables with nothing else running, the modules loaded untimed. What any restore of these graphs
pays the driver; `foundry bench load` and its cost fit divide Foundry's restore by it.

    python -P -m foundry_trace.bench.driver_alone driver WORKLOAD ARCHIVE [THREADS] [--attention ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

from foundry_trace.bench.children import child_main, child_parser, note, parsed_options

if TYPE_CHECKING:
    from foundry_trace.parallel.collectives import Communicator
    from foundry_trace.restore import Restored, Span

MODULE = "foundry_trace.bench.driver_alone"


@contextmanager
def modules_loaded(archive: str, communicator: Communicator | None = None) -> Iterator[Restored]:
    """A lazy LOAD of `archive` with every module loaded and no graph building: it claims the
    memory that the driver checks memset and memcpy nodes against when they are added, and the
    graphs a lazy LOAD starts at open have finished (they would contend with what is timed)."""
    import foundry_trace

    early = foundry_trace.load(archive, mode="lazy", communicator=communicator)
    try:
        early.pipeline.load_all_modules()
        early.pipeline.wait_for_modules()
        for key in early.pipeline.queued_graphs():
            early.graphs[key].wait()
        yield early
    finally:
        early.release()


def instantiate_scaling(archive: str, counts: tuple[int, ...]) -> dict[str, float]:
    """Wall seconds to instantiate every graph of the archive on each number of threads, the
    graphs built beforehand and nothing else running: the least time in which any restore of
    these graphs can make them all executable on this driver, however it arranges its other work."""
    from foundry_trace import _native as native

    with modules_loaded(archive) as early:
        pipeline = early.pipeline
        built = [pipeline.build(entry) for entry in early.archive.manifest.graphs]
        try:
            scaling = {}
            for count in counts:
                with ThreadPoolExecutor(count) as pool:
                    start = time.perf_counter()
                    executables = list(pool.map(lambda graph: pipeline.instantiate(graph, "probe"), built))
                    scaling[str(count)] = time.perf_counter() - start
                for executable in executables:
                    native.destroy_executable(executable)
            return scaling
        finally:
            for graph in built:
                native.destroy_graph(graph)


def start_together(communicator: Communicator, phase: str) -> None:
    """Returns once every rank has reached it, where the communicator has a host-side
    agreement (the peer communicator's rendezvous): each rank's timed `phase` then starts with
    its peers', so that a rank whose engine was built first does not count, inside its own time,
    the wait for the slowest rank at the phase's first collective or agreement. It touches no
    GPU memory (the engine's layout must stay SAVE's). NCCL ranks, a GPU each, start when their
    engine is ready."""
    agree = getattr(communicator, "agree", None)
    if agree is not None:
        agree(f"the start of {phase}", b"")


def timeline(spans: Sequence[Span]) -> dict[str, float | None]:
    """When, from LOAD's start, a restore's module loads ended and its first and last builds
    started: how long the graphs waited for their modules, which the driver alone (modules
    loaded untimed) does not pay."""
    modules = [span.end for span in spans if span.phase == "module"]
    builds = [span.start for span in spans if span.phase == "build"]
    return {"modules_done_s": max(modules, default=None), "first_build_s": min(builds, default=None),
            "last_build_s": max(builds, default=None)}


def cold_ratios(restore_s: list[float], driver_s: list[float]) -> dict[str, object]:
    """Repeated cold runs, restore and driver alone alternating (run i of each side paired): the
    runs, each side's median, and the ratio restore / driver alone of each pair, as its median,
    min and max (one sample of each side is noise: 1.15 once where a warm restore took 0.63 s)."""
    ratios = [r / d for r, d in zip(restore_s, driver_s, strict=True)]
    return {
        "restore_s": restore_s, "driver_cold_s": driver_s,
        "restore_s_median": statistics.median(restore_s), "driver_cold_s_median": statistics.median(driver_s),
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
    }


def driver_alone(archive: str, threads: int, communicator: Communicator | None = None) -> dict[str, object]:
    """The driver alone, cold, in this process (the engine built, nothing of the archive restored
    yet): with the modules loaded (untimed), every graph built and then instantiated on
    `threads` threads with nothing else running, straight from the node tables. What any restore
    of these graphs pays the driver, before opening an archive, loading modules or claiming memory.
    `driver_modules_s`, untimed in the ratio, is how long the lazy LOAD that loads the modules
    took here (open, memory, every module, the first step's graphs; ranks not started together):
    about what a restore pays besides the driver's builds."""
    from foundry_trace import _native as native

    opened = time.perf_counter()
    with modules_loaded(archive, communicator) as early:
        modules_s = time.perf_counter() - opened
        pipeline = early.pipeline
        if communicator is not None:  # ranks start building together, as LOAD's ranks start restoring
            start_together(communicator, "driver alone")
        with ThreadPoolExecutor(threads) as pool:
            begin = time.perf_counter()
            built = list(pool.map(pipeline.build, early.archive.manifest.graphs))
            built_at = time.perf_counter()
            executables = list(pool.map(lambda graph: pipeline.instantiate(graph, "floor"), built))
            done = time.perf_counter()
        for executable in executables:
            native.destroy_executable(executable)
        for graph in built:
            native.destroy_graph(graph)
    note(f"driver alone: built in {built_at - begin:.3f} s, instantiated in {done - built_at:.3f} s")
    return {"driver_build_s": built_at - begin, "driver_instantiate_s": done - built_at, "driver_cold_s": done - begin,
            "driver_modules_s": modules_s}


def child_driver(workload: str, archive: str, threads: int, options: dict[str, object]) -> dict[str, object]:
    """driver_alone() in a fresh process, after building the workload's engine."""
    import foundry_alloc

    foundry_alloc.install()
    import torch

    from foundry_trace.bench.workloads.registry import build_engine, weights_load_s

    engine = build_engine(workload, **options)  # kept alive: LOAD compares its memory with SAVE's
    torch.cuda.synchronize()
    result = driver_alone(archive, threads)
    result["weights_load_s"] = weights_load_s(engine)
    del engine
    return result


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    return child_driver(arguments.workload, arguments.archive, arguments.threads, parsed_options(arguments))


if __name__ == "__main__":
    child_main(_run, child_parser("the driver-alone child of `foundry bench load` and `fit`", ("driver",)))

"""Where does a cold LOAD spend its time? Each variant runs in a fresh process (engine built,
then one timed LOAD of the archive), so every one pays the driver's first-use costs:

  threads-N     LOAD on N threads
  serial        LOAD on 1 thread, then again (warm) in the same process
  pregrow-mem   1 GiB cuMemAlloc + free before LOAD (does device memory growth explain it?)
  prewarm-N     instantiate and destroy a graph of N memset nodes before LOAD (is the cold cost
                the driver growing what executables need, once per process?)

(`foundry bench load` times prefetch() at process start; this probe asks what the bench does not.)

  python tools/cold_restore_probe.py ARCHIVE [VARIANT ...]   (ARCHIVE from `bench_load save`)
"""

from __future__ import annotations

import json
import sys
import time

from probe_variants import print_variants

VARIANTS = ("threads-8", "serial", "threads-4", "threads-16", "pregrow-mem", "prewarm-20000")


def _report(restored, restore_s: float) -> dict[str, object]:  # noqa: ANN001
    modules = [s for s in restored.spans if s.phase == "module"]
    instantiations = sorted((s for s in restored.spans if s.phase == "instantiate"), key=lambda s: s.start)
    graphs_start = min((s.start for s in restored.spans if s.phase == "build"), default=None)
    return {
        "restore_s": restore_s,
        "phases": restored.phases,
        "busy": restored.busy_seconds(),
        "modules_done_s": max((s.end for s in modules), default=None),
        "first_build_s": graphs_start,
        "slowest_modules": sorted(((s.what, round(s.end - s.start, 4)) for s in modules), key=lambda m: -m[1])[:8],
        "first_instantiations_s": [round(s.end - s.start, 4) for s in instantiations[:8]],
        "median_instantiation_s": instantiations and sorted(s.end - s.start for s in instantiations)[len(instantiations) // 2],
    }


def _prewarm(nodes: int) -> dict[str, float]:
    from cuda.bindings import driver

    _, context = driver.cuCtxGetCurrent()
    _, buffer = driver.cuMemAlloc(1 << 20)
    _, graph = driver.cuGraphCreate(0)
    params = driver.CUDA_MEMSET_NODE_PARAMS()
    params.dst, params.elementSize, params.width, params.height, params.value, params.pitch = buffer, 1, 1, 1, 0, 0
    start = time.perf_counter()
    for _ in range(nodes):
        driver.cuGraphAddMemsetNode(graph, None, 0, params, context)
    built = time.perf_counter()
    error, executable = driver.cuGraphInstantiate(graph, 0)
    assert error == driver.CUresult.CUDA_SUCCESS, error
    instantiated = time.perf_counter()
    driver.cuGraphExecDestroy(executable)
    driver.cuGraphDestroy(graph)
    driver.cuMemFree(buffer)
    return {"nodes": nodes, "build_s": built - start, "instantiate_s": instantiated - built, "destroy_s": time.perf_counter() - instantiated}


def child(archive: str, variant: str) -> dict[str, object]:
    import foundry_alloc

    foundry_alloc.install()
    import torch

    import foundry_trace
    from foundry_trace.engines import build_engine

    began = time.perf_counter()
    engine = build_engine("llama8b")  # kept alive: LOAD compares its memory with SAVE's
    torch.cuda.synchronize()
    engine_s = time.perf_counter() - began
    if variant == "pregrow-mem":
        from cuda.bindings import driver

        _, pointer = driver.cuMemAlloc(1 << 30)
        driver.cuMemFree(pointer)
    prewarm = _prewarm(int(variant.split("-")[1])) if variant.startswith("prewarm-") else None
    threads = int(variant.split("-")[1]) if variant.startswith("threads-") else (1 if variant == "serial" else 8)
    start = time.perf_counter()
    restored = foundry_trace.load(archive, threads=threads)
    torch.cuda.synchronize()
    result = {"variant": variant, "engine": engine.describe(), "engine_s": engine_s, **_report(restored, time.perf_counter() - start)}
    if prewarm:
        result["prewarm"] = prewarm
    restored.release()
    if variant == "serial":
        start = time.perf_counter()
        warm = foundry_trace.load(archive, threads=1)
        torch.cuda.synchronize()
        result["warm"] = _report(warm, time.perf_counter() - start)
        warm.release()
    return result


def main() -> None:
    if sys.argv[1] == "child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
        return
    archive, variants = sys.argv[1], sys.argv[2:] or list(VARIANTS)
    print_variants(__file__, archive, variants)


if __name__ == "__main__":
    main()

"""Where does a cold LOAD spend its time? Each variant runs in a fresh process (engine built,
then one timed LOAD of the archive), so every one pays the driver's first-use costs:

  threads-N     LOAD on N threads
  modules-first-N  LOAD on N threads with every module queued before the graphs (as prefetch()
                does; load() queues each graph right after the modules it still needs)
  serial        LOAD on 1 thread, then again (warm) in the same process
  pregrow-mem   1 GiB cuMemAlloc + free before LOAD (does device memory growth explain it?)
  prewarm-N     instantiate and destroy a graph of N memset nodes before LOAD (is the cold cost
                the driver growing what executables need, once per process?)
  thp-serial    serial, with glibc's malloc on transparent huge pages (is it page faults?)
  eager-serial  serial, with CUDA_MODULE_LOADING=EAGER (is it functions loaded at instantiation?)
  lazy-first    a lazy LOAD and the first replay of the smallest batch: where its time goes
  reinstantiate the graphs prebuilt, instantiated serially three times: cold, again after
                destroying the first executables, and again beside the second ones (is the cold
                cost the graph's first time, or fresh memory the driver takes for executables?);
                then the built graphs destroyed, timed (what LOAD's per-graph destroy costs)
  builders-K-N  LOAD on N threads, at most K graphs built at a time (load(builders=K); threads-N
                keeps LOAD's default for the archive): do builds slow the driver's instantiations down?
  chunk-C-K-N   LOAD on N Python workers (probing(native_chunks=False), restore/_probing.py), graphs built then
                instantiated in chunks of at most C nodes (load(chunk_nodes=C); 0: each graph
                built and instantiated in one task), at most K graphs built at a time
  native-C-K-N  chunk-C-K-N, each chunk restored by the native runner in one call (load()'s
                default: no Python, no GIL between its graphs)
  (lock-instantiate-, one-call-, room- and prefault- step into the Python workers through
  PipelineHooks, so they run with probing(native_chunks=False).)
  lock-instantiate-N  LOAD on N threads, one instantiation at a time
  one-call-N    LOAD on N threads, one build or instantiation at a time (the driver serialises
                them cold anyway: does contending for its locks cost more than waiting for ours?)
  driver-N      the driver alone (driver_alone.driver_alone): modules loaded untimed, every graph
                built, then every graph instantiated, on N threads (the bench's reference, here
                beside the variants, on the same machine)
  room-N        LOAD on N threads, builds and instantiations never at the same time (each in
                parallel among themselves)
  prefault-N    LOAD on N threads, each of which first touches and frees its share of the
                host memory the driver will take (about 20 kB a node), malloc's trimming off
  gil-VARIANT   VARIANT with Python's thread switch interval at 0.5 ms instead of 5 (are the
                workers waiting for the GIL while LOAD's own thread runs Python?)
  maps          the same cold build and instantiation, with the process's mappings whose
                resident memory grew most meanwhile (/proc/self/smaps), and the kernel's
                transparent-huge-page settings (which memory takes the page faults?)

Every report holds the process's CPU seconds (user, system), page faults and context switches
during the timed work.

(`foundry bench load` times prefetch() at process start; this probe asks what the bench does not.)

  python -m foundry_trace.bench.probes.cold_restore ARCHIVE [VARIANT ...]   (ARCHIVE from `foundry bench save --archive`)

The variants that change how LOAD runs do it through load()'s own arguments (builders, and
PipelineHooks around builds, instantiations and worker start), never by patching the library.
"""

from __future__ import annotations

import time

from foundry_trace.bench.driver_alone import timeline
from foundry_trace.bench.probes.variants import engine_of, probe_main, timed
from foundry_trace.restore._probing import probing

MODULE = "foundry_trace.bench.probes.cold_restore"

VARIANTS = ("threads-8", "serial", "threads-4", "threads-16", "pregrow-mem", "prewarm-20000", "thp-serial", "eager-serial", "lazy-first", "reinstantiate")
SCHEDULES = ("builders-", "chunk-", "native-")  # the variants that change only load()'s schedule (schedule_options())
ENVIRONMENTS = {"thp-serial": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "eager-serial": {"CUDA_MODULE_LOADING": "EAGER"}}


def _report(restored, restore_s: float) -> dict[str, object]:  # noqa: ANN001
    modules = [s for s in restored.spans if s.phase == "module"]
    instantiations = sorted((s for s in restored.spans if s.phase == "instantiate"), key=lambda s: s.start)
    marks = timeline(restored.spans)
    return {
        "restore_s": restore_s,
        "phases": restored.phases,
        "busy": restored.busy_seconds(),
        "modules_done_s": marks["modules_done_s"],
        "first_build_s": marks["first_build_s"],
        "slowest_modules": sorted(((s.what, round(s.end - s.start, 4)) for s in modules), key=lambda m: -m[1])[:8],
        "first_instantiations_s": [round(s.end - s.start, 4) for s in instantiations[:8]],
        "median_instantiation_s": instantiations and sorted(s.end - s.start for s in instantiations)[len(instantiations) // 2],
        "no_call_running_s": round(sum(length for _, length in _gaps(restored.spans)), 4),
        "longest_gaps": [(round(start, 4), round(length, 4)) for start, length in sorted(_gaps(restored.spans), key=lambda g: -g[1])[:6]],
        "first_spans": [(s.what, s.phase, round(s.start, 4), round(s.end, 4)) for s in sorted(restored.spans, key=lambda s: s.start)[:40]],
    }


def _gaps(spans) -> list[tuple[float, float]]:  # noqa: ANN001 - list[Span]
    """(start, seconds) of each stretch between the first task's start and the last one's end
    with no task running."""
    gaps, reached = [], None
    for span in sorted(spans, key=lambda s: s.start):
        if reached is not None and span.start > reached:
            gaps.append((reached, span.start - reached))
        reached = span.end if reached is None else max(reached, span.end)
    return gaps


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
    import sys

    import foundry_alloc

    name = variant
    if variant.startswith("gil-"):  # the same variant with the GIL handed over every 0.5 ms, not 5
        sys.setswitchinterval(0.0005)
        variant = variant.removeprefix("gil-")

    foundry_alloc.install()
    import torch

    began = time.perf_counter()
    _, _, engine = engine_of(archive)  # kept alive: LOAD compares its memory with SAVE's
    torch.cuda.synchronize()
    engine_s = time.perf_counter() - began
    if variant == "pregrow-mem":
        from cuda.bindings import driver

        _, pointer = driver.cuMemAlloc(1 << 30)
        driver.cuMemFree(pointer)
    prewarm = _prewarm(int(variant.split("-")[1])) if variant.startswith("prewarm-") else None
    head = {"variant": name, "engine": engine.describe(), "engine_s": engine_s}
    if variant == "lazy-first":
        return {**head, **_lazy_first(archive)}
    if variant == "reinstantiate":
        return {**head, **_reinstantiate(archive)}
    if variant == "maps":
        return {**head, **_maps(archive)}
    if variant.startswith("driver-"):
        from foundry_trace.bench.driver_alone import driver_alone

        return {**head, **driver_alone(archive, int(variant.split("-")[1]))}
    threads = int(variant.split("-")[-1]) if variant.startswith(("threads-", "prefault-", "modules-first-", "lock-", "room-", "one-call-", *SCHEDULES)) else (1 if variant.endswith("serial") else 8)
    options: dict[str, object] = {}
    if variant.startswith("lock-instantiate-"):
        options["hooks"] = _one_instantiation_at_a_time()
    elif variant.startswith("one-call-"):
        options["hooks"] = _one_driver_call_at_a_time()
    elif variant.startswith(SCHEDULES):
        options.update(schedule_options(variant))
    elif variant.startswith("room-"):
        options["hooks"] = _builds_apart_from_instantiations()
    elif variant.startswith("prefault-"):
        head["prefault_s"], options["hooks"] = _prefault_workers(archive, threads)
    if "hooks" in options:
        options["native_chunks"] = False  # hooks step into the Python workers
    load = _modules_first if variant.startswith("modules-first-") else _load
    seam = {k: options.pop(k) for k in ("hooks", "native_chunks") if k in options}
    with probing(**seam):
        restored, use = timed(lambda: load(archive, threads, **options))
    result = {**head, **_report(restored, use["wall_s"]), "resources": use}
    if prewarm:
        result["prewarm"] = prewarm
    restored.release()
    if variant.endswith("serial"):
        warm, use = timed(lambda: _load(archive, 1))
        result["warm"] = {**_report(warm, use["wall_s"]), "resources": use}
        warm.release()
    return result


def schedule_options(variant: str) -> dict[str, object]:
    """What a schedule variant (builders-K-N, chunk-C-K-N, native-C-K-N) passes to load()
    (builders, chunk_nodes) and to probing() (native_chunks)."""
    numbers = [int(part) for part in variant.split("-")[1:-1]]
    if variant.startswith("builders-"):
        return {"builders": numbers[0]}
    chunk_nodes, builders = numbers
    return {"chunk_nodes": chunk_nodes, "builders": builders, "native_chunks": not variant.startswith("chunk-")}


def _one_instantiation_at_a_time():  # noqa: ANN202 - PipelineHooks
    import threading

    from foundry_trace.restore._probing import PipelineHooks

    lock = threading.Lock()
    return PipelineHooks(around_instantiate=lambda: lock)


def _one_driver_call_at_a_time():  # noqa: ANN202 - PipelineHooks
    import threading

    from foundry_trace.restore._probing import PipelineHooks

    lock = threading.Lock()
    return PipelineHooks(around_build=lambda: lock, around_instantiate=lambda: lock)


def _builds_apart_from_instantiations():  # noqa: ANN202 - PipelineHooks
    """Builds and instantiations exclude each other (each kind runs in parallel with its own)."""
    import threading
    from contextlib import contextmanager

    from foundry_trace.restore._probing import PipelineHooks

    changed = threading.Condition()
    inside = {"build": 0, "instantiate": 0}

    def apart(kind: str, other: str):  # noqa: ANN202
        @contextmanager
        def inside_kind():  # noqa: ANN202
            with changed:
                changed.wait_for(lambda: inside[other] == 0)
                inside[kind] += 1
            try:
                yield
            finally:
                with changed:
                    inside[kind] -= 1
                    changed.notify_all()

        return inside_kind

    return PipelineHooks(around_build=apart("build", "instantiate"), around_instantiate=apart("instantiate", "build"))


def _prefault_workers(archive: str, threads: int):  # noqa: ANN202 - (list of seconds, PipelineHooks)
    """Makes LOAD's worker threads touch and free their share of the memory first; returns the
    list that each worker's seconds of it will be appended to, and the hooks that do it."""
    import ctypes

    from foundry_trace.archive.format import Archive
    from foundry_trace.restore._probing import PipelineHooks

    with Archive(archive) as opened:
        nodes = sum(entry.nodes for entry in opened.manifest.graphs)
    share = nodes * 20_000 // threads
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep freed memory in the arena
    seconds: list[float] = []

    def prefault() -> None:
        start = time.perf_counter()
        blocks = [libc.malloc(64 << 10) for _ in range(share // (64 << 10))]
        for block in blocks:
            ctypes.memset(block, 0, 64 << 10)
        for block in blocks:
            libc.free(block)
        seconds.append(time.perf_counter() - start)

    return seconds, PipelineHooks(worker_started=prefault)


def _load(archive: str, threads: int, **options: object):  # noqa: ANN202 - Restored
    import torch

    import foundry_trace

    restored = foundry_trace.load(archive, threads=threads, **options)
    torch.cuda.synchronize()
    return restored


def _modules_first(archive: str, threads: int, **options: object):  # noqa: ANN202 - Restored
    import torch

    import foundry_trace

    restored = foundry_trace.load(archive, mode="lazy", threads=threads, **options)  # the first graph queued
    restored.pipeline.load_all_modules()
    restored.wait()  # every other graph, in serving order
    torch.cuda.synchronize()
    return restored


def _lazy_first(archive: str) -> dict[str, object]:
    import torch

    import foundry_trace
    from foundry_trace.archive.keys import key_order

    def first_replay():  # noqa: ANN202 - Restored
        lazy = foundry_trace.load(archive, mode="lazy")
        lazy[min(lazy.graphs, key=key_order)].replay()
        torch.cuda.synchronize()
        return lazy

    lazy, use = timed(first_replay)
    spans = [{"what": s.what, "phase": s.phase, "start": round(s.start, 4), "end": round(s.end, 4)} for s in lazy.spans]
    lazy.release()
    return {"resources": use, "phases": lazy.phases, "spans": spans}


def _resident() -> dict[tuple[str, str], dict[str, int]]:
    """kB resident and huge-page-backed of each mapping, by (address range, what)."""
    mappings: dict[tuple[str, str], dict[str, int]] = {}
    current: dict[str, int] = {}
    for line in open("/proc/self/smaps"):  # noqa: SIM115 - read once, closed at exit
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            current = mappings.setdefault((fields[0], " ".join(fields[5:]) or "[anonymous]"), {})
        elif fields[0] in ("Rss:", "AnonHugePages:"):
            current[fields[0][:-1]] = int(fields[1])
    return mappings


def _grown(before: dict, after: dict) -> list[dict[str, object]]:  # noqa: ANN001
    rows = []
    for (span, what), sizes in after.items():
        old = before.get((span, what), {})
        grown = sizes.get("Rss", 0) - old.get("Rss", 0)
        if grown:
            low, high = (int(x, 16) for x in span.split("-"))
            rows.append({"range": span, "what": what, "size_kb": (high - low) >> 10, "grown_kb": grown, "rss_kb": sizes.get("Rss", 0), "huge_kb": sizes.get("AnonHugePages", 0)})
    return sorted(rows, key=lambda r: -r["grown_kb"])[:12]


def _maps(archive: str) -> dict[str, object]:
    import foundry_trace
    from foundry_trace import _native as native

    settings = {}
    for name in ("enabled", "defrag"):
        try:
            settings[name] = open(f"/sys/kernel/mm/transparent_hugepage/{name}").read().strip()  # noqa: SIM115
        except OSError as error:
            settings[name] = str(error)
    settings["kernel"] = open("/proc/sys/kernel/osrelease").read().strip()  # noqa: SIM115
    lazy = foundry_trace.load(archive, mode="lazy")
    pipeline = lazy.pipeline
    before = _resident()
    pipeline.load_all_modules()
    pipeline.wait_for_modules()
    loaded = _resident()
    built = [pipeline.build(entry) for entry in lazy.archive.manifest.graphs]
    after_build = _resident()
    executables = [pipeline.instantiate(graph, "probe") for graph in built]
    after_instantiate = _resident()
    for executable in executables:
        native.destroy_executable(executable)
    for graph in built:
        native.destroy_graph(graph)
    lazy.release()
    return {
        "settings": settings,
        "modules": _grown(before, loaded),
        "build": _grown(loaded, after_build),
        "instantiate": _grown(after_build, after_instantiate),
        "after_release": _grown(before, _resident()),
    }


def _reinstantiate(archive: str) -> dict[str, object]:
    from foundry_trace import _native as native
    from foundry_trace.bench.driver_alone import modules_loaded

    with modules_loaded(archive) as lazy:
        pipeline = lazy.pipeline
        built, use = timed(lambda: [pipeline.build(entry) for entry in lazy.archive.manifest.graphs])
        rounds = {"build": use}

        def instantiate_all() -> list[int]:
            return [pipeline.instantiate(graph, "probe") for graph in built]

        first, rounds["cold"] = timed(instantiate_all)
        for executable in first:
            native.destroy_executable(executable)
        second, rounds["after_destroying"] = timed(instantiate_all)
        third, rounds["beside_others"] = timed(instantiate_all)
        for executable in second + third:
            native.destroy_executable(executable)
        _, rounds["destroy_graphs"] = timed(lambda: [native.destroy_graph(graph) for graph in built])
    return {"rounds": rounds}


if __name__ == "__main__":
    probe_main(MODULE, child, VARIANTS, ENVIRONMENTS)

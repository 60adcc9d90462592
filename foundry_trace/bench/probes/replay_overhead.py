"""Why is a restored piecewise step slower than a native one at batch 1 (+107 % on the H200),
when it is not at 64 and 256? At batch 1 the step is bound by the host (33 graph launches and
32 eager attentions), so the probe times the host's side of a step, piece by piece, for the
native graphs and the restored ones, and tries the launch in other ways:

  default       the restored step as the bench replays it (RestoredGraph.replay)
  direct        cuGraphLaunch called straight, its arguments made once
  uploaded      every restored executable uploaded to the launch stream first
  side-stream   everything (native and restored) on a stream of its own instead of the default one

For each: the step's device time (replay_latency_ms, as the bench measures it), and the host's
median seconds per step spent in the launches and in the eager work between them, native and
restored alike.

What it found (H200, commit a9ec7bc, docs/measurements.md): the eager attention took 10 to 20 ms
of host time per step, native and restored alike, and the step's time followed it; the graphs
alone were within 0.1 % of native; RestoredGraph.replay() took about 32 us a launch against 10 us
for torch's CUDAGraph.replay() and 12 us for `direct` (replay() has been made lean since).

  python -m foundry_trace.bench.roles save piecewise A.foundry --batch-sizes 1,64
  python -m foundry_trace.bench.probes.replay_overhead A.foundry [VARIANT ...]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from foundry_trace.bench.probes.variants import engine_of, probe_main

MODULE = "foundry_trace.bench.probes.replay_overhead"

VARIANTS = ("default", "direct", "uploaded", "side-stream")
HOST_STEPS = 30


def _host_split(launches: list[Callable[[], None]], between: Callable[[int], None]) -> dict[str, float]:
    """Median host milliseconds per step in the launches and in the eager work between them."""
    import torch

    in_launches, in_between = [], []
    for _ in range(HOST_STEPS):
        torch.cuda.synchronize()
        launch_s = between_s = 0.0
        for piece, launch in enumerate(launches):
            start = time.perf_counter()
            launch()
            middle = time.perf_counter()
            if piece < len(launches) - 1:
                between(piece)
            launch_s += middle - start
            between_s += time.perf_counter() - middle
        in_launches.append(launch_s)
        in_between.append(between_s)
    torch.cuda.synchronize()
    return {"launches_ms": 1e3 * statistics.median(in_launches), "between_ms": 1e3 * statistics.median(in_between)}


def _restored_launches(restored, engine, batch: int, variant: str, stream: int) -> list[Callable[[], None]]:  # noqa: ANN001
    from cuda.bindings import driver

    from foundry_trace import _native as native

    graphs = [restored[engine.key(batch, piece)] for piece in range(engine.pieces)]
    if variant == "uploaded":
        context = int(driver.cuCtxGetCurrent()[1])
        for graph in graphs:
            native.upload(graph.executable, context, graph.key)
    if variant == "direct":
        handle = driver.CUstream(stream)
        return [lambda executable=driver.CUgraphExec(graph.executable): driver.cuGraphLaunch(executable, handle) for graph in graphs]
    return [graph.replay for graph in graphs]


def child(archive: str, variant: str) -> dict[str, object]:
    import foundry_alloc

    foundry_alloc.install()
    import torch

    import foundry_trace
    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.verify import launching_all, replay_latency_ms, restored_batches

    name, options, engine = engine_of(archive, ("piecewise", "piecewise-compiled"))
    restored = foundry_trace.load(archive)
    batches = restored_batches(restored)
    native = capture_steps(engine, batches)
    stream = torch.cuda.Stream() if variant == "side-stream" else torch.cuda.current_stream()
    report: dict[str, object] = {"variant": variant, "workload": name, "options": {k: str(v) for k, v in options.items()}, "batches": {}}
    with torch.cuda.stream(stream):
        for batch in batches:
            engine.prepare(batch, seed=0)
            native_launches = [graph.replay for graph in native[batch].graphs]
            restored_launches = _restored_launches(restored, engine, batch, variant, stream.cuda_stream)

            def between(piece: int, batch: int = batch) -> None:
                engine.attend_between(batch, piece)

            def stepper(launches: list[Callable[[], None]]) -> Callable[[], None]:
                def step() -> None:
                    for piece, launch in enumerate(launches):
                        launch()
                        if piece < len(launches) - 1:
                            between(piece)

                return step

            report["batches"][str(batch)] = {
                "native_step_ms": replay_latency_ms(stepper(native_launches)),
                "restored_step_ms": replay_latency_ms(stepper(restored_launches)),
                "native_host": _host_split(native_launches, between),
                "restored_host": _host_split(restored_launches, between),
                "native_launch_only_ms": replay_latency_ms(launching_all(native_launches)),
                "restored_launch_only_ms": replay_latency_ms(launching_all(restored_launches)),
            }
    torch.cuda.synchronize()
    restored.release()
    return report


if __name__ == "__main__":
    probe_main(MODULE, child, VARIANTS)

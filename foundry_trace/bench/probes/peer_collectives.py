"""One rank of the peer all-reduce's checks (the GPU tests and `tools/gpu-check peer-probe` run N
of these, several on one GPU where there are fewer GPUs than ranks):

    check   every dtype and both algorithms, eager and inside a replayed CUDA graph, bit for bit
            against the sum of every rank's input (each rank rebuilds every rank's seeded input) in
            float32, in rank order; then the replay time of a decode step's worth of all-reduces
    stall   the last rank skips a collective: every other rank's replay ends within the stall
            time-out and check() raises StallError naming the rank that did not come

    python -P -m foundry_trace.bench.probes.peer_collectives ROLE   (RANK, WORLD_SIZE, FOUNDRY_PEER_SOCKET)
"""

from __future__ import annotations

import argparse
import time

from foundry_trace.bench.children import child_main, note, phase

SIZES = (8, 4096, 4096 * 8, 4096 * 64, 4096 * 256, 4096 * 512)  # elements: one pack to a batch of 512 rows of 4096
DTYPES = ("bfloat16", "float16", "float32")
STEP_ALL_REDUCES = 64  # a Llama-3-8B decode step: two per layer


def rank_input(rank: int, count: int, dtype: str, seed: int):  # noqa: ANN201 - a tensor
    import torch

    generator = torch.Generator(device="cuda").manual_seed(seed * 1000 + rank)
    return torch.randn(count, device="cuda", generator=generator).to(getattr(torch, dtype))


def expected(world: int, count: int, dtype: str, seed: int):  # noqa: ANN201 - a tensor
    total = rank_input(0, count, dtype, seed).float()
    for rank in range(1, world):
        total += rank_input(rank, count, dtype, seed).float()
    return total.to(rank_input(0, 1, dtype, seed).dtype)


def check(communicator) -> dict[str, object]:  # noqa: ANN001 - a PeerCommunicator
    import torch

    from foundry_trace.parallel.peer_kernels import plan

    world, rank = communicator.world_size, communicator.rank
    mismatched, seed = [], 0
    phase("eager and graph sums")
    for dtype in DTYPES:
        for count in SIZES:
            seed += 1
            algorithm = plan(dtype, count, world).algorithm
            data = rank_input(rank, count, dtype, seed)
            communicator.all_reduce(data)
            communicator.synchronize()
            if not torch.equal(data.view(torch.uint8), expected(world, count, dtype, seed).view(torch.uint8)):
                mismatched.append(f"eager {algorithm} {dtype} x {count}")
            static = torch.empty_like(data)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                communicator.all_reduce(static)
            for replay in range(2):
                seed += 1
                static.copy_(rank_input(rank, count, dtype, seed))
                graph.replay()
                communicator.synchronize()
                if not torch.equal(static.view(torch.uint8), expected(world, count, dtype, seed).view(torch.uint8)):
                    mismatched.append(f"graph {algorithm} {dtype} x {count} (replay {replay})")
            del graph
    note(f"rank {rank}: {len(mismatched)} mismatches")
    phase("step replay")
    timings = {}
    for batch in (1, 64, 256):
        buffers = [torch.randn(batch * 4096, device="cuda").to(torch.bfloat16) for _ in range(2)]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for index in range(STEP_ALL_REDUCES):
                communicator.all_reduce(buffers[index % 2])
        for _ in range(3):
            graph.replay()
        communicator.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            graph.replay()
        communicator.synchronize()
        timings[str(batch)] = (time.perf_counter() - start) / 10 * 1e3
        del graph
    note(f"rank {rank}: {STEP_ALL_REDUCES} all-reduces per replay: " + ", ".join(f"b{b} {t:.2f} ms" for b, t in timings.items()))
    return {"rank": rank, "world": world, "mismatched": mismatched, "step_replay_ms": timings}


def stall(communicator) -> dict[str, object]:  # noqa: ANN001 - a PeerCommunicator
    """Every rank but the last runs one all-reduce; the last waits, then leaves."""
    import torch

    from foundry_trace.errors import StallError

    world, rank = communicator.world_size, communicator.rank
    data = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    communicator.all_reduce(data)  # one that every rank runs
    communicator.synchronize()
    phase("stall")
    if rank == world - 1:
        time.sleep(communicator.stall_timeout + 5)
        return {"rank": rank, "skipped": True}
    start = time.perf_counter()
    try:
        communicator.all_reduce(data)
        communicator.synchronize()
    except StallError as error:
        return {"rank": rank, "raised_after_s": time.perf_counter() - start, "error": str(error)}
    return {"rank": rank, "raised_after_s": None, "error": None}


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    import foundry_alloc

    foundry_alloc.install()
    from foundry_trace.bench.tp_bench import select_device
    from foundry_trace.parallel.peer import PeerCommunicator

    select_device()

    phase("rendezvous")
    start = time.perf_counter()
    communicator = PeerCommunicator.from_environment(timeout=120, stall_timeout=arguments.stall_timeout)
    connected_s = time.perf_counter() - start
    try:
        result = (check if arguments.role == "check" else stall)(communicator)
    finally:
        communicator.close()
    result["connect_s"] = connected_s
    return result


def run(role: str, degrees: list[int], stall_timeout: float = 30.0, timeout: float = 300.0) -> dict[int, list[dict[str, object]]]:
    """The ranks of each degree in turn (fresh processes), as the GPU tests and gpu-check run them."""
    from foundry_trace.bench.tp_bench import run_peer_ranks

    return {
        degree: run_peer_ranks(__name__, [role, "--stall-timeout", str(stall_timeout)], degree, timeout=timeout)
        for degree in degrees
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="one rank of the peer all-reduce's checks")
    parser.add_argument("role", choices=("check", "stall"))
    parser.add_argument("--stall-timeout", type=float, default=30.0)
    return parser


if __name__ == "__main__":
    child_main(_run, _parser())

"""`foundry bench tp`: tensor parallelism from a single-GPU SAVE.

One offline run SAVEs one rank's step for each tensor-parallel degree, each in a fresh process on
one GPU with no peer, into one archive directory (tp1.foundry, tp2.foundry, ...): with the NCCL
communicator (`--communicator nccl`) its collectives are recorded as markers and bound to each
rank's live communicator at LOAD; with the peer communicator (`--communicator peer`) they are
plain kernels over the peer window, and every rank restores the archive unchanged.

Then, for each degree: N rank processes capture natively, cold and timed; then, `repeats` times
alternating, N fresh rank processes measure the driver alone on their graphs (built and
instantiated cold, under the same placement and concurrency) and N fresh rank processes restore
the same archive, cold and timed (a rank's ratio is the median of its pairs: one cold sample of
each side is noise). N fresh ranks then restore once more, capture natively in the same process,
batch size by batch size, and compare outputs bit for bit and replay latency; and N fresh ranks that
call prefetch() at process start (as a serving rank would, before its communicator and engine)
measure the time from the restore point until every graph is ready. With N > 1 ranks each
rank's logits are its shard of the vocabulary (DecodeEngine's vocabulary-parallel head): every
rank compares its shard with its native capture, and the shards must tile the vocabulary, so
every logit is compared on one rank; where the logits are replicated (one rank), the ranks'
outputs are compared with each other too. NCCL needs a GPU per rank; the peer communicator runs
several ranks on a GPU where there are fewer GPUs than ranks (the table and JSON say so): the
ranks that run collectives then run outside MPS, as contexts that take turns on the GPU, and the
timed ranks, which run none, under MPS where this process runs under it (run_peer_ranks()).
Before a degree starts, its ranks' memory is computed (tp_memory.py) and a degree whose ranks
would not fit the GPU's free memory is not run: the results name the --layers that would.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

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
from foundry_trace.bench.driver_alone import cold_ratios, driver_alone, start_together, timeline
from foundry_trace.bench.results import Case, ResultsFile, device_fields
from foundry_trace.errors import ChildProcessFailed, WorkloadError
from foundry_trace.parallel.collectives import archive_path

if TYPE_CHECKING:
    from foundry_trace.bench.workloads.decode import ModelShape
    from foundry_trace.bench.workloads.registry import Engine
    from foundry_trace.parallel.collectives import Communicator

MODULE = "foundry_trace.bench.tp_bench"
DEFAULT_REPEATS = 3  # cold pairs of driver-alone and restoring ranks per degree, as the LOAD bench's
RANK_TIMEOUT_S = 480.0  # one rank's child, all phases: well inside a 10-minute device call
COMMUNICATORS = ("nccl", "peer")
COMPARED = ("all", "latency")  # what the LOAD ranks compare bit for bit: every batch size, or the latency ones
MPS_PIPE_VARIABLE = "CUDA_MPS_PIPE_DIRECTORY"  # where a CUDA process looks for the MPS daemon that would serve it
UNCOMPARED = "none"  # a LOAD rank's --compare in the cold pairs: the restore timed alone, no collective run


def _communicator(kind: str, *, local_degree: int | None = None) -> Communicator:
    """This rank's communicator: NCCL's or the peer one from the environment; with
    `local_degree`, the SAVE process's (no peer)."""
    from foundry_trace.parallel.collectives import RecordingCommunicator
    from foundry_trace.parallel.nccl import NcclCommunicator
    from foundry_trace.parallel.peer import PeerCommunicator

    if kind not in COMMUNICATORS:
        raise ValueError(f"communicator {kind!r}: choose one of {', '.join(COMMUNICATORS)}")
    if local_degree is not None:
        return PeerCommunicator.local(local_degree) if kind == "peer" else RecordingCommunicator(local_degree)
    if kind == "peer":
        select_device()
        return PeerCommunicator.from_environment(timeout=RANK_TIMEOUT_S / 4)
    return NcclCommunicator.from_environment()


def select_device() -> None:
    """Rank r on GPU r mod GPUs (the peer communicator's ranks see every GPU)."""
    import torch

    torch.cuda.set_device(int(os.environ.get("RANK", "0")) % torch.cuda.device_count())


def child_save(workload: str, degree: int, archive: str, kind: str, options: dict[str, object]) -> dict[str, object]:
    import foundry_alloc

    foundry_alloc.install()
    import foundry_trace
    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.verify import record_references
    from foundry_trace.bench.workloads.registry import build_engine, workload_metadata

    foundry_trace.start_tracing()  # before the peer kernels' module loads: SAVE records it
    foundry_alloc.reserve()
    communicator = _communicator(kind, local_degree=degree)
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
    collectives = len(getattr(communicator, "specs", ()))
    return {"archive_bytes": Path(archive).stat().st_size, "save_s": save_s, "collectives": collectives, "description": model.describe()}


def child_native(workload: str, kind: str, options: dict[str, object]) -> dict[str, object]:
    """A rank without Foundry: communicator, engine, then warm-up + capture + instantiate
    (timed). The graphs are destroyed before the communicator closes: NCCL waits for them
    otherwise, and the peer window they address is unmapped."""
    import torch

    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.workloads.registry import build_engine

    phase("rendezvous")
    with _communicator(kind) as communicator:
        phase("engine")
        model = build_engine(workload, communicator=communicator, **options)
        note(f"rank {communicator.rank}: built {workload}")
        torch.cuda.synchronize()
        phase("capture")
        start_together(communicator, "capture")
        start = time.perf_counter()
        captured = capture_steps(model)
        torch.cuda.synchronize()
        native_s = time.perf_counter() - start
        graphs = len(captured)
        note(f"rank {communicator.rank}: captured {graphs} graphs in {native_s:.1f} s")
        phase("close")
        _check(communicator)
        del captured, model
        gc.collect()
        torch.cuda.synchronize()
        rank = communicator.rank
    return {"rank": rank, "native_s": native_s, "graphs": graphs}


def child_driver(workload: str, directory: str, kind: str, threads: int, options: dict[str, object]) -> dict[str, object]:
    """The driver alone on this rank's graphs, cold, on `threads` threads, beside the other ranks
    doing the same."""
    import foundry_alloc

    foundry_alloc.install()
    import torch

    from foundry_trace.bench.workloads.registry import build_engine
    from foundry_trace.parallel.collectives import tensor_parallel_archive

    foundry_alloc.reserve()
    phase("rendezvous")
    with _communicator(kind) as communicator:
        phase("engine")
        engine = build_engine(workload, communicator=communicator, **options)  # kept alive: LOAD compares its memory with SAVE's
        torch.cuda.synchronize()
        phase("driver")
        result = driver_alone(str(tensor_parallel_archive(directory, communicator.world_size)), threads, communicator)
        del engine
        result["rank"] = communicator.rank
    return result


def child_load(
    workload: str, directory: str, kind: str, threads: int, compared: str, options: dict[str, object], builders: int | None = None,
    chunk_nodes: int | None = None,
) -> dict[str, object]:
    """A rank with Foundry: communicator, engine, restore (timed, cold, on `threads` threads, at
    most `builders` graphs built at a time, in chunks of at most `chunk_nodes` nodes: None, LOAD's
    default for each), then the native capture here and the comparison (of `compared`: run()'s
    compare; UNCOMPARED: none, the graphs released once restored). Every rank replays the same graphs the same number
    of times (verify.py), so collectives always meet their peers; graphs are released before the
    communicator closes."""
    import foundry_alloc

    foundry_alloc.install()
    import torch

    import foundry_trace
    from foundry_trace.bench.verify import FULL, LATENCY_STEPS, SHARED_GPU, compare
    from foundry_trace.parallel.collectives import tensor_parallel_archive

    foundry_alloc.reserve()  # the fixed range first: NCCL reserves address space of its own
    phase("rendezvous")
    with _communicator(kind) as communicator:
        model = _engine_at_restore_point(workload, communicator, options)
        start = time.perf_counter()
        restored = foundry_trace.load(
            tensor_parallel_archive(directory, communicator.world_size), communicator=communicator, threads=threads,
            timeout=RANK_TIMEOUT_S / 2, **({} if builders is None else {"builders": builders}),
            **({} if chunk_nodes is None else {"chunk_nodes": chunk_nodes}),
        )
        torch.cuda.synchronize()
        restore_s = time.perf_counter() - start
        note(f"rank {communicator.rank}: restored in {restore_s:.3f} s")
        with restored:
            result: dict[str, object] = {}
            if compared != UNCOMPARED:
                phase("compare")
                shared = torch.cuda.device_count() < communicator.world_size
                result = compare(
                    model, restored, communicator=communicator, effort=SHARED_GPU if shared else FULL, batch_by_batch=True,
                    only=None if compared == "all" else LATENCY_STEPS,
                )
                _check(communicator)
                note(f"rank {communicator.rank}: captured natively and compared")
            phase("close")
        gc.collect()
        torch.cuda.synchronize()
        rows = model.logit_rows
        result.update(rank=communicator.rank, restore_s=restore_s, builders=restored.builders, chunk_nodes=restored.chunk_nodes,
                      phases=restored.phases, busy=restored.busy_seconds(),
                      timeline=timeline(restored.spans), spans=[span.__dict__ for span in restored.spans],
                      archive_digest=restored.archive.digest, logit_rows=[rows.start, rows.stop], **device_fields())
    return result


def _engine_at_restore_point(workload: str, communicator: Communicator, options: dict[str, object]) -> Engine:
    """The rank's engine, built; returns when every rank has built its own (start_together), so
    that the LOAD timed next starts with its peers'."""
    import torch

    from foundry_trace.bench.workloads.registry import build_engine

    phase("engine")
    model = build_engine(workload, communicator=communicator, **options)
    torch.cuda.synchronize()
    phase("load")
    start_together(communicator, "load")
    return model


def child_prefetch(workload: str, directory: str, kind: str, threads: int, options: dict[str, object]) -> dict[str, object]:
    """A serving rank with prefetch(): first thing in the process, before its communicator and
    engine exist, it opens the archive for WORLD_SIZE ranks, loads every module and builds the
    graphs that need no live state (the peer all-reduce is a kernel node: every graph of a peer
    archive can) while the engine is built; at the restore point an eager
    load(early, communicator=...) restores the rest (timed, cold; it ends when every rank is
    ready). Then the digests of the outputs of the latency batch sizes it holds (else of its
    smallest), compared by run() with the comparing LOAD ranks' (the same archive restored
    without prefetch)."""
    import foundry_alloc

    foundry_alloc.install()
    import torch

    import foundry_trace
    from foundry_trace.bench.verify import LATENCY_STEPS, restored_batches, restored_digests
    from foundry_trace.parallel.collectives import tensor_parallel_archive

    foundry_alloc.reserve()
    began = time.perf_counter()
    phase("prefetch")
    select_device()
    early = foundry_trace.prefetch(tensor_parallel_archive(directory, int(os.environ["WORLD_SIZE"])), threads=threads)
    try:
        phase("rendezvous")
        with _communicator(kind) as communicator:
            model = _engine_at_restore_point(workload, communicator, options)
            start = time.perf_counter()
            restored = foundry_trace.load(early, communicator=communicator, timeout=RANK_TIMEOUT_S / 2)
            torch.cuda.synchronize()
            at_restore_point_s = time.perf_counter() - start
            note(f"rank {communicator.rank}: every graph ready {at_restore_point_s:.3f} s after the restore point")
            with restored:
                phase("digests")
                batches = restored_batches(restored)
                digests = restored_digests(model, restored, [b for b in LATENCY_STEPS if b in batches] or batches[:1])
                instantiated = [s.end for s in restored.spans if s.phase == "instantiate"]
                phase("close")
            gc.collect()
            torch.cuda.synchronize()
            return {"rank": communicator.rank, "at_restore_point_s": at_restore_point_s, "engine_s": start - began,
                    "ready_before_restore_point": sum(end <= start - began for end in instantiated), "digests": digests}
    finally:
        early.release()  # a no-op once load() took it over and released it


def child_memory() -> dict[str, object]:
    """The free memory of every GPU, and the device's fields for the results file, read in a
    child so that the parent makes no CUDA context (one would take memory from the ranks on GPU 0)."""
    import torch

    return {"free_bytes": [torch.cuda.mem_get_info(gpu)[0] for gpu in range(torch.cuda.device_count())], **device_fields()}


def _check(communicator: Communicator) -> None:
    """Raises if a peer all-reduce stalled (the peer communicator's device-side error)."""
    check = getattr(communicator, "synchronize", None)
    if check is not None:
        check()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _multicast_off(environment: dict[str, str]) -> dict[str, str]:
    """NVLink multicast stays off in every rank (NCCL's and PyTorch's symmetric memory)."""
    environment.setdefault("NCCL_NVLS_ENABLE", "0")
    environment.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    return environment


def rank_environment(gpu: int, rank: int = 0, ranks: int = 1, port: int = 0) -> dict[str, str]:
    """One rank's environment: its GPU alone, torchrun's variables, NVLink multicast off."""
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), RANK=str(rank), WORLD_SIZE=str(ranks))
    environment.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return _multicast_off(environment)


def peer_rank_environment(rank: int, ranks: int, socket_path: str, outside_mps: str | None = None) -> dict[str, str]:
    """One rank of a peer-memory run: every GPU visible (a rank maps buffers that live on the
    others; it picks GPU rank mod GPUs itself), torchrun's variables, the rendezvous socket.

    `outside_mps`: an empty directory, made the rank's MPS_PIPE_VARIABLE, so that the rank finds
    no MPS daemon there and runs as a context of its own (the driver falls back to that where it
    cannot reach a daemon). Ranks that share a GPU and run collectives need it: under MPS their
    kernels run side by side, and the blocks of ranks spinning at an all-reduce's barrier can hold
    the SMs that a late rank's kernels need to reach it (measured: run_peer_ranks()); without
    MPS the GPU time-slices whole contexts, and a late rank always gets its turn."""
    environment = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES" or v.strip()}
    environment.update(RANK=str(rank), WORLD_SIZE=str(ranks), FOUNDRY_PEER_SOCKET=socket_path)
    if outside_mps is not None:
        environment[MPS_PIPE_VARIABLE] = outside_mps
    return _multicast_off(environment)


def peer_ranks_per_gpu(degree: int, gpus: int) -> int:
    """Ranks on each GPU of a peer run: rank r on GPU r mod GPUs (one GPU where none is seen)."""
    return -(-degree // max(gpus, 1))


def _run_ranks(module: str, arguments: list[str], environments: list[dict[str, str]], timeout: float) -> list[dict[str, object]]:
    degree = len(environments)
    return run_ranks(
        module, [arguments] * degree, environments, timeout=timeout, labels=[f"{arguments[0]} rank {rank} of {degree}" for rank in range(degree)]
    )


def run_peer_ranks(
    module: str, arguments: list[str], degree: int, timeout: float = RANK_TIMEOUT_S, collectives: bool = True
) -> list[dict[str, object]]:
    """`degree` ranks of `module` meeting over a fresh rendezvous socket, under one watchdog;
    rank r on GPU r mod GPUs. Where ranks share a GPU and run `collectives`, they run outside MPS
    (peer_rank_environment()): under MPS, 4 ranks on one H100 stalled in a two-shot all-reduce
    with no SM cap (collective 65) and with a quarter of the SMs each (collective 885). Ranks that
    run none (the driver alone, a restore timed alone) keep this process's MPS setting, so that a
    GPU's ranks load modules side by side instead of taking turns."""
    import torch

    shared = peer_ranks_per_gpu(degree, torch.cuda.device_count())
    with tempfile.TemporaryDirectory(prefix="foundry-peer-") as scratch:
        path = os.path.join(scratch, "rendezvous.sock")
        outside_mps = None
        if collectives and shared > 1:
            outside_mps = os.path.join(scratch, "no-mps")
            os.mkdir(outside_mps)
        environments = [peer_rank_environment(rank, degree, path, outside_mps) for rank in range(degree)]
        return _run_ranks(module, arguments, environments, timeout)


def run_degree(
    role: list[str], degree: int, kind: str = "nccl", timeout: float = RANK_TIMEOUT_S, collectives: bool = True
) -> list[dict[str, object]]:
    """The `degree` ranks of a role under one watchdog: a rank that fails or stalls stops them
    all, and the error names it and its phase. NCCL: one GPU a rank; peer: rank r on GPU r mod
    GPUs, meeting over a fresh rendezvous socket (`collectives`: whether the role runs any, see
    run_peer_ranks())."""
    if kind == "peer":
        return run_peer_ranks(MODULE, role, degree, timeout=timeout, collectives=collectives)
    port = free_port()
    return _run_ranks(MODULE, role, [rank_environment(rank, rank, degree, port) for rank in range(degree)], timeout)


def save_all(workload: str, degrees: list[int], directory: Path, kind: str = "nccl", **options: object) -> dict[int, dict[str, object]]:
    """SAVE every degree on GPU 0, one fresh process each (no peer needed). A degree whose SAVE
    fails is {"failed": why} (the first line of the error, which names the child's log): the
    other degrees still run."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = option_arguments(options)
    saved = {}
    for d in degrees:
        try:
            saved[d] = run_child(
                MODULE, ["save", workload, str(d), str(archive_path(directory, d)), kind, *extra], rank_environment(0), timeout=RANK_TIMEOUT_S
            )
        except ChildProcessFailed as error:
            saved[d] = {"failed": f"SAVE: {_first_line(error)}"}
    return saved


def _first_line(error: ChildProcessFailed) -> str:
    """What a case keeps of a failure: its first line (the child, its phase and its log)."""
    return str(error).splitlines()[0][:2000]


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


def check_arguments(
    workload: str, *, degrees: str, layers: int | None = None, communicator: str = "nccl", threads: int | None = None, compare: str = "all",
    repeats: int = DEFAULT_REPEATS, builders: str | int | None = None,
) -> list[int]:
    """The degrees of the comma list `degrees`, once each, in order; raises WorkloadError where the
    arguments cannot run (before any process or GPU is asked for): a degree that is not a
    positive number, that the peer communicator cannot serve, or that does not divide the
    workload's heads, key/value heads, intermediate size and vocabulary; fewer than one cold pair;
    `builders` not a comma list of schedules (load_schedules())."""
    from foundry_trace.bench.workloads.decode import rank_shape
    from foundry_trace.bench.workloads.registry import require_decode
    from foundry_trace.parallel.window import MAX_RANKS

    require_decode(workload, "tp")
    if communicator not in COMMUNICATORS:
        raise WorkloadError(f"communicator {communicator!r}: choose one of {', '.join(COMMUNICATORS)}")
    if threads is not None and threads < 1:
        raise WorkloadError(f"threads={threads}: give each rank at least one thread")
    load_schedules(builders)
    if compare not in COMPARED:
        raise WorkloadError(f"compare {compare!r}: choose one of {', '.join(COMPARED)}")
    if repeats < 1:
        raise WorkloadError(f"repeats={repeats}: give at least one cold pair of driver-alone and restoring ranks")
    parsed = _comma_numbers(degrees)
    if not parsed or min(parsed) < 1:
        raise WorkloadError(f"degrees {degrees!r}: a comma list of positive tensor-parallel degrees, e.g. 1,2")
    if communicator == "peer" and max(parsed) > MAX_RANKS:
        raise WorkloadError(f"degrees {degrees}: the peer communicator serves at most {MAX_RANKS} ranks")
    shape = workload_shape(workload, {"layers": layers})
    for degree in parsed:
        try:
            rank_shape(shape, degree)
        except ValueError as error:
            raise WorkloadError(f"degree {degree} of workload {workload!r}: {error}") from None
    return parsed


def run(
    workload: str, output_dir: Path | None, degrees: str = "1,2", archive: Path | None = None, layers: int | None = None,
    attention: str | None = None, communicator: str = "nccl", threads: int | None = None, compare: str = "all",
    repeats: int = DEFAULT_REPEATS, builders: str | int | None = None,
) -> dict[str, object]:
    """SAVE each degree of the comma list `degrees` into `archive` (a directory; default a
    temporary one), then run the degrees that this machine can: NCCL where it has a GPU a rank,
    the peer communicator always (ranks share GPUs where there are fewer). `threads`: each
    rank's restore and driver-alone threads (default rank_threads()). `compare`: "all" compares
    every batch size bit for bit with a native capture in the LOAD ranks; "latency" only the
    latency batch sizes (verify.LATENCY_STEPS), for many ranks sharing a GPU at full size, where every
    collective waits for each peer's time slice and all 67 captures and replays outlast a device
    call; the case's `compared_batches` says which. `repeats`: cold pairs of driver-alone and
    restoring ranks per degree (each rank's ratio their median). `builders`: the LOAD ranks'
    schedule, their cap on graphs built at a time and optionally their chunk of nodes (default
    LOAD's own; the driver alone builds on every thread, then instantiates on every thread), or a
    comma list of schedules compared side by side (load_schedules())."""
    parsed = check_arguments(
        workload, degrees=degrees, layers=layers, communicator=communicator, threads=threads, compare=compare, repeats=repeats,
        builders=builders,
    )
    if archive is None:
        with tempfile.TemporaryDirectory(prefix="foundry-tp-") as scratch:
            return run(workload, output_dir, degrees, Path(scratch), layers, attention, communicator, threads, compare, repeats, builders)
    return _run_degrees(
        workload, parsed, archive, output_dir, communicator, threads, compare, repeats, load_schedules(builders), layers=layers,
        attention=attention,
    )


class Schedule(NamedTuple):
    """How a LOAD rank restores: at most `builders` graphs built at a time, in chunks of at most
    `chunk_nodes` nodes (load()'s arguments; None: LOAD's default)."""

    builders: int | None
    chunk_nodes: int | None = None

    @property
    def label(self) -> str:
        """As --builders spells it: `default`, `B` or `B:C`."""
        if self.builders is None:
            return "default"
        if self.chunk_nodes is None:
            return str(self.builders)
        return f"{self.builders}:{self.chunk_nodes}"

    def flags(self) -> list[str]:
        """The LOAD rank's command-line flags for it (none: LOAD's defaults)."""
        return (
            ([] if self.builders is None else ["--builders", str(self.builders)])
            + ([] if self.chunk_nodes is None else ["--chunk-nodes", str(self.chunk_nodes)])
        )


def load_schedules(builders: str | int | None) -> list[Schedule] | None:
    """The LOAD ranks' schedules, from --builders: one, or a comma list whose first is the case's
    (its ranks compare) and whose others are each restored cold beside it in every pair, for the
    case's `builders_sweep`; None: LOAD's own default. Each is `default`, `B` (at most B graphs
    built at a time), or `B:C` (and chunks of at most C nodes: 4:4096 was LOAD's default for
    graphs of up to 2,048 nodes before 60217d3). Raises WorkloadError for anything else."""
    if builders is None:
        return None
    items = list(dict.fromkeys(str(builders).split(",")))
    schedules = [_schedule(item) for item in items]
    if not items or None in schedules:
        raise WorkloadError(
            f"builders={builders}: let each rank build at least one graph at a time: give a number B, B:C (B at a time, in "
            "chunks of at most C nodes) or default, or a comma list of them such as default,4:4096"
        )
    return schedules


def _schedule(item: str) -> Schedule | None:
    """One item of --builders (None where it is not one)."""
    if item == "default":
        return Schedule(None)
    cap, colon, chunk = item.partition(":")
    try:
        schedule = Schedule(int(cap), int(chunk) if colon else None)
    except ValueError:
        return None
    return schedule if schedule.builders >= 1 and (schedule.chunk_nodes is None or schedule.chunk_nodes >= 0) else None


def _comma_numbers(text: str) -> list[int]:
    """The integers of a comma list, once each, in order; [] where any item is not one (the
    callers name what they expected)."""
    try:
        return list(dict.fromkeys(int(item) for item in text.split(",")))
    except ValueError:
        return []


def rank_threads(ranks_here: int, cpus: int | None = None) -> int:
    """Each rank's restore threads where `ranks_here` ranks share this machine's `cpus` cores
    (default: all of them): an equal share, at least one, at most LOAD's default. A LOAD worker
    that waits for a core delays its rank's graphs, and more threads than cores only slow the
    rank's module thread, which every graph waits for; the driver alone gets the same."""
    from foundry_trace.restore import DEFAULT_THREADS

    return max(1, min(DEFAULT_THREADS, (cpus or os.cpu_count() or 1) // ranks_here))


def free_memory() -> tuple[int, dict[str, object]]:
    """The least free memory of any GPU, in bytes (what one GPU's ranks share), and the
    device's fields (device_fields())."""
    environment = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES" or v.strip()}
    measured = run_child(MODULE, ["memory"], environment, timeout=120)
    return min(measured.pop("free_bytes")), measured


def workload_shape(workload: str, options: dict[str, object]) -> ModelShape:
    """The full model shape the bench's decode workload builds with these options."""
    from foundry_trace.bench.workloads.decode import shape_of
    from foundry_trace.bench.workloads.registry import workload as known_workload

    layers, batch_sizes = options.get("layers"), options.get("batch_sizes")
    return shape_of(str(known_workload(workload).options["preset"]), layers, batch_sizes)  # type: ignore[arg-type]


def memory_plan(shape: ModelShape, degree: int, ranks_per_gpu: int, free_bytes: int) -> dict[str, object]:
    """A degree's computed memory (tp_memory.py), printed for the log and kept in its case, and
    why it is not run where its ranks would not fit `free_bytes`."""
    from foundry_trace.bench.tp_memory import GIB, rank_memory, refusal

    estimate = rank_memory(shape, degree)
    print(f"tp{degree}: {ranks_per_gpu} ranks/GPU x {estimate.load_peak / GIB:.2f} GiB a rank (computed) = "
          f"{ranks_per_gpu * estimate.load_peak / GIB:.1f} GiB of {free_bytes / GIB:.1f} GiB free", file=sys.stderr, flush=True)
    return {"rank_gib_computed": {what.strip(): round(size / GIB, 3) for what, size in estimate.rows()},
            "refused": refusal(shape, degree, ranks_per_gpu, free_bytes)}


def logit_coverage(loaded: list[dict[str, object]], vocab: int) -> dict[str, object]:
    """What the ranks' comparisons covered of the logits. Replicated (every rank all of the
    vocabulary): the ranks' digests must agree batch by batch, as before. Vocabulary-parallel:
    nothing is replicated to agree on; the ranks' rows must tile [0, vocab) in rank order, so
    that each logit was compared, bit for bit with a native capture, on exactly one rank."""
    rows = [tuple(r["logit_rows"]) for r in loaded]
    if all(row == (0, vocab) for row in rows):
        replicated = [b for b in loaded[0]["digests"] if len({r["digests"][b] for r in loaded}) == 1]
        return {"logits": "replicated", "ranks_agree": len(replicated) == len(loaded[0]["digests"]),
                "batches_differing_between_ranks": sorted(set(loaded[0]["digests"]) - set(replicated), key=int)}
    starts, stops = [start for start, _ in rows], [stop for _, stop in rows]
    tiled = starts[0] == 0 and stops[-1] == vocab and all(stop == start for stop, start in zip(stops, starts[1:]))
    return {"logits": "vocabulary-parallel", "logit_rows_by_rank": [list(row) for row in rows], "logit_shards_cover_vocabulary": tiled,
            "ranks_agree": None, "batches_differing_between_ranks": []}


def _run_degrees(
    workload: str, degrees: list[int], directory: Path, output_dir: Path | None, kind: str, threads: int | None = None,
    compare: str = "all", repeats: int = DEFAULT_REPEATS, builders: list[Schedule] | None = None, **options: object,
) -> dict[str, object]:
    import torch

    from foundry_trace.bench.verify import LATENCY_STEPS

    gpus = torch.cuda.device_count()
    shape = workload_shape(workload, options)
    free_bytes, device = free_memory()
    saved = save_all(workload, degrees, directory, kind, **options)
    inspected = inspect_archives(directory, [d for d in degrees if "failed" not in saved[d]])
    extra = option_arguments(options)
    described = [s["description"] for s in saved.values() if "description" in s]  # the last degree SAVEd describes the run
    sharing = "" if kind == "nccl" else "; peer: rank r on GPU r mod GPUs, several ranks per GPU where there are fewer GPUs than ranks"
    cases: list[Case] = []

    def so_far() -> ResultsFile:
        """The results file of the degrees run so far (written after each: a run cut short keeps them)."""
        return ResultsFile.of_this_run(
            device,
            what="tp",
            workload=f"{workload}-tp{'-'.join(str(d) for d in degrees)}-{kind}" + (f"-{options['layers']}-layers" if options.get("layers") else "")
            + (f"-{options['attention']}-attention" if options.get("attention") else "") + ("" if compare == "all" else f"-compare-{compare}")
            + (f"-builders-{'-'.join(b.label.replace(':', 'x') for b in builders)}" if builders and len(builders) > 1 else ""),
            workload_desc=f"{described[-1] if described else workload}; one rank's step SAVEd per degree on one GPU with no peer; "
            f"each rank restores the same archive with its live {kind} communicator vs native warm-up + capture per rank, cold; "
            f"restore / driver alone: each rank's median of {repeats} cold pair(s){sharing}"
            + ("" if compare == "all" else f"; bit for bit at batch sizes {', '.join(map(str, LATENCY_STEPS))} only"),
            gpus=gpus,
            cases=cases, collectives_disagree=disagreeing_graphs(inspected),
        )

    for degree in degrees:
        cases.append(_degree_case(workload, degree, directory, kind, extra, gpus, shape, free_bytes, saved[degree], inspected.get(degree),
                                  threads or rank_threads(degree), compare, repeats, builders))
        results = so_far()
        if output_dir is not None:
            results.write(output_dir)
    return results.model_dump()


def _degree_case(
    workload: str, degree: int, directory: Path, kind: str, extra: list[str], gpus: int, shape: ModelShape, free_bytes: int,
    saved: dict[str, object], inspected: dict[str, object] | None, threads: int, compare: str, repeats: int = DEFAULT_REPEATS,
    builders: list[Schedule] | None = None,
) -> Case:
    """One degree's case: its ranks' figures (each rank on `threads` threads; the restore and the
    driver alone as each rank's medians of `repeats` cold pairs, timed alone; then N fresh ranks
    restore once more and compare), or why it failed or was not run.

    The timed ranks run no collective, so where ranks share a GPU they keep this process's MPS
    setting (side by side under a daemon), while the ranks that run collectives (native,
    comparing, prefetching) run outside MPS (run_peer_ranks()); `timed_mps` and
    `collectives_mps` record what the driver reported to each.

    An eager LOAD over the peer communicator ends when every rank has finished (the ranks agree
    on it), so each rank's restore lasts as long as the slowest rank's, while each driver-alone
    rank, started together with its peers, ends on its own. Beside each rank's ratio, the case
    therefore holds the ratio of the pairs' slowest ranks (`slowest_ranks_cold`: per pair, the
    slowest restore over the slowest driver alone).

    With several `builders` schedules, each pair restores once per schedule (the first last; the
    comparing ranks use it), and `builders_sweep` holds each one's ratios against the same drivers
    alone, by its label."""
    ranks_per_gpu = peer_ranks_per_gpu(degree, gpus) if kind == "peer" else 1
    placed = {"name": f"tp{degree}-{kind}", "communicator": kind, "degree": degree, "gpus": min(gpus, degree), "ranks_per_gpu": ranks_per_gpu}
    if "failed" in saved:
        return Case(**placed, failed=saved["failed"])
    shown = {k: v for k, v in inspected.items() if k != "per_graph"}
    case = {**placed, "archive_bytes": saved["archive_bytes"], "save_s": saved["save_s"], "collectives": saved["collectives"],
            "threads": threads, "cold_pairs": repeats, **shown}
    if kind == "nccl" and degree > gpus:
        return Case(**case, not_run=f"needs {degree} GPUs for NCCL, this machine has {gpus}")
    plan = memory_plan(shape, degree, ranks_per_gpu, free_bytes)
    case["rank_gib_computed"] = plan["rank_gib_computed"]
    if plan["refused"]:
        return Case(**case, not_run=plan["refused"])
    timed = [workload, str(directory), kind, *extra, "--threads", str(threads)]
    schedules = list(builders) if builders else [Schedule(None)]
    drivers: list[list[dict[str, object]]] = []
    restores: dict[Schedule, list[list[dict[str, object]]]] = {schedule: [] for schedule in schedules}
    try:
        native = _by_rank(run_degree(["native", workload, kind, *extra], degree, kind))
        for _ in range(repeats):  # alternating, so that a drift of the machine falls on both sides
            drivers.append(_by_rank(run_degree(["driver", *timed], degree, kind, collectives=False)))
            for schedule in [*schedules[1:], schedules[0]]:
                restores[schedule].append(
                    _by_rank(run_degree(["load", *timed, *schedule.flags(), "--compare", UNCOMPARED], degree, kind, collectives=False))
                )
        loaded = _by_rank(run_degree(["load", *timed, *schedules[0].flags(), "--compare", compare], degree, kind))
    except ChildProcessFailed as error:  # this degree's figures are lost; the other degrees' are kept
        return Case(**case, failed=_first_line(error))
    if len(schedules) > 1:
        case["builders_sweep"] = {schedule.label: _schedule_ratios(runs, drivers, degree) for schedule, runs in restores.items()}
    ours = restores[schedules[0]]
    last = ours[-1]  # the last timed restore: its spans explain the ratio
    case["builders"] = last[0]["builders"]  # the timed restores' cap: --builders, or LOAD's default
    case["chunk_nodes"] = last[0]["chunk_nodes"]  # the chunk the LOAD ranks used
    case["timed_mps"], case["collectives_mps"] = last[0].get("mps"), loaded[0].get("mps")
    case["prefetch_cold"] = _prefetch_case(timed, degree, kind, loaded)
    cold = _rank_ratios(ours, drivers, degree)
    slowest = _slowest_ranks(ours, drivers)
    native_s = [n["native_s"] for n in native]
    restore_s = [c["restore_s_median"] for c in cold]
    driver_s = [c["driver_cold_s_median"] for c in cold]
    deltas = {b: max((r["latency"][b]["delta_pct"] for r in loaded), key=abs) for b in loaded[0]["latency"]}
    return Case(
        **case, native_s=max(native_s), restore_s=max(restore_s),
        speedup=[n / r for n, r in zip(native_s, restore_s)],
        native_s_by_rank=native_s, restore_s_by_rank=restore_s, driver_cold_s_by_rank=driver_s,
        driver_build_s_by_rank=[_median(drivers, r, "driver_build_s") for r in range(degree)],
        driver_instantiate_s_by_rank=[_median(drivers, r, "driver_instantiate_s") for r in range(degree)],
        driver_modules_s_by_rank=[_median(drivers, r, "driver_modules_s") for r in range(degree)],
        restore_over_driver_cold=[c["ratio_median"] for c in cold],
        restore_over_driver_cold_min=[c["ratio_min"] for c in cold],
        restore_over_driver_cold_max=[c["ratio_max"] for c in cold],
        cold_runs_by_rank=cold,
        restore_over_slowest_driver_cold=slowest["ratio_median"], slowest_ranks_cold=slowest,
        bitwise_equal=all(r["bitwise_equal"] for r in loaded),
        compared_batches=loaded[0].get("compared_batches"),
        ranks_bitwise_equal=[r["bitwise_equal"] for r in loaded],
        mismatched_by_rank=[r["mismatched"] for r in loaded],
        **logit_coverage(loaded, shape.vocab),
        archive_digests=[r["archive_digest"] for r in loaded],
        nondeterministic_native=sorted({b for r in loaded for b in r["nondeterministic_native"]}),
        replay_delta_pct=deltas, replay_ms_by_rank=[r["latency"] for r in loaded],
        compared_restore_s_by_rank=[r["restore_s"] for r in loaded],  # beside ranks that run collectives: not in the ratio
        phases_s_by_rank=[r["phases"] for r in last],
        busy_s_by_rank=[r["busy"] for r in last],
        timeline_s_by_rank=[r["timeline"] for r in last],
        spans_by_rank=[r["spans"] for r in last],  # each task of the last timed restore: where a rank's threads waited
        graphs_restored=[r["graphs"] for r in loaded],
    )


def _prefetch_case(timed: list[str], degree: int, kind: str, loaded: list[dict[str, object]]) -> dict[str, object]:
    """The degree's ranks once more, each with prefetch() at process start (child_prefetch): per
    rank the time from the restore point until every graph is ready, the graphs ready before it,
    and whether its latency batches' outputs equal the comparing LOAD rank's bit for bit. A
    failure here is recorded, not raised: the case's other figures stand."""
    try:
        ranks = _by_rank(run_degree(["prefetch", *timed], degree, kind))
    except ChildProcessFailed as error:
        return {"failed": _first_line(error)}
    at = [r["at_restore_point_s"] for r in ranks]
    return {
        "at_restore_point_s": max(at), "at_restore_point_s_by_rank": at, "engine_s_by_rank": [r["engine_s"] for r in ranks],
        "ready_before_restore_point_by_rank": [r["ready_before_restore_point"] for r in ranks],
        "bitwise_equal_to_load_by_rank": [_same_outputs(early["digests"], late.get("digests") or {}) for early, late in zip(ranks, loaded, strict=True)],
    }


def _same_outputs(prefetched: dict[str, str], loaded: dict[str, str]) -> bool:
    """Whether a prefetching rank's digests (some batch sizes) equal the comparing LOAD rank's
    for the same batch sizes: False where they share none (nothing was compared)."""
    shared = prefetched.keys() & loaded.keys()
    return bool(shared) and shared == prefetched.keys() and all(prefetched[b] == loaded[b] for b in shared)


def _rank_ratios(restores: list[list[dict[str, object]]], drivers: list[list[dict[str, object]]], degree: int) -> list[dict[str, object]]:
    """Each rank's cold pairs, its restores against its drivers alone (cold_ratios())."""
    return [cold_ratios([runs[r]["restore_s"] for runs in restores], [runs[r]["driver_cold_s"] for runs in drivers]) for r in range(degree)]


def _slowest_ranks(restores: list[list[dict[str, object]]], drivers: list[list[dict[str, object]]]) -> dict[str, object]:
    """Per pair, the slowest restoring rank over the slowest driver-alone rank (cold_ratios())."""
    return cold_ratios([max(r["restore_s"] for r in runs) for runs in restores], [max(r["driver_cold_s"] for r in runs) for runs in drivers])


def _schedule_ratios(restores: list[list[dict[str, object]]], drivers: list[list[dict[str, object]]], degree: int) -> dict[str, object]:
    """One schedule's restores against the pairs' drivers alone: each rank's median restore
    and median ratio, and the slowest ranks' median ratio."""
    cold = _rank_ratios(restores, drivers, degree)
    return {"restore_s_by_rank": [c["restore_s_median"] for c in cold], "restore_over_driver_cold": [c["ratio_median"] for c in cold],
            "restore_over_slowest_driver_cold": _slowest_ranks(restores, drivers)["ratio_median"]}


def _by_rank(results: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(results, key=lambda r: r["rank"])


def _median(runs: list[list[dict[str, object]]], rank: int, key: str) -> float | None:
    """A rank's median of one figure over its runs (None where no run recorded it)."""
    values = [run[rank][key] for run in runs if run[rank].get(key) is not None]
    return statistics.median(values) if values else None


def render(results: dict[str, object]) -> str:
    from rich.table import Table

    from foundry_trace.bench.results import table_text

    sharing = {True: ", MPS", False: ", no MPS"}.get(results.get("mps"), "")  # ranks sharing a GPU take turns without it
    table = Table(title=f"{results['device']} x {results['gpus']}{sharing} / {results['workload']}")
    columns = ("degree (ranks/GPU)", "graphs / nodes", "collective nodes (per graph)", "archive MiB", "native s (worst rank)",
               "restore s (worst rank's median)", "speed-up (least)", "restore / driver (worst rank's median, its range; slowest ranks')", "bitwise (ranks agree / shards tile)", "replay delta %")
    for column in columns:
        table.add_column(column, justify="right")
    for c in results["cases"]:
        if c.get("archive_bytes") is None:  # its SAVE failed: no archive to describe
            table.add_row(f"{c['name']} ({c.get('ranks_per_gpu', 1)}/GPU)", "", "", "", f"failed: {c['failed'][:60]}", "", "", "", "", "")
            continue
        threads = f", {c['threads']} threads" if c.get("threads") else ""
        timed = ", timed under MPS" if c.get("timed_mps") and not c.get("collectives_mps") else ""  # run_peer_ranks()
        saved = [
            f"{c['name']} ({c.get('ranks_per_gpu', 1)}/GPU{threads}{timed})", f"{c['graphs']} / {c['nodes']}",
            f"{c['collective_nodes']} ({', '.join(map(str, c['collectives_per_graph']))})", f"{c['archive_bytes'] / 2**20:.1f}",
        ]
        if c.get("not_run") or c.get("failed"):
            table.add_row(*saved, c.get("not_run") or f"failed: {c['failed'][:60]}", "", "", "", "", "")
            continue
        deltas = " ".join(f"b{b}:{d:+.2f}" for b, d in c["replay_delta_pct"].items())
        table.add_row(
            *saved, f"{c['native_s']:.2f}", f"{c['restore_s']:.3f}", f"{min(c['speedup']):.1f}x", _worst_ratio(c),
            f"{c['bitwise_equal']} ({_agreement(c)}{_compared(c)})", deltas,
        )
    disagree = results["collectives_disagree"]
    agreement = (
        "every graph holds the same collectives in every degree's archive" if not disagree
        else f"graphs whose collectives differ between degrees: {', '.join(disagree)}"
    )
    lines = [_prefetch_line(c) + _sweep_line(c) for c in results["cases"]]
    return table_text(table, width=170) + agreement + "\n" + "".join(lines)


def _sweep_line(case: dict[str, object]) -> str:
    """A line on the case's schedules restored side by side (`builders_sweep`), where there were several."""
    sweep = case.get("builders_sweep")
    if not sweep:
        return ""
    shown = "; ".join(
        f"{label} {max(s['restore_over_driver_cold']):.2f} (slowest ranks {s['restore_over_slowest_driver_cold']:.2f})" for label, s in sweep.items()
    )
    return f"{case['name']} restore / driver alone by schedule (--builders; worst rank's median): {shown}\n"


def _prefetch_line(case: dict[str, object]) -> str:
    """A line on the case's prefetching ranks (_prefetch_case), where they ran."""
    early = case.get("prefetch_cold")
    if early is None:
        return ""
    if "failed" in early:
        return f"{case['name']} with prefetch() at process start: failed: {early['failed']}\n"
    return (
        f"{case['name']} with prefetch() at process start: every graph ready {early['at_restore_point_s']:.3f} s after the restore "
        f"point (worst rank), {min(early['ready_before_restore_point_by_rank'])}+ graphs a rank ready before it, bit for bit with "
        f"the LOAD ranks at the latency batch sizes: {all(early['bitwise_equal_to_load_by_rank'])}\n"
    )


def _worst_ratio(case: dict[str, object]) -> str:
    """The worst rank's median restore / driver alone, with that rank's range over its cold pairs,
    and the slowest ranks' median ratio where recorded."""
    ratios = case["restore_over_driver_cold"]
    worst = ratios.index(max(ratios))
    lows, highs = case.get("restore_over_driver_cold_min"), case.get("restore_over_driver_cold_max")
    spread = f" ({lows[worst]:.2f}-{highs[worst]:.2f})" if lows and highs else ""
    slowest = case.get("slowest_ranks_cold")
    last = f"; slowest ranks {slowest['ratio_median']:.2f}" if slowest else ""
    return f"{ratios[worst]:.2f}{spread}{last}"


def _compared(case: dict[str, object]) -> str:
    """The table's note where the ranks compared some batch sizes only."""
    compared = case.get("compared_batches")
    return "" if compared is None else f"; batches {', '.join(map(str, compared))} only"


def _agreement(case: dict[str, object]) -> str:
    """The table's word on what the ranks' outputs share: replicated logits agree, or the
    vocabulary-parallel shards tile the vocabulary."""
    if case.get("logits") == "vocabulary-parallel":
        return f"shards tile the vocabulary: {case['logit_shards_cover_vocabulary']}"
    return str(case["ranks_agree"])


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    options = parsed_options(arguments)
    if arguments.role == "save":
        workload, degree, archive, kind = arguments.rest
        return child_save(workload, int(degree), archive, kind, options)
    if arguments.role == "memory":
        return child_memory()
    if arguments.role == "native":
        return child_native(arguments.rest[0], arguments.rest[1], options)
    workload, directory, kind = arguments.rest
    if arguments.role == "driver":
        return child_driver(workload, directory, kind, arguments.threads, options)
    if arguments.role == "prefetch":
        return child_prefetch(workload, directory, kind, arguments.threads, options)
    return child_load(
        workload, directory, kind, arguments.threads, arguments.compare, options, arguments.builders, arguments.chunk_nodes
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="a child process of `foundry bench tp` (one rank)")
    parser.add_argument("role", choices=("save", "native", "driver", "load", "prefetch", "memory"))
    from foundry_trace.restore import DEFAULT_THREADS

    parser.add_argument("rest", nargs="*")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="driver, load, prefetch: this rank's restore threads")
    parser.add_argument("--builders", type=int, help="load: this rank's cap on graphs built at a time (default LOAD's)")
    parser.add_argument("--chunk-nodes", type=int, help="load: this rank's chunk of nodes (load()'s chunk_nodes; default LOAD's)")
    parser.add_argument("--compare", choices=(*COMPARED, UNCOMPARED), default="all",
                        help="load: the batch sizes compared bit for bit (run()'s compare; none: the restore timed alone)")
    add_option_flags(parser)
    return parser


if __name__ == "__main__":
    child_main(_run, _parser())

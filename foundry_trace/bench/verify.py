"""Restored graphs against native ones: outputs bit for bit, replay latency.

Two references: the graphs SAVE captured (their output digests, taken in the SAVE process on
fixed inputs and stored in the archive: GraphEntry.references), and a native capture of the same
graphs in the LOAD process (timed: warm-up + capture + instantiate). Restored graphs are the SAVE
graphs, so they must match the first exactly; a native capture in another process may pick
other kernels. Used by `foundry verify`, `foundry bench` and the GPU tests.

Rank-independent: with collectives inside the graphs, every rank must replay the same graphs the
same number of times, or one rank waits forever for its peer. So no count here depends on what
a rank sees by itself: the comparisons replay every graph a fixed number of times (a mismatch
does not end them early), and the latency's replays per run, which follow the graph's duration,
are agreed between the ranks through the communicator (agreed_count).
"""

from __future__ import annotations

import gc
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from foundry_trace.archive.keys import batch_of
from foundry_trace.archive.manifest import Manifest
from foundry_trace.bench.capture import OUTPUT_NAME, CapturedStep, capture_steps
from foundry_trace.bench.workloads.registry import Engine
from foundry_trace.errors import WorkloadError
from foundry_trace.parallel.collectives import Communicator
from foundry_trace.restore import Restored
from foundry_trace.save.recording import Recording

INPUT_SEED = 1000
REFERENCE_REPLAYS = 5
RECHECK_REPLAYS = 20  # replays of a restored graph whose output differed from SAVE's, to see it vary
LATENCY_ROUNDS = 3
LATENCY_BATCH_MS = 20.0
LATENCY_WARMUPS = 4  # replays before a latency measurement, untimed
LATENCY_BATCHES = 21  # runs of back-to-back replays per measurement, of which the median counts
LATENCY_STEPS = (1, 64, 256)  # the batch sizes whose replay latency the benches compare, native against restored


@dataclass(frozen=True)
class Effort:
    """How many replays a comparison spends: the native capture's replays that check it is
    deterministic, the alternating latency rounds, the runs per latency measurement, and the
    untimed replays before each measurement."""

    reference_replays: int = REFERENCE_REPLAYS
    latency_rounds: int = LATENCY_ROUNDS
    latency_batches: int = LATENCY_BATCHES
    latency_warmups: int = LATENCY_WARMUPS


FULL = Effort()
# Ranks sharing a GPU take turns on it: every collective waits for each peer's time slice, so a
# replay lasts tens to hundreds of milliseconds and the full effort would take many minutes;
# the turns are regular, so fewer runs give as steady a median, after one untimed replay (the
# first replay already uploaded the graph; more warm it no further).
SHARED_GPU = Effort(reference_replays=2, latency_rounds=1, latency_batches=7, latency_warmups=1)
# A whole model on one GPU (the registry's `large` workloads): a replay of a large batch takes
# tens of ms, and five checking replays of each of 67 graphs took 36 s of SAVE's time for the
# Qwen3-235B rank (issue 35), again in the LOAD child's native capture. Two replays after the
# first still show a graph nondeterministic where any replay differs; every graph's output is
# still compared bit for bit. Latency keeps its full effort: the 1 % replay target needs it.
WHOLE_MODEL = Effort(reference_replays=2)
# A piecewise step (vLLM's shape) replays its pieces with an eager attention launched from the
# host between each two, so a step replays for as long as a whole model's, most of it that eager
# attention, and the 67 steps' checking replays took most of SAVE's time and of the LOAD child's
# comparison (docs/measurements.md). The same two replays after the first suffice. Fewer checking
# replays can only err one way: a nondeterministic graph taken as deterministic is compared bit
# for bit and shows as a mismatch; none can hide one.
PIECEWISE = Effort(reference_replays=2)


def effort_of(workload: str) -> Effort:
    """The replays the bench spends on `workload`'s graphs: WHOLE_MODEL for large workloads,
    PIECEWISE for workloads that cut their steps into pieces, FULL for the others."""
    from foundry_trace.bench.workloads.registry import splits_steps
    from foundry_trace.bench.workloads.registry import workload as chosen

    if chosen(workload).large:
        return WHOLE_MODEL
    return PIECEWISE if splits_steps(workload) else FULL


def output_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of the tensor's bytes, hashed from the host copy itself (no second copy)."""
    return hashlib.sha256(tensor.detach().contiguous().view(torch.uint8).cpu().numpy()).hexdigest()


def output_on_fixed_inputs(engine: Engine, batch: int, replay: Callable[[], None], output: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A copy of one step's output from a clean state: KV cache zeroed, seeded inputs."""
    engine.prepare(batch, seed=INPUT_SEED + batch)
    replay()
    return output().detach().contiguous().clone()


def run_on_fixed_inputs(engine: Engine, batch: int, replay: Callable[[], None], output: Callable[[], torch.Tensor]) -> str:
    """The digest of one step's output from a clean state."""
    return output_digest(output_on_fixed_inputs(engine, batch, replay, output))


def restored_batches(restored: Restored) -> list[int]:
    """The batch sizes whose steps the restored graphs make up (one graph each, or pieces)."""
    return sorted({batch for batch in map(batch_of, restored.graphs) if batch is not None})


class Hashing:
    """Digests taken on a thread of their own while the caller replays the next batches (hashlib
    and the copy to the host release the GIL): the logits of a pass over the 67 batch sizes are
    gigabytes, seconds of hashing that would otherwise add to the seconds of replays. At most
    one output waits for its digest while the next is made, so the copies held stay at two
    whatever the hashing's speed."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="foundry-digests")
        self._digests: dict[str, Future] = {}
        self._last: Future | None = None

    def submit(self, key: str, output: torch.Tensor) -> None:
        """Hashes `output` (a copy the caller no longer writes), in stream order: after the work
        queued so far; first waits for the previous output's digest."""
        if self._last is not None:
            self._last.result()
        self._last = self._digests[key] = self._pool.submit(output_digest, output)

    def results(self) -> dict[str, str]:
        """Every digest, by key, in the order submitted (waits for the last ones)."""
        try:
            return {key: future.result() for key, future in self._digests.items()}
        finally:
            self._pool.shutdown(wait=True)


def restored_digests(engine: Engine, restored: Restored, batches: list[int] | None = None) -> dict[str, str]:
    """The digest of each restored step's output on its batch's fixed inputs (lazy graphs
    restore at their replay here); of `batches` only, where given. Each output is hashed while
    the next batch replays (Hashing)."""
    hashing = Hashing()
    for batch in restored_batches(restored) if batches is None else batches:
        replay, output = engine.restored_step(restored, batch)
        hashing.submit(str(batch), output_on_fixed_inputs(engine, batch, replay, lambda output=output: output))
    return hashing.results()


def varying_on_replay(engine: Engine, restored: Restored, batches: list[int], replays: int = RECHECK_REPLAYS) -> list[int]:
    """Of `batches` (restored steps whose outputs differed from SAVE's), those whose replays on
    the same fixed inputs differ among themselves here: nondeterministic, shown in this process,
    so no restore could match them bit for bit. A step that replays alike and still differs is a
    real mismatch, or nondeterministic too rarely for `replays` to show it."""
    varying = []
    for batch in batches:
        replay, output = engine.restored_step(restored, batch)

        def again(replay=replay, output=output) -> torch.Tensor:  # noqa: ANN001
            return output_on_fixed_inputs(engine, batch, replay, lambda: output)

        if not _replays_agree(again(), again, replays):
            varying.append(batch)
    return varying


def differing_from_saved(digests: dict[str, str], saved: dict[str, dict[str, object]]) -> list[int]:
    """The batches whose digest differs from SAVE's, among those SAVE found deterministic."""
    return sorted(int(key) for key, digest in digests.items() if saved[key]["deterministic"] and digest != saved[key]["digest"])


def split_nondeterministic(differing: list[int], nondeterministic: list[int]) -> tuple[list[int], list[int]]:
    """Batches whose outputs differ from SAVE's: those a native capture here replays
    deterministically (real mismatches), and those it shows nondeterministic, set apart (SAVE's
    few replays can agree by chance: cuDNN's attention did at batches 24 and 72)."""
    return [b for b in differing if b not in nondeterministic], [b for b in differing if b in nondeterministic]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))  # NaN equals NaN here, as bits do


def _replays_agree(first: torch.Tensor, again: Callable[[], torch.Tensor], replays: int) -> bool:
    """Whether `replays` more outputs all have `first`'s bits; every replay runs whatever they
    show, so that ranks whose graphs hold collectives replay alike."""
    return all([_same_bits(first, again()) for _ in range(replays)])


def reference_outputs(engine: Engine, steps: dict[int, CapturedStep], replays: int = REFERENCE_REPLAYS) -> dict[str, dict[str, object]]:
    """Per batch: the digest of the captured graph's output on fixed inputs, and whether
    `replays` more replays all give the same bits (a graph that does not is nondeterministic: it
    cannot be compared bit for bit, by Foundry or by anyone). The replays are compared on the
    device; only the first output is read back and hashed (hashing a 512 x 128k logits tensor on
    the host six times per graph took minutes for 67 graphs), on a thread of its own while the
    next batches replay (hashlib and the copy release the GIL)."""
    deterministic = {}
    hashing = Hashing()
    for batch, step in steps.items():
        def again(s=step) -> torch.Tensor:  # noqa: ANN001
            return output_on_fixed_inputs(engine, batch, s.replay, lambda: s.output)

        first = again()
        hashing.submit(str(batch), first)  # in stream order: after this replay
        deterministic[str(batch)] = _replays_agree(first, again, replays)
    digests = hashing.results()
    return {key: {"digest": digests[key], "deterministic": deterministic[key]} for key in digests}


def record_references(recording: Recording, engine: Engine, steps: dict[int, CapturedStep], replays: int = REFERENCE_REPLAYS) -> None:
    """Stores in the archive what each captured step's output holds on its batch's fixed inputs
    (reference_outputs, `replays` checking replays each), with the graph that declares the
    output, so that any later restore can be checked against SAVE's graphs."""
    for batch, reference in reference_outputs(engine, steps, replays).items():
        recording.add_reference(steps[int(batch)].output_key, OUTPUT_NAME, reference["digest"], reference["deterministic"])


def saved_references(manifest: Manifest) -> dict[str, dict[str, object]] | None:
    """The references SAVE stored, by batch size (reference_outputs' shape), or None where it
    stored none."""
    found = {
        str(batch_of(entry.key)): {"digest": reference.digest, "deterministic": reference.deterministic}
        for entry in manifest.graphs
        for reference in entry.references
        if reference.name == OUTPUT_NAME and batch_of(entry.key) is not None
    }
    return found or None


def agreed_count(count: int, communicator: Communicator | None, device: str = "cuda") -> int:
    """A count every rank uses alike: the ranks' counts averaged (rounded up) through an
    all-reduce, so each gets the same number whatever it measured by itself."""
    if communicator is None or communicator.world_size == 1:
        return count
    total = torch.tensor([float(count), 0.0, 0.0, 0.0], device=device)  # 16 bytes: what every communicator reduces
    communicator.all_reduce(total)
    return max(1, math.ceil(total[0].item() / communicator.world_size))


def replay_latency_ms(
    replay: Callable[[], None], batches: int = LATENCY_BATCHES, batch_ms: float = LATENCY_BATCH_MS, communicator: Communicator | None = None,
    warmups: int = LATENCY_WARMUPS,
) -> float:
    """Device time of one replay: the median over `batches` runs of back-to-back replays, timed
    with CUDA events. Back to back, the device never waits for the host, so the figure is the
    graph's own, not the launch call's (a few microseconds of Python, which a single event-timed
    replay of a short graph would count). A run holds as many replays as fill about `batch_ms`
    (2 to 20): a 60 ms graph needs no 20 to hide its launch, and 20 of it would take minutes."""
    for _ in range(warmups):
        replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    replay()
    end.record()
    end.synchronize()
    replays_per_batch = agreed_count(min(20, max(2, math.ceil(batch_ms / max(start.elapsed_time(end), 1e-3)))), communicator)
    samples = []
    for _ in range(batches):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays_per_batch):
            replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / replays_per_batch)
    samples.sort()
    return samples[len(samples) // 2]


def latency_pair(
    native: Callable[[], None], restored: Callable[[], None], communicator: Communicator | None, effort: Effort = FULL
) -> dict[str, float]:
    """Native and restored replay latency, medians over alternating rounds (a drift of clocks or
    temperature hits both alike), and the restored one's difference in per cent."""
    batches = effort.latency_batches
    rounds = [
        (replay_latency_ms(native, batches, communicator=communicator, warmups=effort.latency_warmups),
         replay_latency_ms(restored, batches, communicator=communicator, warmups=effort.latency_warmups))
        for _ in range(effort.latency_rounds)
    ]
    native_ms = sorted(n for n, _ in rounds)[len(rounds) // 2]
    restored_ms = sorted(r for _, r in rounds)[len(rounds) // 2]
    return {"native_ms": native_ms, "restored_ms": restored_ms, "delta_pct": 100 * (restored_ms / native_ms - 1)}


def launching_all(replays: list[Callable[[], None]]) -> Callable[[], None]:
    """A step's graphs launched back to back, without the eager work between them: for a
    piecewise step at small batches, the host's eager attention dominates the step and varies
    by tens of per cent between rounds on the H200 (10 to 20 ms at batch 1, native and restored
    alike), which hides what the graphs themselves take."""

    def launch() -> None:
        for replay in replays:
            replay()

    return launch


def compare(
    engine: Engine,
    restored: Restored,
    saved: dict[str, dict[str, object]] | None = None,
    latency_batches: tuple[int, ...] = LATENCY_STEPS,
    communicator: Communicator | None = None,
    effort: Effort = FULL,
    batch_by_batch: bool = False,
    only: Sequence[int] | None = None,
) -> dict[str, object]:
    """Captures the restored graphs' batch sizes natively (timed) and compares outputs and replay
    latency (of the step, and for a step of several graphs, of its graphs alone too); with
    `saved` (saved_references() of the archive), also against SAVE's graphs. `communicator`: a
    tensor-parallel rank's, through which the ranks agree on replay counts. `effort`: the
    replays spent (SHARED_GPU where ranks share a GPU). The result holds the restored outputs' digests by batch, which ranks whose
    output is replicated compare with each other.

    `batch_by_batch`: the native side is captured, compared and destroyed one batch size at a
    time (largest first, as capture_steps orders them), so that beside the restored graphs'
    pool this process holds one native step's memory, not a second whole pool: where several
    ranks share a GPU, the second pool is what ran 8 ranks out of memory. Every batch is still
    compared bit for bit with a native capture made here, with the same determinism replays, and
    the latency batches alternate native and restored replays as before; native_s is then the
    sum of the per-batch captures.

    `only`: compare these batch sizes alone (those the restore holds); the result's
    `compared_batches` names them. None: every batch size (`compared_batches` None).

    The result's `compare_s` says where the comparison's time went: the native captures, their
    reference outputs (determinism replays included), the restored outputs, replay latency."""
    sizes = [b for b in restored_batches(restored) if only is None or b in only]
    spent = _Spent()
    if batch_by_batch:
        here, digests, latency = _compare_each_batch(engine, restored, sizes, latency_batches, communicator, effort, spent)
    else:
        with spent("capture"):
            native = capture_steps(engine, sizes)
        with spent("references"):
            here = reference_outputs(engine, native, effort.reference_replays)
        with spent("restored"):
            digests = restored_digests(engine, restored)
        with spent("latency"):
            latency = {str(b): _latency(engine, restored, native[b], communicator, effort) for b in latency_batches if b in native}
    verdict = against_native(sizes, here, digests, saved)
    result: dict[str, object] = {
        "native_s": spent.seconds["capture"],
        "compare_s": dict(spent.seconds),
        "graphs": len(restored.graphs),
        "steps": len(sizes),
        "compared_batches": None if only is None else sizes,
        "bitwise_equal": not verdict["mismatched"],
        **verdict,
        "latency": latency,
        "digests": digests,
    }
    if saved is not None:
        mismatched_saved, set_apart = split_nondeterministic(differing_from_saved(digests, saved), verdict["nondeterministic_native"])
        result.update(
            bitwise_equal_saved=not mismatched_saved,
            mismatched_saved=mismatched_saved,
            mismatched_saved_nondeterministic=set_apart,
        )
    return result


def _latency(engine: Engine, restored: Restored, native: CapturedStep, communicator: Communicator | None, effort: Effort) -> dict[str, object]:
    """Replay latency of one batch's native and restored step (and, for a step of several graphs,
    of its graphs alone)."""
    restored_replay, _ = engine.restored_step(restored, native.batch)
    latency: dict[str, object] = dict(latency_pair(native.replay, restored_replay, communicator, effort))
    if len(native.graphs) > 1:
        latency["graphs_only"] = latency_pair(
            launching_all([g.replay for g in native.graphs]), launching_all([g.replay for g in restored.group(native.batch)]),
            communicator, effort,
        )
    return latency


class _Spent:
    """Seconds spent per part of a comparison, summed over its uses (`with spent("capture"):`);
    the GPU is synchronised on entry and exit, so that each part holds its own GPU work."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"capture": 0.0, "references": 0.0, "restored": 0.0, "latency": 0.0, "release": 0.0}

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        torch.cuda.synchronize()
        self.seconds[part] += time.perf_counter() - start


def _compare_each_batch(
    engine: Engine, restored: Restored, sizes: list[int], latency_batches: tuple[int, ...], communicator: Communicator | None,
    effort: Effort, spent: _Spent,
) -> tuple[dict[str, dict[str, object]], dict[str, str], dict[str, object]]:
    """compare()'s batch_by_batch: per batch size, largest first, a native capture (timed), its
    reference digest and determinism replays, the restored step's digest, the latency where
    asked, then the native graphs destroyed and their memory handed back to the graph pool
    before the next batch's capture. Every rank runs the same sequence (the module's rule)."""
    here: dict[str, dict[str, object]] = {}
    digests: dict[str, str] = {}
    latency: dict[str, object] = {}
    for batch in sorted(sizes, reverse=True):
        with spent("capture"):
            native = capture_steps(engine, [batch])
        with spent("references"):
            here.update(reference_outputs(engine, native, effort.reference_replays))
        with spent("restored"):
            replay, output = engine.restored_step(restored, batch)
            digests[str(batch)] = run_on_fixed_inputs(engine, batch, replay, lambda output=output: output)
        if batch in latency_batches:
            with spent("latency"):
                latency[str(batch)] = _latency(engine, restored, native[batch], communicator, effort)
        with spent("release"):  # nothing of this batch's native graphs may still run when they go
            del native
            gc.collect()
    ordered = sorted(sizes)
    return ({str(b): here[str(b)] for b in ordered}, {str(b): digests[str(b)] for b in ordered},
            {str(b): latency[str(b)] for b in latency_batches if str(b) in latency})


def against_native(
    sizes: list[int], here: dict[str, dict[str, object]], digests: dict[str, str], saved: dict[str, dict[str, object]] | None
) -> dict[str, list[int]]:
    """The restored digests against a native capture's references (`here`, reference_outputs):
    the batches that differ, those whose native replays disagreed among themselves, and where
    SAVE's references are known, the differing batches set apart because SAVE found them
    nondeterministic (a few native replays can agree by chance: cuDNN's attention did at
    batch 144 on the H200, where SAVE's had not) and the batches whose native output differs
    from SAVE's (another kernel chosen here)."""
    mismatched, nondeterministic, native_differs_from_saved = [], [], []
    for batch in sizes:
        reference = here[str(batch)]
        if not reference["deterministic"]:
            nondeterministic.append(batch)
        elif digests[str(batch)] != reference["digest"]:
            mismatched.append(batch)
        if saved is not None and saved[str(batch)]["deterministic"]:
            if reference["deterministic"] and reference["digest"] != saved[str(batch)]["digest"]:
                native_differs_from_saved.append(batch)
    verdict = {"nondeterministic_native": nondeterministic}
    if saved is None:
        return {"mismatched": mismatched, **verdict}
    nondeterministic_saved = sorted(int(b) for b, r in saved.items() if not r["deterministic"])
    mismatched, set_apart = split_nondeterministic(mismatched, nondeterministic_saved)
    return {
        "mismatched": mismatched, **verdict, "mismatched_nondeterministic_at_save": set_apart,
        "nondeterministic_saved": nondeterministic_saved, "native_differs_from_saved": native_differs_from_saved,
    }


def verify_archive(archive: Path | None, workload: str | None, threads: int, **options: object) -> tuple[dict[str, object], str]:
    """What `foundry verify` runs: restores `archive` in a fresh process with the engine of the
    workload that wrote it (its metadata names it; `workload` overrides), captures the same
    graphs natively there and compares, bit for bit, with that capture and with the outputs SAVE
    stored in the archive (where it stored them). Without `archive`, SAVEs one first. Returns
    the verify child's result and the workload's name."""
    import tempfile

    from foundry_trace.archive.format import Archive
    from foundry_trace.bench.hardware import require_gpu
    from foundry_trace.bench.roles import run_role
    from foundry_trace.bench.workloads.registry import workload as known_workload
    from foundry_trace.bench.workloads.registry import workload_of

    given = {k: v for k, v in options.items() if v is not None}
    if archive is None:
        name = workload or "small"
        known_workload(name)
        require_gpu("`foundry verify`")
        with tempfile.TemporaryDirectory(prefix="foundry-verify-") as scratch:
            path = Path(scratch) / f"{name}.foundry"
            run_role("save", name, path, **given)
            return run_role("verify", name, path, threads=threads, **given), name
    with Archive(archive) as opened:
        named = workload_of(opened.manifest.metadata)
    if workload is None and named is None:
        raise WorkloadError(
            f"{archive} does not name the workload that wrote it (it was not saved by `foundry bench`), and verify "
            "must rebuild that engine's state: pass --workload NAME"
        )
    name = workload or named[0]
    known_workload(name)
    saved_options = named[1] if named is not None and named[0] == name else {}
    require_gpu("`foundry verify`")
    return run_role("verify", name, archive, threads=threads, **{**saved_options, **given}), name

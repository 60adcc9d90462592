"""Tensor parallelism on the CPU: one rank's shapes, archives by degree, communicator checks, and
collective nodes in the node table."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundry_trace.archive._node_table import decode, encode
from foundry_trace.archive.records import CollectiveNode, Edge, EmptyNode, GraphBody, PeerWindowRecord, walk_nodes
from foundry_trace.archive.summary import render, summarize
from foundry_trace.bench.workloads.decode import PRESETS, rank_shape
from foundry_trace.errors import ArchiveFormatError, StallError, TensorParallelError, WorkloadError
from foundry_trace.parallel.collectives import check_communicator, tensor_parallel_archive
from foundry_trace.parallel.time_limit import call_with_time_limit

from .archive_samples import COLLECTIVES, archive_contents, fixed_contents, write_archive


class _Ranks:
    def __init__(self, world_size: int) -> None:
        self.world_size, self.rank = world_size, 0


@given(st.sampled_from(sorted(PRESETS)), st.sampled_from([1, 2, 4, 8]))
def test_a_rank_holds_its_share_and_head_size_is_kept(preset: str, ranks: int) -> None:
    shape = PRESETS[preset]
    if any(getattr(shape, n) % ranks for n in ("heads", "kv_heads", "intermediate", "vocab")):
        with pytest.raises(ValueError, match="does not divide"):
            rank_shape(shape, ranks)
        return
    share = rank_shape(shape, ranks)
    assert (share.heads * ranks, share.kv_heads * ranks, share.intermediate * ranks) == (shape.heads, shape.kv_heads, shape.intermediate)
    assert share.head_dim == shape.head_dim and share.hidden == shape.hidden and share.vocab == shape.vocab


def test_an_archive_is_chosen_by_rank_count(tmp_path: Path) -> None:
    (tmp_path / "tp1.foundry").write_bytes(b"x")
    (tmp_path / "tp2.foundry").write_bytes(b"x")
    assert tensor_parallel_archive(tmp_path, 2) == tmp_path / "tp2.foundry"
    with pytest.raises(TensorParallelError, match=r"no archive for tensor parallelism 4 \(it holds: tp1.foundry, tp2.foundry\).*--degrees 4"):
        tensor_parallel_archive(tmp_path, 4)


def test_a_communicator_must_match_the_archive() -> None:
    check_communicator(1, 0, None, "a")
    check_communicator(2, 64, _Ranks(2), "a")
    with pytest.raises(TensorParallelError, match="saved for tensor parallelism 2, but the communicator has 4 ranks.*foundry bench tp --degrees 4"):
        check_communicator(2, 64, _Ranks(4), "a")
    with pytest.raises(TensorParallelError, match="pass communicator="):
        check_communicator(2, 64, None, "a")
    with pytest.raises(TensorParallelError, match="pass communicator="):
        check_communicator(1, 3, None, "a")


class _Peers(_Ranks):
    def __init__(self, world_size: int, window: PeerWindowRecord, connected: bool = True) -> None:
        super().__init__(world_size)
        self.window_record, self.connected = window, connected


WINDOW = PeerWindowRecord(base=0x240000000000, stride=1 << 30, buffer_bytes=64 << 20)


def test_a_peer_archive_needs_a_connected_peer_communicator_on_its_window() -> None:
    check_communicator(4, 0, _Peers(4, WINDOW), "a", WINDOW)
    with pytest.raises(TensorParallelError, match=r"saved with peer all-reduces, and the communicator given is a _Ranks: load it with a PeerCommunicator"):
        check_communicator(4, 0, _Ranks(4), "a", WINDOW)
    with pytest.raises(TensorParallelError, match=r"PeerCommunicator.from_environment\(\)\) to load\(\)"):
        check_communicator(4, 0, None, "a", WINDOW)
    with pytest.raises(TensorParallelError, match="saved for tensor parallelism 4, but the communicator has 2 ranks"):
        check_communicator(4, 0, _Peers(2, WINDOW), "a", WINDOW)
    moved = WINDOW.model_copy(update={"base": 0x300000000000})
    with pytest.raises(TensorParallelError, match="peer window at 0x240000000000 .* this communicator's is at 0x300000000000.*FOUNDRY_ALLOC_PEER_BASE"):
        check_communicator(4, 0, _Peers(4, moved), "a", WINDOW)
    with pytest.raises(TensorParallelError, match="has no peer mapped .*SAVE's local one"):
        check_communicator(4, 0, _Peers(4, WINDOW, connected=False), "a", WINDOW)
    with pytest.raises(TensorParallelError, match="saved with NCCL collectives, and the communicator given is a _Peers"):
        check_communicator(2, 64, _Peers(2, WINDOW), "a")
    check_communicator(1, 0, _Peers(1, WINDOW, connected=False), "a")  # a one-rank archive holds no all-reduce


def test_a_manifest_whose_peer_window_overlaps_the_allocator_is_refused(tmp_path: Path) -> None:
    from foundry_trace.archive.format import Archive

    manifest, blobs = fixed_contents()
    base = manifest.fingerprint.allocator_base
    inside = manifest.model_copy(update={"tensor_parallel": 2, "collectives": (), "peer_window": WINDOW.model_copy(update={"base": base})})
    with pytest.raises(ArchiveFormatError, match="peer window at .* overlaps the allocator's range"):
        Archive(write_archive(tmp_path / "inside.foundry", inside, blobs))
    both = manifest.model_copy(update={"tensor_parallel": 2, "peer_window": WINDOW, "collectives": COLLECTIVES})
    with pytest.raises(ArchiveFormatError, match="both NCCL collectives and peer all-reduces"):
        Archive(write_archive(tmp_path / "both.foundry", both, blobs))
    fine = manifest.model_copy(update={"tensor_parallel": 2, "collectives": (), "peer_window": WINDOW})
    with Archive(write_archive(tmp_path / "fine.foundry", fine, blobs)) as archive:
        assert archive.manifest.peer_window == WINDOW


def test_collective_nodes_round_trip_and_are_bounded() -> None:
    body = GraphBody(nodes=(EmptyNode(), CollectiveNode(collective=1), EmptyNode()), edges=(Edge(source=0, destination=1), Edge(source=1, destination=2)))
    encoded = encode(body)
    assert decode(encoded.table, encoded.payload, 0, 0, 2) == body
    with pytest.raises(ArchiveFormatError, match="collective 1 of 1"):
        decode(encoded.table, encoded.payload, 0, 0, 1)


@given(st.binary(min_size=128, max_size=128))
def test_an_nccl_unique_id_keeps_every_byte(unique_id: bytes) -> None:
    # A unique id is mostly NULs; a C-string field would cut it at the first one.
    from foundry_trace.parallel.nccl import unique_id_struct

    assert bytes(unique_id_struct(unique_id)) == unique_id


@pytest.mark.parametrize("size", [0, 1, 127, 129])
def test_an_nccl_unique_id_of_the_wrong_size_is_refused(size: int) -> None:
    from foundry_trace.errors import NcclError
    from foundry_trace.parallel.nccl import unique_id_struct

    with pytest.raises(NcclError, match=f"has 128 bytes, got {size}"):
        unique_id_struct(bytes(size))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(archive_contents())
def test_inspect_counts_each_graphs_collectives_and_their_bytes(tmp_path: Path, contents) -> None:  # noqa: ANN001
    manifest, blobs, bodies = contents
    summary = summarize(write_archive(tmp_path / "tp.foundry", manifest, blobs))
    assert summary["tensor_parallel"] == 2 and summary["distinct_collectives"] == len(COLLECTIVES)
    for graph, body in zip(summary["graphs"], bodies, strict=True):
        collectives = [COLLECTIVES[n.collective] for n in walk_nodes(body.nodes) if isinstance(n, CollectiveNode)]
        assert graph["collectives"] == len(collectives)
        assert graph["collective_bytes"] == sum(c.count * {"bfloat16": 2, "float16": 2, "float32": 4}[c.dtype] for c in collectives)
    assert "tensor parallelism 2 (one rank's step)" in render(summary)


@given(
    st.dictionaries(st.sampled_from(["1", "2", "4", "8", "512"]), st.tuples(st.integers(0, 64), st.integers(0, 1 << 30)), min_size=1),
    st.sampled_from([2, 4, 8]),
    st.data(),
)
def test_archives_of_two_degrees_disagree_exactly_where_a_graphs_collectives_differ(per_graph, degree, data) -> None:  # noqa: ANN001
    from foundry_trace.bench.tp_bench import disagreeing_graphs

    assert disagreeing_graphs({1: {"per_graph": per_graph}, degree: {"per_graph": dict(per_graph)}}) == []
    changed = data.draw(st.sampled_from(sorted(per_graph)))
    other = dict(per_graph)
    if data.draw(st.booleans()):
        del other[changed]
    else:
        other[changed] = (per_graph[changed][0] + 1, per_graph[changed][1])
    assert disagreeing_graphs({1: {"per_graph": per_graph}, degree: {"per_graph": other}}) == [changed]


def test_a_call_within_its_time_limit_returns_its_result_or_raises_its_own_error() -> None:
    assert call_with_time_limit("quick", lambda: 42, 5.0) == 42
    assert call_with_time_limit("unlimited", lambda: "same thread", None) == "same thread"
    with pytest.raises(KeyError, match="peer"):
        call_with_time_limit("failing", lambda: {}["peer"], 5.0)


def test_a_call_past_its_time_limit_becomes_a_stall_error_naming_it() -> None:
    import threading

    release = threading.Event()
    try:
        with pytest.raises(StallError, match=r"rank 1 of 2: ncclCommInitRank did not return within 0.2 s"):
            call_with_time_limit("rank 1 of 2: ncclCommInitRank", lambda: release.wait(30), 0.2)
    finally:
        release.set()  # the abandoned call ends


def test_a_rank_whose_peers_never_join_the_rendezvous_is_aborted_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 keeps the rendezvous open until every rank has joined; when they do not within the
    time-out, the error names the rank and the phase, and the communicator it made is aborted
    (its GPU memory freed), not left behind."""
    import torch.distributed as dist

    from foundry_trace.parallel import nccl

    class Store:
        def __init__(self, *_: object, **__: object) -> None:
            self.values: dict[str, object] = {}

        def set(self, key: str, value: object) -> None:
            self.values[key] = value

        def get(self, key: str) -> object:
            return self.values[key]

        def add(self, key: str, amount: int) -> int:
            self.values[key] = self.values.get(key, 0) + amount
            return self.values[key]

    def made(self, rank: int, world_size: int, unique_id: bytes, *, timeout: float | None) -> None:  # noqa: ANN001
        self.rank, self.world_size, self.timeout, self._graphs, self._store = rank, world_size, timeout, set(), None

    aborted: list[int] = []
    monkeypatch.setattr(dist, "TCPStore", Store)
    monkeypatch.setattr(nccl.NcclCommunicator, "__init__", made)
    monkeypatch.setattr(nccl.NcclCommunicator, "abort", lambda self: aborted.append(self.rank))
    monkeypatch.setattr(nccl, "new_unique_id", lambda: b"id")
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StallError, match=r"rank 0 of 2: the rendezvous: only 1 ranks joined"):
        nccl.NcclCommunicator.from_environment(timeout=0.05)
    assert aborted == [0]


_DEVICE = {"device": "GPU", "torch": "t", "cuda": "c", "cupti": None, "mps": False}


_PREFETCHED = {"at_restore_point_s": 0.05, "engine_s": 1.0, "ready_before_restore_point": 1}  # what a prefetching rank adds


def _bench_of_two_ranks(monkeypatch: pytest.MonkeyPatch, inspected: dict[str, object], ranks: Callable[..., list[dict[str, object]]]) -> None:
    """The TP bench with degree 2 SAVEd and inspected as `inspected`, its ranks answered by `ranks`."""
    from foundry_trace.bench import tp_bench

    monkeypatch.setattr(tp_bench, "save_all", lambda *a, **k: {2: {"archive_bytes": 1, "save_s": 1.0, "collectives": 0, "description": "x"}})
    monkeypatch.setattr(tp_bench, "inspect_archives", lambda directory, degrees: {d: inspected for d in degrees})
    monkeypatch.setattr(tp_bench, "run_degree", ranks)
    monkeypatch.setattr(tp_bench, "free_memory", lambda: (80 << 30, _DEVICE))


def test_a_degree_whose_ranks_fail_is_recorded_and_the_others_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """8 ranks that ran out of GPU memory on one H200 used to end the bench before it wrote
    anything: the degrees that ran were lost with them."""
    from foundry_trace.bench import tp_bench
    from foundry_trace.errors import ChildProcessFailed
    from foundry_trace.restore import DEFAULT_THREADS

    inspected = {"archive_degree": 2, "graphs": 1, "nodes": 10, "collective_nodes": 2, "collectives_per_graph": [2], "per_graph": {"1": (2, 0)}}
    rank = {"native_s": 2.0, "driver_build_s": 0.05, "driver_instantiate_s": 0.15, "driver_cold_s": 0.2, "restore_s": 0.2,
            "latency": {"1": {"delta_pct": 0.1}}, "digests": {"1": "d"}, **_PREFETCHED,
            "bitwise_equal": True, "mismatched": [], "nondeterministic_native": [], "archive_digest": "a", "builders": 4, "chunk_nodes": 4096, "phases": {}, "busy": {}, "timeline": {}, "spans": [], "graphs": 1,
            "device": "GPU", "torch": "t", "cuda": "c", "cupti": None, "mps": False}
    share = 1024 // 2  # the tiny workload's vocabulary, in two ranks' shards

    roles: list[tuple[str, str, bool]] = []
    restores = iter([0.22, 0.20, 0.30, 9.0])  # the comparing restore last: not in the ratio
    drivers = iter([0.20, 0.20, 0.20])

    def ranks(role: list[str], degree: int, kind: str, collectives: bool = True) -> list[dict[str, object]]:
        figures = {}
        if role[0] in ("driver", "load"):
            parsed = tp_bench._parser().parse_args(role)
            assert parsed.rest == ["tiny", str(tmp_path), "peer"] and parsed.threads == min(DEFAULT_THREADS, 16 // degree), role
            roles.append((role[0], parsed.compare, collectives))
            if degree == 2:
                figures = {"restore_s": next(restores)} if role[0] == "load" else {"driver_cold_s": next(drivers)}
        if degree == 8:
            raise ChildProcessFailed("load rank 1 of 8 failed (exit 1) in phase 'compare': torch.OutOfMemoryError\nmore lines")
        return [{**rank, **figures, "rank": r, "logit_rows": [r * share, (r + 1) * share]} for r in range(degree)]

    monkeypatch.setattr(tp_bench, "save_all", lambda *a, **k: {d: {"archive_bytes": 1, "save_s": 1.0, "collectives": 0, "description": "x"} for d in (2, 8)})
    monkeypatch.setattr(tp_bench, "inspect_archives", lambda directory, degrees: {d: inspected for d in degrees})
    monkeypatch.setattr(tp_bench, "run_degree", ranks)
    monkeypatch.setattr(tp_bench, "free_memory", lambda: (80 << 30, _DEVICE))
    monkeypatch.setattr(tp_bench.os, "cpu_count", lambda: 16)
    results = tp_bench._run_degrees("tiny", [2, 8], tmp_path, tmp_path, "peer")
    two, eight = results["cases"]
    assert roles[:7] == [("driver", "all", False), ("load", "none", False)] * 3 + [("load", "all", True)], (
        "three cold pairs, alternating, timed alone and without collectives; then fresh ranks compare (every batch size unless asked otherwise)"
    )
    assert two["cold_pairs"] == 3 and two["restore_s_by_rank"] == [0.22, 0.22] and two["restore_over_driver_cold"] == pytest.approx([1.1, 1.1])
    assert two["compared_restore_s_by_rank"] == [9.0, 9.0] and (two["timed_mps"], two["collectives_mps"]) == (False, False)
    assert "timed" not in tp_bench.render(results)
    two.update(timed_mps=True)
    assert "timed" in tp_bench.render(results), "the table says the timed ranks ran under MPS"
    assert two["restore_over_driver_cold_max"] == pytest.approx([1.5, 1.5]) and two["cold_runs_by_rank"][0]["restore_s"] == [0.22, 0.20, 0.30]
    assert two["driver_build_s_by_rank"] == [0.05, 0.05] and two["driver_instantiate_s_by_rank"] == [0.15, 0.15]
    assert two["threads"] == min(DEFAULT_THREADS, 8) and eight["threads"] == min(DEFAULT_THREADS, 2), "16 cores shared among the ranks"
    assert two["logits"] == "vocabulary-parallel" and two["logit_shards_cover_vocabulary"]
    assert eight["failed"].startswith("load rank 1 of 8 failed") and "more lines" not in eight["failed"]
    assert [p.name for p in tmp_path.glob("tp-*.json")], "the results file is written all the same"
    assert "failed:" in tp_bench.render(results)


@pytest.mark.parametrize(("gpus", "degree", "collectives", "outside"), [(0, 4, True, True), (0, 4, False, False), (4, 4, True, False), (2, 8, True, True), (1, 1, True, False)])
def test_ranks_sharing_a_gpu_run_collectives_outside_mps_only(
    monkeypatch: pytest.MonkeyPatch, gpus: int, degree: int, collectives: bool, outside: bool
) -> None:
    """4 ranks under MPS stalled in a two-shot all-reduce on one H100, with no SM cap (1fe430f)
    and with a quarter of the SMs each (c55aae8): ranks that share a GPU and run collectives get
    an empty MPS pipe directory (no daemon: a context of their own, time-sliced); ranks that run
    none, or that have a GPU each, keep the environment's."""
    import os

    import torch

    from foundry_trace.bench import tp_bench

    monkeypatch.setenv(tp_bench.MPS_PIPE_VARIABLE, "/run/the-daemons-pipe")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    seen: list[list[dict[str, str]]] = []

    def ranks(module: str, arguments: list[str], environments: list[dict[str, str]], timeout: float) -> list[dict[str, object]]:
        seen.append(environments)
        for environment in environments:
            pipe = environment[tp_bench.MPS_PIPE_VARIABLE]
            if pipe != "/run/the-daemons-pipe":
                assert os.path.isdir(pipe) and not os.listdir(pipe), "an empty directory: no daemon listens there"
        return []

    monkeypatch.setattr(tp_bench, "_run_ranks", ranks)
    tp_bench.run_peer_ranks("m", ["native"], degree, collectives=collectives)
    [environments] = seen
    pipes = {e[tp_bench.MPS_PIPE_VARIABLE] for e in environments}
    assert len(environments) == degree and len(pipes) == 1, "every rank of a run alike"
    assert (pipes != {"/run/the-daemons-pipe"}) == outside
    assert [e["RANK"] for e in environments] == [str(r) for r in range(degree)]


def test_a_degree_whose_save_fails_is_recorded_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every degree is SAVEd before any runs: one SAVE that failed used to end the bench before
    any degree ran."""
    from foundry_trace.bench import tp_bench
    from foundry_trace.errors import ChildProcessFailed

    def save(module: str, arguments: list[str], environment: object, timeout: float) -> dict[str, object]:
        if arguments[2] == "8":
            raise ChildProcessFailed("tp_bench save failed (exit 1) in phase 'save': PeerError\nmore lines")
        return {"archive_bytes": 1, "save_s": 1.0, "collectives": 0, "description": "x"}

    inspected = {"archive_degree": 2, "graphs": 1, "nodes": 10, "collective_nodes": 2, "collectives_per_graph": [2], "per_graph": {"1": (2, 0)}}
    rank = {"native_s": 2.0, "driver_cold_s": 0.2, "restore_s": 0.2, "latency": {"1": {"delta_pct": 0.1}}, "digests": {"1": "d"}, **_PREFETCHED,
            "bitwise_equal": True, "mismatched": [], "nondeterministic_native": [], "archive_digest": "a", "builders": 4, "chunk_nodes": 4096, "phases": {}, "busy": {}, "timeline": {}, "spans": [], "graphs": 1,
            "device": "GPU", "torch": "t", "cuda": "c", "cupti": None, "mps": False}
    run: list[int] = []

    def ranks(role: list[str], degree: int, kind: str, collectives: bool = True) -> list[dict[str, object]]:
        run.append(degree)
        return [{**rank, "rank": r, "logit_rows": [r * 512, (r + 1) * 512]} for r in range(degree)]

    monkeypatch.setattr(tp_bench, "run_child", save)
    monkeypatch.setattr(tp_bench, "inspect_archives", lambda directory, degrees: {d: inspected for d in degrees})
    monkeypatch.setattr(tp_bench, "run_degree", ranks)
    monkeypatch.setattr(tp_bench, "free_memory", lambda: (80 << 30, _DEVICE))
    results = tp_bench._run_degrees("tiny", [8, 2], tmp_path, tmp_path, "peer")
    eight, two = results["cases"]
    assert eight["failed"] == "SAVE: tp_bench save failed (exit 1) in phase 'save': PeerError" and eight["degree"] == 8
    assert set(run) == {2} and two["ranks_bitwise_equal"] == [True, True]
    assert "failed: SAVE" in tp_bench.render(results)


def test_the_results_file_is_written_after_each_degree_so_a_run_cut_short_keeps_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The device call's time-out ends the bench wherever it is: the degrees it finished are on disk."""
    import json

    from foundry_trace.bench import tp_bench

    inspected = {"archive_degree": 2, "graphs": 1, "nodes": 10, "collective_nodes": 2, "collectives_per_graph": [2], "per_graph": {"1": (2, 0)}}
    rank = {"native_s": 2.0, "driver_cold_s": 0.2, "restore_s": 0.2, "latency": {"1": {"delta_pct": 0.1}}, "digests": {"1": "d"}, **_PREFETCHED,
            "bitwise_equal": True, "mismatched": [], "nondeterministic_native": [], "archive_digest": "a", "builders": 4, "chunk_nodes": 4096, "phases": {}, "busy": {}, "timeline": {}, "spans": [], "graphs": 1}

    def ranks(role: list[str], degree: int, kind: str, collectives: bool = True) -> list[dict[str, object]]:
        if degree == 8:
            raise KeyboardInterrupt  # what the step's time-out leaves of the bench
        return [{**rank, "rank": r, "logit_rows": [r * 512, (r + 1) * 512]} for r in range(degree)]

    monkeypatch.setattr(tp_bench, "save_all", lambda *a, **k: {d: {"archive_bytes": 1, "save_s": 1.0, "collectives": 0, "description": "x"} for d in (2, 8)})
    monkeypatch.setattr(tp_bench, "inspect_archives", lambda directory, degrees: {d: inspected for d in degrees})
    monkeypatch.setattr(tp_bench, "run_degree", ranks)
    monkeypatch.setattr(tp_bench, "free_memory", lambda: (80 << 30, _DEVICE))
    with pytest.raises(KeyboardInterrupt):
        tp_bench._run_degrees("tiny", [2, 8], tmp_path, tmp_path, "peer")
    [written] = tmp_path.glob("tp-*.json")
    results = json.loads(written.read_text())
    assert [c["name"] for c in results["cases"]] == ["tp2-peer"] and results["device"] == "GPU"


def test_the_slowest_ranks_of_each_pair_are_compared_and_builders_reach_the_load_ranks_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An eager peer LOAD ends when every rank has finished, so every rank's restore lasts as long
    as the slowest's, while each driver-alone rank ends on its own: 4 ranks on one H100 restored
    in 1.088 s each where their drivers alone took 0.80-0.82 s."""
    from foundry_trace.bench import tp_bench

    inspected = {"archive_degree": 2, "graphs": 1, "nodes": 10, "collective_nodes": 2, "collectives_per_graph": [2], "per_graph": {"1": (2, 0)}}
    rank = {"native_s": 2.0, "latency": {"1": {"delta_pct": 0.1}}, "digests": {"1": "d"}, **_PREFETCHED,
            "bitwise_equal": True, "mismatched": [], "nondeterministic_native": [], "archive_digest": "a", "builders": 4, "chunk_nodes": 4096, "phases": {}, "busy": {}, "timeline": {}, "spans": [], "graphs": 1}
    pairs = iter([(0.30, [0.20, 0.25]), (0.40, [0.20, 0.20]), (0.33, [0.30, 0.22])])  # each rank's restore ends with the slowest
    roles: list[list[str]] = []
    restore = [0.2]  # the restore of the pair whose driver-alone ranks ran last (the comparing ranks': the last pair's too)

    def ranks(role: list[str], degree: int, kind: str, collectives: bool = True) -> list[dict[str, object]]:
        roles.append(role)
        if role[0] == "driver":
            restore[0], drivers = next(pairs)
            return [{**rank, "rank": r, "driver_cold_s": drivers[r]} for r in range(degree)]
        cap = int(role[role.index("--builders") + 1]) if "--builders" in role else 4  # the prefetching ranks': LOAD's own
        return [{**rank, "rank": r, "restore_s": restore[0], "builders": cap, "logit_rows": [r * 512, (r + 1) * 512]} for r in range(degree)]

    _bench_of_two_ranks(monkeypatch, inspected, ranks)
    [two] = tp_bench._run_degrees("tiny", [2], tmp_path, None, "peer", builders=[tp_bench.Schedule(2)])["cases"]
    assert [r[-1] for r in roles if r[0] == "load"] == ["none"] * 3 + ["all"]
    assert all(("--builders" in r) == (r[0] == "load") and (r[0] != "load" or r[r.index("--builders") + 1] == "2") for r in roles[1:])
    assert two["builders"] == 2
    assert two["slowest_ranks_cold"]["driver_cold_s"] == [0.25, 0.20, 0.30]
    assert two["restore_over_slowest_driver_cold"] == pytest.approx(statistics.median([0.30 / 0.25, 0.40 / 0.20, 0.33 / 0.30]))
    assert two["restore_over_driver_cold"][0] == pytest.approx(statistics.median([0.30 / 0.20, 0.40 / 0.20, 0.33 / 0.30]))
    assert tp_bench._worst_ratio(two).endswith("; slowest ranks 1.20")
    assert "builders_sweep" not in two


def test_a_builders_sweep_restores_every_cap_in_every_pair_and_the_first_compares(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each pair restores once per cap against the same drivers alone; the case's own figures are
    the first cap's, which the comparing ranks use after the pairs."""
    from foundry_trace.bench import tp_bench

    inspected = {"archive_degree": 2, "graphs": 1, "nodes": 10, "collective_nodes": 2, "collectives_per_graph": [2], "per_graph": {"1": (2, 0)}}
    rank = {"native_s": 2.0, "latency": {"1": {"delta_pct": 0.1}}, "digests": {"1": "d"}, **_PREFETCHED,
            "bitwise_equal": True, "mismatched": [], "nondeterministic_native": [], "archive_digest": "a", "builders": 4, "chunk_nodes": 4096, "phases": {}, "busy": {}, "timeline": {}, "spans": [], "graphs": 1}
    restore_by_cap = {"4": 0.5, "1": 0.3}
    roles: list[list[str]] = []

    def ranks(role: list[str], degree: int, kind: str, collectives: bool = True) -> list[dict[str, object]]:
        roles.append(role)
        if role[0] != "load":
            return [{**rank, "rank": r, "driver_cold_s": 0.25} for r in range(degree)]
        cap = role[role.index("--builders") + 1]
        return [{**rank, "rank": r, "restore_s": restore_by_cap[cap], "builders": int(cap), "logit_rows": [r * 512, (r + 1) * 512]} for r in range(degree)]

    _bench_of_two_ranks(monkeypatch, inspected, ranks)
    results = tp_bench._run_degrees("tiny", [2], tmp_path, None, "peer", repeats=2, builders=tp_bench.load_schedules("1,4"))
    [case] = results["cases"]
    loads = [(r[r.index("--builders") + 1], r[-1]) for r in roles if r[0] == "load"]
    assert loads == [("4", "none"), ("1", "none")] * 2 + [("1", "all")]
    assert case["builders"] == 1 and case["restore_over_driver_cold"] == [pytest.approx(1.2)] * 2
    assert case["builders_sweep"]["4"]["restore_over_slowest_driver_cold"] == pytest.approx(2.0)
    assert case["builders_sweep"]["1"]["restore_s_by_rank"] == [0.3, 0.3]
    assert results["workload"].endswith("-builders-1-4")


def test_prefetching_ranks_run_after_the_pairs_and_their_failure_keeps_the_case(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each degree's ranks run once more with prefetch() at process start, after the comparing
    restore: their time from the restore point, and their outputs against the LOAD ranks'. A
    prefetching rank that fails is recorded in prefetch_cold; the pairs' figures stand."""
    from foundry_trace.bench import tp_bench
    from foundry_trace.errors import ChildProcessFailed

    inspected = {"archive_degree": 2, "graphs": 1, "nodes": 10, "collective_nodes": 2, "collectives_per_graph": [2], "per_graph": {"1": (2, 0)}}
    rank = {"native_s": 2.0, "latency": {"1": {"delta_pct": 0.1}}, "restore_s": 0.3, "driver_cold_s": 0.25,
            "bitwise_equal": True, "mismatched": [], "nondeterministic_native": [], "archive_digest": "a", "builders": 4, "chunk_nodes": 4096, "phases": {}, "busy": {}, "timeline": {}, "spans": [], "graphs": 1}
    roles: list[str] = []
    fails = [False]

    def ranks(role: list[str], degree: int, kind: str, collectives: bool = True) -> list[dict[str, object]]:
        roles.append(role[0])
        if role[0] == "prefetch":
            if fails[0]:
                raise ChildProcessFailed("prefetch rank 1 of 2 failed (exit 1) in phase 'load': RestoreError\nmore lines")
            return [{"rank": r, "at_restore_point_s": [0.02, 0.04][r], "engine_s": 3.0, "ready_before_restore_point": [1, 0][r],
                     "digests": {"1": "d" if r == 0 else "other"}} for r in range(degree)]
        return [{**rank, "rank": r, "digests": {"1": "d"}, "logit_rows": [r * 512, (r + 1) * 512]} for r in range(degree)]

    _bench_of_two_ranks(monkeypatch, inspected, ranks)
    results = tp_bench._run_degrees("tiny", [2], tmp_path, None, "peer", repeats=1)
    [case] = results["cases"]
    assert roles == ["native", "driver", "load", "load", "prefetch"]
    assert case["prefetch_cold"] == {
        "at_restore_point_s": 0.04, "at_restore_point_s_by_rank": [0.02, 0.04], "engine_s_by_rank": [3.0, 3.0],
        "ready_before_restore_point_by_rank": [1, 0], "bitwise_equal_to_load_by_rank": [True, False],
    }
    assert "every graph ready 0.040 s after the restore point" in tp_bench.render(results)
    fails[0] = True
    [case] = tp_bench._run_degrees("tiny", [2], tmp_path, None, "peer", repeats=1)["cases"]
    assert case["prefetch_cold"] == {"failed": "prefetch rank 1 of 2 failed (exit 1) in phase 'load': RestoreError"}
    assert case["restore_over_driver_cold"] == [pytest.approx(1.2)] * 2


def test_prefetched_outputs_count_as_equal_only_where_the_same_batches_were_compared() -> None:
    from foundry_trace.bench.tp_bench import _same_outputs

    assert _same_outputs({"1": "a", "64": "b"}, {"1": "a", "64": "b", "8": "c"})
    assert not _same_outputs({"1": "a", "64": "b"}, {"1": "a", "64": "x"})
    assert not _same_outputs({"1": "a", "64": "b"}, {"1": "a"}), "a batch the LOAD ranks did not compare is not equal"
    assert not _same_outputs({}, {}) and not _same_outputs({"1": "a"}, {}), "nothing compared is not equal"


@pytest.mark.parametrize("given", ["0", "2,0", "x", "", "2,,1", "1:", "1:-1", "0:4096", "default:4096", "1:2:3", "1:4096:x", "default:4096"])
def test_builders_must_be_schedules(given: str) -> None:
    from foundry_trace.bench import tp_bench

    with pytest.raises(WorkloadError, match=f"builders={given}: let each rank build"):
        tp_bench.load_schedules(given)


@given(items=st.lists(st.one_of(st.just("default"), st.integers(1, 64).map(str), st.tuples(st.integers(1, 64), st.integers(0, 1 << 24)).map(
    lambda spec: f"{spec[0]}:{spec[1]}")), min_size=1, max_size=6))
def test_each_schedule_reads_back_as_written_and_passes_its_own_flags(items: list[str]) -> None:
    """A schedule's label is the item it came from (the sweep's keys), once each in order, and its
    LOAD rank gets exactly the caps it names (LOAD's default for the others)."""
    from foundry_trace.bench import tp_bench

    schedules = tp_bench.load_schedules(",".join(items))
    assert [s.label for s in schedules] == list(dict.fromkeys(items))
    for schedule in schedules:
        flags = schedule.flags()
        assert ("--builders" in flags) == (schedule.builders is not None)
        assert ("--chunk-nodes" in flags) == (schedule.chunk_nodes is not None)
        if schedule.builders is not None:
            assert flags[flags.index("--builders") + 1] == str(schedule.builders)


def test_a_sweep_of_schedules_passes_chunks_and_leaves_the_default_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`default,1:1000000`: the case's ranks restore with LOAD's defaults (no flag) and compare; the
    other schedule's ranks build one graph at a time in chunks of a million nodes."""
    from foundry_trace.bench import tp_bench

    inspected = {"archive_degree": 2, "graphs": 1, "nodes": 10, "collective_nodes": 2, "collectives_per_graph": [2], "per_graph": {"1": (2, 0)}}
    rank = {"native_s": 2.0, "latency": {"1": {"delta_pct": 0.1}}, "digests": {"1": "d"}, **_PREFETCHED,
            "bitwise_equal": True, "mismatched": [], "nondeterministic_native": [], "archive_digest": "a", "builders": 4, "chunk_nodes": 4096, "phases": {}, "busy": {}, "timeline": {}, "spans": [], "graphs": 1}
    roles: list[list[str]] = []

    def ranks(role: list[str], degree: int, kind: str, collectives: bool = True) -> list[dict[str, object]]:
        roles.append(role)
        if role[0] != "load":
            return [{**rank, "rank": r, "driver_cold_s": 0.25} for r in range(degree)]
        chunked = "--chunk-nodes" in role
        return [{**rank, "rank": r, "restore_s": 0.25 if chunked else 0.3, "logit_rows": [r * 512, (r + 1) * 512]} for r in range(degree)]

    _bench_of_two_ranks(monkeypatch, inspected, ranks)
    results = tp_bench._run_degrees("tiny", [2], tmp_path, None, "peer", repeats=1, builders=tp_bench.load_schedules("default,1:1000000"))
    [case] = results["cases"]
    loads = [role for role in roles if role[0] == "load"]
    assert loads[0][-6:] == ["--builders", "1", "--chunk-nodes", "1000000", "--compare", "none"]
    assert all("--builders" not in role and "--chunk-nodes" not in role for role in loads[1:])
    assert case["builders_sweep"]["1:1000000"]["restore_over_driver_cold"] == [pytest.approx(1.0)] * 2
    assert case["builders_sweep"]["default"]["restore_over_driver_cold"] == [pytest.approx(1.2)] * 2
    assert case["restore_over_driver_cold"] == [pytest.approx(1.2)] * 2
    assert results["workload"].endswith("-builders-default-1x1000000")
    assert "tp2-peer restore / driver alone by schedule (--builders; worst rank's median): default 1.20 (slowest ranks 1.20); 1:1000000 1.00" in (
        tp_bench.render(results)
    )


def test_ranks_start_a_timed_phase_together_through_the_host_agreement_only() -> None:
    from types import SimpleNamespace

    from foundry_trace.bench.driver_alone import start_together

    agreed: list[tuple[str, bytes]] = []
    start_together(SimpleNamespace(agree=lambda phase, payload: agreed.append((phase, payload))), "load")
    assert agreed == [("the start of load", b"")], "an empty payload: nothing but the arrival is exchanged"
    start_together(SimpleNamespace(rank=0, world_size=2), "load")  # NCCL's: no host agreement, no GPU memory touched


def test_the_timeline_says_when_modules_ended_and_builds_started() -> None:
    from foundry_trace import Span
    from foundry_trace.bench.driver_alone import timeline

    spans = [Span("module 1", "module", "modules", 0.01, 0.03), Span("module 2", "module", "modules", 0.03, 0.05),
             Span("graph 1", "build", "native", 0.04, 0.06), Span("graph 2", "build", "native", 0.07, 0.09),
             Span("graph 1", "instantiate", "native", 0.06, 0.08)]
    assert timeline(spans) == {"modules_done_s": 0.05, "first_build_s": 0.04, "last_build_s": 0.07}
    assert timeline([]) == {"modules_done_s": None, "first_build_s": None, "last_build_s": None}


def test_ranks_share_the_machines_cores_for_their_restore_threads() -> None:
    from foundry_trace.bench import tp_bench
    from foundry_trace.restore import DEFAULT_THREADS

    assert tp_bench.rank_threads(1, cpus=64) == DEFAULT_THREADS
    assert [tp_bench.rank_threads(ranks, cpus=16) for ranks in (2, 4, 8)] == [min(8, DEFAULT_THREADS), min(4, DEFAULT_THREADS), 2]
    assert tp_bench.rank_threads(8, cpus=2) == 1, "at least one"
    with pytest.raises(ValueError, match="at least one thread"):
        tp_bench.run("tiny", None, degrees="2", communicator="peer", threads=0)
    with pytest.raises(ValueError, match="compare 'some': choose one of all, latency"):
        tp_bench.run("tiny", None, degrees="2", communicator="peer", compare="some")

"""vLLM's piecewise capture shape (bench/workloads/piecewise.py), on the CPU: the pieces, run in
order with attention between them, compute the whole step bit for bit; keys name the batch and
the piece, and sort in serving order over batch sizes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from foundry_trace.archive.keys import batch_of, first_step, general_key_order, group_of, key_order
from foundry_trace.bench.workloads.decode import DecodeEngine, shape_of
from foundry_trace.bench.workloads.piecewise import PiecewiseEngine


@pytest.mark.parametrize("split_every", [1, 2, 3, 4])
def test_the_pieces_in_order_compute_the_whole_step(split_every: int) -> None:
    engine = PiecewiseEngine(preset="tiny", layers=4, split_every=split_every, device="cpu")
    whole = DecodeEngine(shape_of("tiny", 4), attention="math", device="cpu")
    assert engine.pieces == len(range(0, 4, split_every)) + 1
    for batch in (1, 4):
        engine.prepare(batch, seed=batch)
        whole.prepare(batch, seed=batch)
        output = None
        for piece in range(engine.pieces):
            output = engine.run_piece(batch, piece)
            if piece < engine.pieces - 1:
                assert output is None
                engine.attend_between(batch, piece)
        assert torch.equal(output, whole.step(batch)), "the cut must not change a single kernel's inputs"
        assert torch.equal(engine.kv_cache, whole.kv_cache)


def test_keys_name_batch_and_piece_and_sort_by_batch_size_first() -> None:
    engine = PiecewiseEngine(preset="tiny", layers=12, device="cpu")
    keys = [engine.key(batch, piece) for batch in (8, 1, 64) for piece in range(engine.pieces)]
    assert engine.key(8, 3) == "8/03" and group_of("8/03") == "8" and batch_of("8/03") == 8
    ordered = sorted(keys, key=key_order)
    assert ordered[: engine.pieces] == [engine.key(1, p) for p in range(engine.pieces)]
    assert [batch_of(k) for k in ordered] == sorted(batch_of(k) for k in keys)
    assert sorted(["8/10", "8/9", "8/100"], key=key_order) == ["8/9", "8/10", "8/100"]


@given(st.lists(st.sampled_from(["1/00", "1/01", "2/00", "8", "64", "prefill"]), unique=True))
def test_the_first_step_is_every_piece_of_the_first_group_in_serving_order(keys: list[str]) -> None:
    entries = [SimpleNamespace(key=key) for key in keys]
    first = [entry.key for entry in first_step(entries)]
    ordered = sorted(keys, key=key_order)
    assert first == [key for key in ordered if group_of(key) == group_of(ordered[0])] if keys else first == []


@given(
    st.one_of(
        st.from_regex(r"\A[0-9]{1,20}(/[0-9]{0,6})?\Z"),
        st.from_regex(r"\A[0-9a-z#/]{0,12}\Z"),
        st.text(st.characters(codec="utf-8"), max_size=12),
    )
)
def test_the_short_path_of_key_order_orders_as_the_general_one(key: str) -> None:
    assert key_order(key) == general_key_order(key)


@pytest.mark.parametrize("pieces", [1, 2, 33])
def test_waiting_on_every_piece_queues_the_step_once_in_order(pieces: int) -> None:
    """An eager load waits on each graph in turn: the first wait queues the step's pieces in
    order, as one chunk, and the rest only wait (2N graph calls into the pipeline, not N squared
    as measured on the H200 before: 72,963 calls for 2,211 graphs)."""
    from types import SimpleNamespace

    from foundry_trace.restore._pipeline import Step

    asked: list[str] = []
    queued: list[list[str]] = []
    pipeline = SimpleNamespace(graph=lambda entry: asked.append(entry.key) or entry.key, queue=lambda entries: queued.append([e.key for e in entries]))
    step = [SimpleNamespace(key=f"8/{piece}") for piece in range(pieces)]
    request = Step(pipeline, step)
    for piece in reversed(range(pieces)):  # whichever piece is asked for first, the step starts at piece 0
        assert request.request(step[piece]) == f"8/{piece}"
    assert queued == [[entry.key for entry in step]]
    assert asked[:pieces] == [entry.key for entry in step]
    assert len(asked) == 2 * pieces


@given(
    fixed=st.floats(0.0, 2.0),
    per_graph=st.floats(0.0, 1e-3),
    per_node=st.floats(0.0, 1e-5),
    graphs=st.lists(st.integers(1, 5000), min_size=3, max_size=6, unique=True),
)
def test_the_cost_fit_recovers_the_costs_it_was_given(fixed: float, per_graph: float, per_node: float, graphs: list[int]) -> None:
    """The piecewise bench's fit (seconds = fixed + graphs x per_graph + nodes x per_node) gives
    back the costs of exact points, whatever their scale: each fitted cost off by no more than
    moves a prediction by a millionth of the largest time (points that nearly fall on one curve,
    as graphs 218 and 219 beside 149 do, determine a cost to a few digits fewer than a double
    holds)."""
    from foundry_trace.bench.fit_bench import least_squares

    rows = [(1.0, float(g), float(g * 40 + g * g)) for g in graphs]  # nodes not in proportion to graphs
    values = [fixed + g * per_graph + n * per_node for _, g, n in rows]
    largest = max(values)
    for fitted, true, column in zip(least_squares(rows, values), (fixed, per_graph, per_node), zip(*rows, strict=True), strict=True):
        assert abs(fitted - true) * max(column) <= 1e-6 * largest + 1e-15, (fitted, true)  # 1e-15 s: below any clock


def test_a_fit_the_points_do_not_determine_is_refused() -> None:
    from foundry_trace.bench.fit_bench import least_squares

    with pytest.raises(ValueError, match="do not determine"):
        least_squares([(1.0, 2.0, 80.0), (1.0, 4.0, 160.0), (1.0, 8.0, 320.0)], [1.0, 2.0, 3.0])  # nodes = 40 x graphs


SIZES = tuple(range(1, 68))
PIECES_PER_STEP = {1: 33, 2: 17, 32: 2}
NODES_PER_LAYER = {1: 40, 2: 46, 32: 51}  # attention captured inside bigger pieces: more nodes


def _point(split_every: int, batch_sizes: list[int]) -> dict[str, object]:
    """What a cold restore and the driver alone would measure of these graphs, at given costs."""
    graphs, nodes = len(batch_sizes) * PIECES_PER_STEP[split_every], len(batch_sizes) * 32 * NODES_PER_LAYER[split_every]
    return {"graphs": graphs, "nodes": nodes, "restore_s": 0.3 + graphs * 90e-6 + nodes * 6e-6,
            "driver_cold_s": 0.1 + graphs * 60e-6 + nodes * 5e-6, "batch_sizes": list(batch_sizes)}


def _fake_fit_children(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clock: list[float] | None = None) -> list[tuple]:
    """The fit's children and subsets, faked: archives are files naming their split and batch
    sizes; each child advances `clock` by 10 s. Returns what was asked, in order."""
    import json

    from foundry_trace.bench import fit_bench

    asked: list[tuple] = []

    def tick() -> None:
        if clock is not None:
            clock[0] += 10.0

    def role(name: str, workload: str, path: Path, references: bool = True, timeout: float = 0.0, **options: object) -> dict[str, object]:
        asked.append(("save", options["split_every"], references))
        tick()
        path.write_text(json.dumps({"split_every": options["split_every"], "batch_sizes": list(SIZES)}))
        return {}

    def subset(source: Path, destination: Path, keep: object, what: str) -> dict[str, int]:
        held = json.loads(source.read_text())
        kept = [b for b in held["batch_sizes"] if keep(f"{b}/00")]
        asked.append(("subset", held["split_every"], len(kept)))
        destination.write_text(json.dumps({**held, "batch_sizes": kept}))
        return {}

    def child(module: str, arguments: list[str], timeout: float = 0.0) -> dict[str, object]:
        held = json.loads(Path(arguments[2]).read_text())
        asked.append((arguments[0], held["split_every"], len(held["batch_sizes"]), arguments[arguments.index("--split-every") + 1]))
        tick()
        return _point(held["split_every"], held["batch_sizes"])

    monkeypatch.setattr(fit_bench, "run_role", role)
    monkeypatch.setattr(fit_bench, "write_subset", subset)
    monkeypatch.setattr(fit_bench, "run_child", child)
    monkeypatch.setattr(fit_bench, "archive_batches", lambda path: json.loads(Path(path).read_text())["batch_sizes"])
    return asked


def test_the_fit_saves_each_piece_count_once_and_copies_the_batch_subsets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The design's runs (piece counts x batch-size subsets) give graph and node counts that are
    not nearly proportional, so each term is determined; the load bench's own restore and archive
    are the first point, the every-4th points are subsets copied from the archive of their piece
    count (no SAVE), and only the other piece counts are SAVEd, without references."""
    import json

    from foundry_trace.bench import fit_bench

    asked = _fake_fit_children(monkeypatch, tmp_path)
    main = tmp_path / "main.foundry"
    main.write_text(json.dumps({"split_every": 1, "batch_sizes": list(SIZES)}))
    result = fit_bench.fit_costs("piecewise", 8, first={**_point(1, list(SIZES)), "archive": str(main)})
    saves = [a for a in asked if a[0] == "save"]
    assert saves == [("save", 32, False), ("save", 2, False)]
    assert [a for a in asked if a[0] == "subset"] == [("subset", 1, 17), ("subset", 32, 17)]
    for _, split, _, engine_split in (a for a in asked if a[0] in ("cold", "driver")):
        assert engine_split == str(split)  # every child builds the engine of the SAVEd archive's options
    assert [(r["split_every"], r["every_nth_batch"]) for r in result["runs"]] == list(fit_bench.DESIGN)
    assert [r["graphs"] for r in result["runs"]] == [2211, 561, 134, 34, 1139]
    assert result["runs"][0]["archive"] == fit_bench.FIRST and "copied" in result["runs"][1]["archive"]
    assert result["restore"]["per_graph_us"] == pytest.approx(90.0, rel=1e-6)
    assert result["driver_alone"]["per_node_us"] == pytest.approx(5.0, rel=1e-6)
    assert result["foundry_per_graph_over_driver"] == pytest.approx(1.5, rel=1e-6)
    assert max(map(abs, result["restore"]["residuals_ms"])) < 1e-6
    assert result["skipped_for_time"] == []


def test_a_fit_short_of_time_measures_the_most_telling_points_and_names_the_rest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With 70 s left (each child 10 s here), the subset of the main archive (two children), the
    SAVE of 32-layer pieces and its subset (five) fit; the last point's SAVE does not, and is
    named. Four points of a 2 x 2 design still determine the fit."""
    import json

    from foundry_trace.bench import budget as budget_module
    from foundry_trace.bench import fit_bench

    clock = [0.0]
    asked = _fake_fit_children(monkeypatch, tmp_path, clock)
    main = tmp_path / "main.foundry"
    main.write_text(json.dumps({"split_every": 1, "batch_sizes": list(SIZES)}))
    budget = budget_module.Budget(70.0 + budget_module.RESERVE_S, clock=lambda: clock[0])
    result = fit_bench.fit_costs("piecewise", 8, first={**_point(1, list(SIZES)), "archive": str(main)}, budget=budget,
                                 expected={"save": 10.0, "cold": 10.0, "driver": 10.0})
    assert [(r["split_every"], r["every_nth_batch"]) for r in result["runs"]] == list(fit_bench.DESIGN[:4])
    assert ("save", 2, False) not in asked
    assert [s["phase"] for s in result["skipped_for_time"]] == ["fit split_every=2, every 1. batch size"]
    assert result["restore"]["per_graph_us"] == pytest.approx(90.0, rel=1e-6)


def test_a_fit_of_too_few_points_reports_no_terms_rather_than_failing() -> None:
    from foundry_trace.bench.fit_bench import fitted

    assert fitted([_point(1, list(SIZES)), _point(32, list(SIZES))]) == {"restore": None, "driver_alone": None, "foundry_per_graph_over_driver": None}
    assert fitted([_point(1, list(SIZES)), _point(1, list(SIZES[::4])), _point(1, list(SIZES[::2]))])["restore"] is None  # nodes = graphs x 38.8


def test_the_fit_refuses_a_workload_that_does_not_cut_its_steps() -> None:
    from foundry_trace.bench.fit_bench import fit_costs
    from foundry_trace.errors import WorkloadError

    with pytest.raises(WorkloadError, match="piecewise"):
        fit_costs("small", 8)

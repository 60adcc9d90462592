"""The end-to-end example (examples/generate.py) and `foundry bench e2e`, without a GPU: the
example's arguments, its static-cache decoding against transformers' own greedy generate() on the
CPU, the bench's case assembly from the example's reports (medians, equality, nulls for what was
not run), its table, its results file, and the runner of a program that is not a bench child."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from foundry_trace.bench import e2e_bench
from foundry_trace.bench.budget import RESERVE_S, Budget
from foundry_trace.bench.children import run_program
from foundry_trace.bench.results import Case, ResultsFile
from foundry_trace.errors import ChildProcessFailed, WorkloadError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_example", ROOT / "examples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_defaults_to_a_llama_3_8b_shape_at_batch_1_and_8(example: ModuleType) -> None:
    arguments = example.parse_arguments([])
    assert (arguments.config, arguments.batch, arguments.batch_sizes, arguments.tokens) == ("llama-3-8b", 1, (1, 8), 100)
    shape = example.CONFIGS["llama-3-8b"]
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["num_attention_heads"], shape["num_key_value_heads"],
            shape["intermediate_size"], shape["vocab_size"]) == (4096, 32, 32, 8, 14336, 128256)
    assert example.parse_arguments(["--batch-sizes", "8,1,8", "--batch", "8"]).batch_sizes == (1, 8)


@pytest.mark.parametrize(("argv", "named"), [
    (["--save", "a", "--load", "a"], "not allowed with argument"),
    (["--eager", "--save", "a"], "not allowed with argument"),
    (["--config", "small", "--model", "dir"], "not allowed with argument"),
    (["--batch", "4"], "--batch 4 is not one of --batch-sizes 1,8"),
    (["--batch-sizes", "0,1"], "batch sizes must be positive"),
    (["--tokens", "226"], "must fit --context 256"),
    (["--layers", "0"], "--layers must be at least 1"),
    (["--tokens", "0"], "must be at least 1"),
])
def test_the_example_refuses_arguments_it_cannot_run(example: ModuleType, argv: list[str], named: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        example.parse_arguments(argv)
    assert named in capsys.readouterr().err


def test_the_longest_run_that_fits_the_context_is_accepted(example: ModuleType) -> None:
    assert example.parse_arguments(["--tokens", "225"]).tokens == 225  # 32 prompt + 224 fed back = 256


def test_static_cache_decoding_gives_transformers_greedy_tokens(example: ModuleType) -> None:
    """The example's decode step (static cache shared by batch sizes, host-set slot, 4D mask) on
    the CPU in float32 gives the tokens of transformers' own generate() with its dynamic cache: the
    cache, mask and positions the graphs capture are right."""
    import torch

    with torch.inference_mode():
        model = example.build_model("small", None, 2, 0, device="cpu", dtype=torch.float32)
        decoder = example.StaticDecoder(model, (1, 3), context=40)
        decoder.step(1)  # the example's first eager step, which leaves its keys in the cache: prefill clears them
        prompt = example.prompt_tokens(3, 8, model.config.vocab_size, 0, "cpu")
        tokens, first_token_s, per_token_ms = example.generate(decoder, lambda: decoder.step(3), prompt, 10)
        reference = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, min_new_tokens=10,
                                   do_sample=False, pad_token_id=0)
    assert tokens == reference[:, 8:].tolist()
    assert len({tuple(row) for row in tokens}) == 3, "the seeded prompt's rows differ, so do their tokens"
    assert first_token_s > 0 and per_token_ms > 0


def test_the_decode_step_replays_as_a_capture_of_it_does(example: ModuleType) -> None:
    """A graph replays the kernels of its capture with the arguments they had then. Here each
    batch size's step is traced once before the prompt, as capture() captures it (make_fx: every
    Python value of the step baked into the trace, its buffers the decoder's own), then the
    traces replace the step: the tokens stay eager's, so the step reads nothing but the inputs
    the host sets on the device between replays (no host-side position or counter)."""
    import functools

    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.inference_mode():
        model = example.build_model("small", None, 2, 0, device="cpu", dtype=torch.float32)
        decoder = example.StaticDecoder(model, (1, 3), context=40)
        decoder.step(1)
        traced = {batch: make_fx(functools.partial(decoder.step, batch))() for batch in (3, 1)}
        for batch in (1, 3):
            prompt = example.prompt_tokens(batch, 8, model.config.vocab_size, 0, "cpu")
            eager = example.generate(decoder, functools.partial(decoder.step, batch), prompt, 10)[0]
            assert example.generate(decoder, traced[batch], prompt, 10)[0] == eager, batch


def test_load_refuses_an_archive_of_other_batch_sizes(example: ModuleType) -> None:
    """SAVE at --batch-sizes 1,8, LOAD at 2,8: the buffers have 8 rows in both, so the layout
    check passes; the example must name the difference rather than fail on a missing key."""
    from types import SimpleNamespace

    restored = {key: SimpleNamespace(replay=lambda: None, outputs={"logits": key}) for key in ("1", "8")}
    assert sorted(example.restored_steps(restored, (1, 8))) == [1, 8]
    with pytest.raises(SystemExit, match="holds graphs for batch sizes 1,8, not --batch-sizes 2,8"):
        example.restored_steps(restored, (2, 8))


def test_the_prompt_and_the_weights_are_the_same_in_every_process(example: ModuleType) -> None:
    import torch

    assert torch.equal(example.prompt_tokens(2, 5, 100, 0, "cpu"), example.prompt_tokens(2, 5, 100, 0, "cpu"))
    assert not torch.equal(example.prompt_tokens(2, 5, 100, 0, "cpu"), example.prompt_tokens(2, 5, 100, 1, "cpu"))
    first, second = (example.build_model("small", None, 1, 0, device="cpu", dtype=torch.float32) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))


def report(mode: str, batch: int, tokens: list[list[int]], first: float, phase: float, per_token: float | None) -> dict[str, object]:
    """What the example writes with --output, reduced to what the bench reads."""
    return {"mode": mode, "batch": batch, "batch_sizes": [1, 8], "tokens": tokens, "first_token_s": first,
            "graph_phase_s": phase, "per_token_ms": per_token, "model": "small", "description": "LlamaForCausalLM (small)"}


SAME = [[5, 6, 7]]


def test_a_case_holds_the_medians_the_ratio_and_token_equality_of_every_graph_run() -> None:
    reports = [
        report("save", 1, SAME, 9.0, 4.0, 5.0),
        report("native", 1, SAME, 6.0, 2.0, 5.0), report("load", 1, SAME, 4.0, 0.2, 5.1),
        report("native", 1, SAME, 7.0, 3.0, 5.2), report("load", 1, SAME, 5.0, 0.1, 5.05),
        report("native", 1, SAME, 8.0, 1.0, 5.1), report("load", 1, SAME, 3.0, 0.3, 5.0),
        report("eager", 1, SAME, 5.5, 0.0, 20.0),
        report("native", 8, [[1, 2, 3]] * 8, 1.0, 1.0, 1.0),  # another batch: not this case's
    ]
    case = e2e_bench.e2e_case("small", 1, reports, archive_bytes=1234)
    assert case["name"] == "small-b1" and case["tokens"] == 3 and case["graphs"] == 2
    assert case["tokens_equal"] is True and case["tokens_equal_eager"] is True
    assert (case["first_token_native_s"], case["first_token_foundry_s"]) == (7.0, 4.0)
    assert (case["graph_phase_native_s"], case["graph_phase_foundry_s"]) == (2.0, 0.2)
    assert case["graph_phase_speedup"] == pytest.approx(10.0)
    assert (case["per_token_ms_native"], case["per_token_ms_foundry"]) == (5.1, 5.05)
    assert case["per_token_delta_pct"] == pytest.approx((5.05 / 5.1 - 1) * 100)
    assert case["save_graph_phase_s"] == 4.0 and case["archive_bytes"] == 1234 and case["per_token_ms_eager"] == 20.0
    assert [r["graph_phase_s"] for r in case["runs"]["load"]] == [0.2, 0.1, 0.3] and case["token_ids"] == SAME
    Case(**case)  # a valid case of a results file


@pytest.mark.parametrize("differing", ["save", "load", "eager"])
def test_one_run_with_other_tokens_makes_its_equality_false(differing: str) -> None:
    reports = [report(mode, 1, [[5, 6, 9]] if mode == differing else SAME, 1.0, 1.0, 1.0) for mode in ("native", "save", "load", "eager")]
    case = e2e_bench.e2e_case("small", 1, [*reports, report("load", 1, SAME, 1.0, 1.0, 1.0)])
    assert case["tokens_equal"] is (differing == "eager")
    assert case["tokens_equal_eager"] is (differing != "eager")


def test_what_was_not_run_stays_null() -> None:
    case = e2e_bench.e2e_case("small", 8, [report("native", 8, SAME, 6.0, 2.0, None)])
    assert case["tokens_equal"] is None and case["tokens_equal_eager"] is None  # no LOAD, no eager run
    for field in ("first_token_foundry_s", "graph_phase_foundry_s", "graph_phase_speedup", "per_token_ms_native",
                  "per_token_ms_foundry", "per_token_delta_pct", "save_graph_phase_s", "archive_bytes"):
        assert case[field] is None, field
    empty = e2e_bench.e2e_case("small", 8, [])
    assert empty["tokens"] is None and empty["graphs"] is None and empty["first_token_native_s"] is None


def test_the_results_file_and_its_table(tmp_path: Path) -> None:
    cases = [Case(**e2e_bench.e2e_case("small", 1, [report("native", 1, SAME, 6.0, 2.0, 5.0), report("load", 1, SAME, 4.0, 0.2, 5.0)])),
             Case(**e2e_bench.e2e_case("small", 8, []))]
    results = ResultsFile(what="e2e", workload="small-2-layers", workload_desc="test", device="NVIDIA H200", gpus=1, driver=None,
                          cuda="13.0", torch="2.11", commit=None, date="2026-12-10", command="foundry bench e2e", cases=cases)
    assert results.write(tmp_path).name == "e2e-small-2-layers-h200-20261210.json"
    table = e2e_bench.render(results.model_dump())
    assert "small-b1" in table and "10.0x" in table and "small-b8" in table and " - " in table


def test_the_workload_label_names_the_models_and_the_cut() -> None:
    reports = [report("save", 1, SAME, 1, 1, 1), report("native", 1, SAME, 1, 1, 1)]
    assert e2e_bench.workload_label(None, 2, reports) == "small-2-layers"
    assert e2e_bench.workload_label("llama-3-8b", None, []) == "llama-3-8b"


def test_the_bench_finds_the_checkouts_example_or_says_how_to_name_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert e2e_bench.find_example() == ROOT / "examples" / "generate.py"
    with pytest.raises(WorkloadError, match="name the file with --example"):
        e2e_bench.find_example(tmp_path / "nowhere.py")


def test_the_bench_checks_its_arguments_with_the_examples_own_parser() -> None:
    assert e2e_bench.check_arguments("small,llama-3-8b", layers=2, batches=(1, 8), tokens=10, repeats=1).name == "generate.py"
    with pytest.raises(WorkloadError, match="refuses the arguments .*--batch-sizes 1,8 --tokens 500"):
        e2e_bench.check_arguments(None, tokens=500)
    with pytest.raises(WorkloadError, match="--repeats must be at least 1"):
        e2e_bench.check_arguments(None, repeats=0)
    with pytest.raises(WorkloadError, match="--budget-s 0: give a positive number of seconds"):
        e2e_bench.check_arguments(None, budget_s=0)
    with pytest.raises(WorkloadError, match=r"the example's models \(llama-3-8b, small\), not 'nope'"):
        e2e_bench.check_arguments("small,nope")


def test_each_mode_runs_the_example_with_its_own_flags_and_no_foundry_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in example records its command line and environment: save and load name the
    archive, eager asks for no graphs, and FOUNDRY_MODE / FOUNDRY_ALLOC never reach a run (the
    baseline is plain PyTorch)."""
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text(textwrap.dedent("""
        import json, os, sys
        output = sys.argv[sys.argv.index("--output") + 1]
        mode = "save" if "--save" in sys.argv else "load" if "--load" in sys.argv else "eager" if "--eager" in sys.argv else "native"
        if mode == "save":
            open(sys.argv[sys.argv.index("--save") + 1], "wb").write(b"x" * 10)
        batch = int(sys.argv[sys.argv.index("--batch") + 1])
        json.dump({"mode": mode, "batch": batch, "batch_sizes": [1, 8], "tokens": [[1, 2]] * batch, "first_token_s": 1.0,
                   "graph_phase_s": 0.5 if mode == "load" else 2.0, "per_token_ms": 3.0, "model": "small", "argv": sys.argv[1:],
                   "foundry_environment": sorted(k for k in os.environ if k in ("FOUNDRY_MODE", "FOUNDRY_ALLOC"))}, open(output, "w"))
    """))
    monkeypatch.setenv("FOUNDRY_ALLOC", "1")
    monkeypatch.setenv("FOUNDRY_MODE", "save")
    runs, archive_bytes = e2e_bench.run_model(stand_in, "small", layers=2, batches=(1, 8), tokens=2, repeats=2, eager=True,
                                              budget=Budget())
    assert [(r["mode"], r["batch"]) for r in runs] == [
        ("save", 1), ("native", 1), ("load", 1), ("native", 8), ("load", 8), ("native", 1), ("load", 1), ("native", 8), ("load", 8),
        ("eager", 1), ("eager", 8),
    ]
    assert archive_bytes == 10 and all(r["foundry_environment"] == [] for r in runs)
    assert runs[0]["argv"][:6] == ["--batch-sizes", "1,8", "--tokens", "2", "--config", "small"] and "--layers" in runs[0]["argv"]
    case = e2e_bench.e2e_case("small", 8, runs, archive_bytes)
    assert case["tokens_equal"] is True and case["graph_phase_speedup"] == 4.0 and len(case["runs"]["native"]) == 2


def test_under_a_budget_the_first_pairs_run_and_what_does_not_fit_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run takes 10 s of a fake clock; 65 s besides the reserve: SAVE and each batch size's
    first native and LOAD runs, then one eager run fit; the second repeat's pairs (20 s each)
    and the last eager run do not, and are named."""
    now = [0.0]
    timeouts: list[float] = []

    def run_example(example: Path, flags: object, mode: str, batch: int, scratch: Path, label: str, timeout: float) -> dict[str, object]:
        if mode == "save":
            (scratch / "e2e.foundry").write_bytes(b"x")
        timeouts.append(timeout)
        now[0] += 10.0
        return {"mode": mode, "batch": batch}

    monkeypatch.setattr(e2e_bench, "run_example", run_example)
    budget = Budget(RESERVE_S + 65.0, clock=lambda: now[0])
    runs, _ = e2e_bench.run_model(Path("generate.py"), "small", layers=2, batches=(1, 8), tokens=2, repeats=2, eager=True, budget=budget)
    assert [(r["mode"], r["batch"]) for r in runs] == [("save", 1), ("native", 1), ("load", 1), ("native", 8), ("load", 8), ("eager", 1)]
    assert timeouts[0] == 65.0 and timeouts[-1] == 15.0, "each run's time-out is what is left"
    assert [s["phase"] for s in budget.record()["skipped_for_time"]] == [
        "small native b1 (2 of 2) and small load b1 (2 of 2)", "small native b8 (2 of 2) and small load b8 (2 of 2)", "small eager b8",
    ]


def test_a_program_run_returns_its_output_and_a_failed_one_names_its_log(tmp_path: Path) -> None:
    assert run_program([sys.executable, "-c", "print('tokens')"], label="ok").strip() == "tokens"
    with pytest.raises(ChildProcessFailed, match=r"broken failed \(exit 1\) .*ValueError: no model; its output: \S+\.log"):
        run_program([sys.executable, "-c", "raise ValueError('no model')"], label="broken")


def test_the_example_uses_only_public_names_of_foundry() -> None:
    """Users copy the example: every foundry_alloc / foundry_trace name it touches is in that
    package's __all__, and it imports no submodule."""
    import ast

    import foundry_alloc
    import foundry_trace

    public = {"foundry_alloc": set(foundry_alloc.__all__), "foundry_trace": set(foundry_trace.__all__)}
    syntax = ast.parse((ROOT / "examples" / "generate.py").read_text())
    used = {(node.value.id, node.attr) for node in ast.walk(syntax)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in public}
    imported = {alias.name for node in ast.walk(syntax) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(syntax) if isinstance(node, ast.ImportFrom) and node.module}
    assert {("foundry_alloc", "install"), ("foundry_trace", "prefetch"), ("foundry_trace", "load"), ("foundry_trace", "record")} <= used
    assert [name for package, name in used if name not in public[package]] == []
    assert {name for name in imported if name.startswith("foundry")} == {"foundry_alloc", "foundry_trace"}

"""The benches' child processes: options there and back, the result line, progress, and the
watchdog: a failed or stalled child (or rank) is named with its phase, and no child outlives the
run."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from foundry_trace.bench.children import add_option_flags, option_arguments, parsed_options, run_child, run_ranks
from foundry_trace.errors import ChildProcessFailed


def _module(tmp_path: Path, body: str, name: str = "child_module") -> dict[str, str]:
    """Writes a child module into `tmp_path`; returns the environment that finds it."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}


def test_engine_options_survive_the_command_line() -> None:
    options = {"attention": "math", "layers": 3, "batch_sizes": (1, 8, 64), "checkpoint": "/dev/shm/qwen3-235b-rank"}
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    assert parsed_options(parser.parse_args(option_arguments(options))) == options
    assert parsed_options(parser.parse_args(option_arguments({}))) == {}


def test_a_child_returns_its_last_line_and_its_progress_passes_through(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    env = _module(tmp_path, """
        import json, sys
        print("noise")
        print("step one", file=sys.stderr)
        print(json.dumps({"role": sys.argv[1]}))
    """)
    assert run_child("child_module", ["save"], env) == {"role": "save"}
    assert "[child_module save] step one" in capfd.readouterr().err


def test_a_failed_child_names_itself_its_phase_its_last_line_and_its_log(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The traceback is printed once, into the log the error names: the terminal gets the
    progress before it and the error's one line, not the traceback a second time."""
    env = _module(tmp_path, """
        import sys
        print("phase: load", file=sys.stderr)
        print("loading the archive", file=sys.stderr)
        def deep():
            raise RuntimeError("the archive is corrupted")
        deep()
    """)
    with pytest.raises(ChildProcessFailed, match=r"child_module load failed \(exit 1\) in phase 'load': RuntimeError: the archive is corrupted; its output: (\S+\.log)$") as failed:
        run_child("child_module", ["load"], env)
    log = Path(str(failed.value).rsplit(" ", 1)[-1])
    assert "Traceback" in log.read_text() and "in deep" in log.read_text()
    terminal = capfd.readouterr().err
    assert "loading the archive" in terminal and "Traceback" not in terminal and "in deep" not in terminal


def test_a_child_that_prints_no_result_is_an_error(tmp_path: Path) -> None:
    env = _module(tmp_path, "import sys; print('warming up', file=sys.stderr)\n")
    with pytest.raises(ChildProcessFailed, match=r"printed no result \(last phase: start\): warming up; its output: \S+\.log"):
        run_child("child_module", ["native"], env)


def test_a_stalled_child_is_stopped_and_named_with_its_phase(tmp_path: Path) -> None:
    env = _module(tmp_path, """
        import sys, time
        print("phase: capture", file=sys.stderr, flush=True)
        time.sleep(120)
    """)
    start = time.monotonic()
    with pytest.raises(ChildProcessFailed, match="stalled past the time-out of 1 s: child_module save in phase 'capture'"):
        run_child("child_module", ["save"], env, timeout=1, grace=0.5)
    assert time.monotonic() - start < 30


def test_when_one_rank_fails_every_rank_is_stopped_and_the_error_names_the_rank_and_phase(tmp_path: Path) -> None:
    env = _module(tmp_path, """
        import os, sys, time
        rank = int(os.environ["RANK"])
        print("phase: load", file=sys.stderr, flush=True)
        if rank == 1:
            raise SystemExit("peer lost")
        print(os.getpid(), flush=True)
        time.sleep(120)  # rank 0 would wait for its peer for ever
    """)
    environments = [{**env, "RANK": str(rank)} for rank in range(2)]
    start = time.monotonic()
    with pytest.raises(ChildProcessFailed, match=r"rank 1 failed \(exit 1\) in phase 'load': peer lost; rank 0 stopped too"):
        run_ranks("child_module", [[], []], environments, timeout=60)
    assert time.monotonic() - start < 30


def test_stalled_ranks_are_each_named_with_their_phase(tmp_path: Path) -> None:
    env = _module(tmp_path, """
        import os, sys, time
        print(f"phase: {'collectives' if os.environ['RANK'] == '0' else 'compare'}", file=sys.stderr, flush=True)
        time.sleep(120)
    """)
    environments = [{**env, "RANK": str(rank)} for rank in range(2)]
    with pytest.raises(ChildProcessFailed, match="rank 0 in phase 'collectives', rank 1 in phase 'compare'"):
        run_ranks("child_module", [[], []], environments, timeout=1, grace=0.5)


def test_a_child_stops_itself_at_its_own_time_out_with_every_threads_stack(tmp_path: Path) -> None:
    """The child's half of the watchdog: without the parent, it still dumps its stacks and exits."""
    env = _module(tmp_path, """
        import argparse, time
        from foundry_trace.bench.children import child_main, phase

        def run(_):
            phase("collectives")
            time.sleep(120)
            return {}

        child_main(run, argparse.ArgumentParser())
    """)
    with pytest.raises(ChildProcessFailed, match=r"failed \(exit 1\) in phase 'collectives'") as failed:
        run_child("child_module", [], env, timeout=2, grace=20)
    assert "Timeout" in Path(str(failed.value).rsplit(" ", 1)[-1]).read_text()


def test_children_import_the_installed_package_not_a_source_tree_in_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source tree in the current directory (no compiled libraries) must not shadow the package."""
    source = tmp_path / "checkout"
    (source / "foundry_trace").mkdir(parents=True)
    (source / "foundry_trace" / "__init__.py").write_text("raise ImportError('the source tree was imported')\n")
    (tmp_path / "site").mkdir()
    env = _module(tmp_path / "site", """
        import json, foundry_trace
        print(json.dumps({"package": foundry_trace.__file__}))
    """)
    monkeypatch.chdir(source)
    result = run_child("child_module", [], env)
    assert not Path(result["package"]).is_relative_to(source)


def test_prefetched_mismatches_of_natively_nondeterministic_graphs_are_set_apart() -> None:
    from foundry_trace.bench.load_bench import _set_apart_nondeterministic

    prefetched = {"compared": 9, "mismatched": [8, 24]}
    assert _set_apart_nondeterministic(prefetched, [24, 32]) == {"compared": 9, "mismatched": [8], "mismatched_nondeterministic": [24]}


def test_mismatches_whose_replays_varied_in_the_child_are_set_apart_too() -> None:
    """A graph no native capture showed nondeterministic, but whose restored replays differed
    among themselves in the child, cannot be matched bit for bit: set apart, the others kept."""
    from foundry_trace.bench.load_bench import _set_apart_nondeterministic

    child = {"compared": 7, "mismatched": [8, 16, 40], "mismatched_varying": [16]}
    assert _set_apart_nondeterministic(child, [40]) == {**child, "mismatched": [8], "mismatched_nondeterministic": [16, 40]}


def test_a_save_child_is_told_to_skip_references_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load bench's cost fit SAVEs without reference outputs (they take longer than the
    capture for thousands of graphs); every other SAVE stores them, or LOAD has nothing to match."""
    from foundry_trace.bench import roles

    given: list[list[str]] = []
    monkeypatch.setattr(roles, "run_child", lambda module, arguments, **_: given.append(arguments) or {})
    roles.run_role("save", "piecewise", Path("a.foundry"), split_every=8)
    roles.run_role("save", "piecewise", Path("b.foundry"), references=False, split_every=8)
    parser = roles._parser()
    assert [parser.parse_args(arguments).references for arguments in given] == [True, False]
    assert parsed_options(parser.parse_args(given[1])) == {"split_every": 8}


def test_a_probe_rebuilds_the_engine_its_archive_names_or_says_how_to_save_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probes restore any workload's archive: the engine comes from the archive's metadata,
    not from a workload written into the probe; an archive that names none, or one the probe
    cannot replay, is refused with the command that saves a usable one."""
    from foundry_trace.bench.probes import variants
    from foundry_trace.bench.workloads import registry
    from foundry_trace.errors import WorkloadError

    from .archive_samples import fixed_contents, write_archive

    manifest, blobs = fixed_contents()
    bare = write_archive(tmp_path / "bare.foundry", manifest, blobs)
    with pytest.raises(WorkloadError, match="roles save WORKLOAD"):
        variants.engine_of(str(bare))
    named = manifest.model_copy(update={"metadata": registry.workload_metadata("piecewise", {"batch_sizes": (1, 64)})})
    path = write_archive(tmp_path / "named.foundry", named, blobs)
    built = []
    monkeypatch.setattr(registry, "build_engine", lambda name, **options: built.append((name, options)) or "engine")
    assert variants.engine_of(str(path), ("piecewise",)) == ("piecewise", {"batch_sizes": (1, 64)}, "engine")
    with pytest.raises(WorkloadError, match="small"):
        variants.engine_of(str(path), ("small",))

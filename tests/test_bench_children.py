"""The benches' child processes: options there and back, the result line, progress and failures."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

from foundry_trace.bench_children import add_option_flags, option_arguments, parsed_options, run_child


def _child(tmp_path: Path, body: str) -> Path:
    (tmp_path / "child_module.py").write_text(textwrap.dedent(body))
    return tmp_path


def test_engine_options_survive_the_command_line() -> None:
    options = {"attention": "math", "layers": 3, "batch_sizes": (1, 8, 64)}
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    assert parsed_options(parser.parse_args(option_arguments(options))) == options
    assert parsed_options(parser.parse_args(option_arguments({}))) == {}


def test_a_child_returns_its_last_line_and_its_progress_passes_through(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cwd = _child(tmp_path, """
        import json, sys
        print("noise")
        print("step one", file=sys.stderr)
        print(json.dumps({"role": sys.argv[1]}))
    """)
    assert run_child("child_module", ["save"], cwd=cwd) == {"role": "save"}
    assert "[child_module save] step one" in capfd.readouterr().err


def test_a_failed_child_names_itself_and_shows_its_last_lines(tmp_path: Path) -> None:
    cwd = _child(tmp_path, """
        import sys
        print("loading the archive", file=sys.stderr)
        raise SystemExit("the archive is corrupted")
    """)
    with pytest.raises(RuntimeError, match=r"child_module load child failed \(exit 1\):\nloading the archive\nthe archive is corrupted"):
        run_child("child_module", ["load"], cwd=cwd)


def test_a_child_that_prints_no_result_is_an_error(tmp_path: Path) -> None:
    cwd = _child(tmp_path, "import sys; print('warming up', file=sys.stderr)\n")
    with pytest.raises(RuntimeError, match="printed no result; its last lines:\nwarming up"):
        run_child("child_module", ["native"], cwd=cwd)


def test_a_child_past_its_time_is_stopped(tmp_path: Path) -> None:
    cwd = _child(tmp_path, "import sys, time; print('capturing', file=sys.stderr, flush=True); time.sleep(60)\n")
    with pytest.raises(RuntimeError, match="did not finish in 1 s; its last lines:\ncapturing"):
        run_child("child_module", ["save"], cwd=cwd, timeout=1)


def test_prefetched_mismatches_of_natively_nondeterministic_graphs_are_set_apart() -> None:
    from foundry_trace.bench_load import _set_apart_nondeterministic

    prefetched = {"compared": 9, "mismatched": [8, 24]}
    assert _set_apart_nondeterministic(prefetched, [24, 32]) == {"compared": 9, "mismatched": [8], "mismatched_nondeterministic": [24]}

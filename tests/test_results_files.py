"""Every bench's results file takes its environment fields (device, driver, CUDA, torch, commit,
date) from one helper: device, torch and CUDA from the process that measured, the rest from
the parent."""

from __future__ import annotations

import ast
from pathlib import Path

from foundry_trace.bench import results

BENCH = Path(results.__file__).parent


def test_the_environment_comes_from_the_measuring_process_and_the_run() -> None:
    measured = {**results.device_fields(), "restore_s": 1.0}
    made = results.ResultsFile.of_this_run(measured, what="load", workload="w", workload_desc="d", gpus=0, cases=[])
    assert (made.device, made.torch, made.cuda) == (measured["device"], measured["torch"], measured["cuda"])
    assert made.date == results.today() and made.commit == results.project_commit() and not hasattr(made, "restore_s")


def test_no_bench_fills_the_environment_fields_by_hand() -> None:
    by_hand = []
    for path in BENCH.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("of_this_run", "ResultsFile"):
                by_hand += [f"{path.name}:{node.lineno} {k.arg}" for k in node.keywords if k.arg in (*results.MEASURED_FIELDS, "driver", "commit", "date")]
            if isinstance(node, ast.Attribute) and node.attr == "get_device_name" and path.name != "results.py":
                by_hand.append(f"{path.name}:{node.lineno} get_device_name")
    assert by_hand == []

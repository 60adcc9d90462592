"""First contact on a machine without a GPU (CUDA_VISIBLE_DEVICES="" hides any, so these run
alike everywhere): a GPU command prints one line naming the fix and no traceback, an argument's
error comes before the hardware's, and a run that needs no GPU says where its results went,
named for its backend, with the project's commit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foundry_trace.bench import results

ROOT = Path(__file__).resolve().parents[1]


def foundry(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    environment.pop(results.ENV_COMMIT, None)
    return subprocess.run([sys.executable, "-m", "foundry_trace.cli", *arguments], capture_output=True, text=True, env=environment, cwd=cwd, timeout=300)


@pytest.mark.parametrize("command", [("bench",), ("bench", "alloc"), ("bench", "soak"), ("bench", "e2e"), ("verify",)])
def test_a_gpu_command_without_a_gpu_prints_one_line_naming_the_fix(command: tuple[str, ...]) -> None:
    ran = foundry(*command)
    printed = (ran.stdout + ran.stderr).strip().splitlines()
    assert ran.returncode == 2
    assert len(printed) <= 4 and "Traceback" not in ran.stderr and "AssertionError" not in ran.stderr, printed
    assert "GPU" in printed[-1] and ("CUDA build" in printed[-1] or "nvidia-smi" in printed[-1]), printed


@pytest.mark.parametrize(("command", "named"), [
    (("bench", "--workload", "nope"), "unknown workload 'nope'"),
    (("bench", "alloc", "--workload", "piecewise"), "decode workloads"),
    (("bench", "fit"), "piecewise workload"),
    (("bench", "coverage", "--workload", "nope"), "not nope"),
    (("verify", "--workload", "nope"), "invalid choice: 'nope'"),
    (("bench", "e2e", "--workload", "nope"), "the example's models (llama-3-8b, small), not 'nope'"),
    (("bench", "e2e", "--tokens", "300"), "must fit --context 256"),
    (("bench", "e2e", "--repeats", "0"), "--repeats must be at least 1"),
    (("bench", "e2e", "--example", "missing.py"), "name the file with --example"),
    (("bench", "tp", "--communicator", "peer", "--degrees", "3"), "tensor parallelism 3 does not divide heads"),
    (("bench", "tp", "--workload", "small", "--degrees", "2,8"), "tensor parallelism 8 does not divide kv_heads"),
    (("bench", "tp", "--degrees", "2,x"), "a comma list of positive tensor-parallel degrees"),
    (("bench", "tp", "--communicator", "peer", "--degrees", "16"), "serves at most 8 ranks"),
    (("bench", "tp", "--workload", "piecewise"), "decode workloads"),
    (("bench", "tp", "--communicator", "peer", "--builders", "0"), "builders=0: let each rank build at least one graph"),
    (("bench", "tp", "--communicator", "peer", "--builders", "2,x"), "builders=2,x: let each rank build at least one graph"),
    (("bench", "load", "--archive", "/nonexistent-folder/a.foundry"), "folder /nonexistent-folder does not exist"),
])
def test_an_argument_error_comes_before_the_missing_gpu(command: tuple[str, ...], named: str) -> None:
    ran = foundry(*command)
    assert ran.returncode == 2 and named in ran.stderr and "GPU" not in ran.stderr, ran.stderr


def test_a_host_run_prints_its_results_path_named_for_its_backend_with_the_commit(tmp_path: Path) -> None:
    ran = foundry("bench", "alloc", "--backend", "host", "--output", str(tmp_path))
    assert ran.returncode == 0, ran.stderr
    [written] = tmp_path.iterdir()
    assert written.name.startswith("alloc-host-placement-host-") and "gpu" not in written.name
    assert f"results in {written}" in ran.stderr
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT) if shutil.which("git") else None
    expected = head.stdout.strip() if head is not None and head.returncode == 0 else None  # a checkout (CI's clean clone is one)
    assert json.loads(written.read_text())["commit"] == expected


def test_the_commit_is_foundry_commit_else_a_checkout_of_the_project_else_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert results._checkout_commit(tmp_path) is None  # not a checkout
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        assert results._checkout_commit(tmp_path) is None  # a checkout, not of this project
    monkeypatch.setenv(results.ENV_COMMIT, "abc123")
    assert results.project_commit() == "abc123", "a commit named explicitly wins over any checkout's HEAD"
    monkeypatch.setattr(results, "_checkout_commit", lambda place: None)
    monkeypatch.delenv(results.ENV_COMMIT)
    assert results.project_commit() is None


def test_a_probe_without_a_gpu_names_a_missing_archive_first_then_the_gpu(tmp_path: Path) -> None:
    def probe(archive: Path) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        return subprocess.run([sys.executable, "-m", "foundry_trace.bench.probes.cold_restore", str(archive)], capture_output=True,
                              text=True, env=environment, cwd=tmp_path, timeout=300)

    missing = probe(tmp_path / "absent.foundry")
    assert missing.returncode == 1 and "no archive at" in missing.stderr and "GPU" not in missing.stderr
    (tmp_path / "a.foundry").write_bytes(b"")
    ran = probe(tmp_path / "a.foundry")
    printed = ran.stderr.strip().splitlines()
    assert ran.returncode == 1 and len(printed) == 1 and "GPU" in printed[0] and "Traceback" not in ran.stderr

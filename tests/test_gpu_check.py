"""tools/gpu-check's plan, checked on a CPU before it spends device time: every part resolves to
a command (GPU_CHECK_DRY_RUN prints them and runs nothing), and every `foundry` command a part
runs gets past the CLI's argument checks, which come before the hardware's (with the GPU hidden,
each must stop at the missing GPU and at nothing else)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "tools" / "gpu-check"
# Every kind of part, with the arguments the next device calls use (docs/testing.md).
PARTS = [
    "install",
    "tests",
    "tests:not generate",
    "verify",
    "soak",
    "load:llama8b",
    "load:piecewise",
    "load:qwen3-235b-rank",
    "load-math:llama8b",
    "checkpoint:qwen3-235b-rank",
    "save:qwen3-235b-rank",
    "fit:piecewise",
    "replay-probe",
    "cold-probe:llama8b",
    "module-probe:llama8b",
    "exec-update:qwen3-235b-rank",
    "tp",
    "tp-peer",
    "tp-peer:8:12",
    "tp-peer:2+4+8:32",
    "coverage",
    "e2e",
    "e2e:small+llama-3-8b",
    "peer-probe",
    "peer-stall",
    "readme",
    "parallel:soak",
]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="tools/gpu-check is a bash script")


def dry_run(parts: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GPU_CHECK_DRY_RUN": "1",
        "OUT": "/nonexistent-out",
        **environment,
    }  # OUT: written to, it would fail
    return subprocess.run(
        ["bash", str(GPU_CHECK), parts], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )


def planned(parts: str, **environment: str) -> list[tuple[str, list[str]]]:
    """(step name, command line) of each step the run would make, in order."""
    ran = dry_run(parts, **environment)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    steps = []
    for line in ran.stdout.splitlines():
        if line.startswith("DRY "):
            name, _, command = line[len("DRY ") :].partition(":")
            steps.append((name, shlex.split(command)))
    return steps


def planned_commands(parts: str, **environment: str) -> dict[str, list[str]]:
    return dict(planned(parts, **environment))


def test_every_part_resolves_to_a_command_and_nothing_runs(tmp_path: Path) -> None:
    steps = planned(",".join(PARTS), OUT=str(tmp_path))
    assert len(steps) == len(PARTS), [name for name, _ in steps]
    assert not any(tmp_path.iterdir()), "a dry run writes nothing"


def test_an_unknown_part_fails_the_run() -> None:
    ran = dry_run("install,nope")
    assert ran.returncode != 0 and "unknown part nope" in ran.stdout


def test_before_after_install_is_refused_before_anything_runs() -> None:
    ran = dry_run("install,before")
    assert ran.returncode == 2 and "put `before` ahead of `install`" in ran.stdout and "DRY" not in ran.stdout


def test_environment_knobs_reach_the_commands() -> None:
    commands = planned_commands(
        "load:qwen3-235b-rank,tp-peer:8:32,e2e",
        LAYERS="8",
        CHECKPOINT="/dev/shm/c",
        ARCHIVE="/dev/shm/a.foundry",
        TP_COMPARE="latency",
        TP_BUILDERS="2",
        E2E_REPEATS="5",
        E2E_LAYERS="4",
    )
    load = commands["load-qwen3-235b-rank"]
    assert load[load.index("--layers") + 1] == "8" and load[load.index("--checkpoint") + 1] == "/dev/shm/c"
    assert load[load.index("--archive") + 1] == "/dev/shm/a.foundry"
    tp = commands["tp-peer-8-32"]
    assert (
        tp[tp.index("--degrees") + 1] == "8"
        and tp[tp.index("--layers") + 1] == "32"
        and tp[tp.index("--compare") + 1] == "latency"
        and tp[tp.index("--builders") + 1] == "2"
    )
    e2e = commands["e2e"]
    assert e2e[e2e.index("--repeats") + 1] == "5" and e2e[e2e.index("--layers") + 1] == "4"


def test_mps_starts_its_daemon_before_every_part_and_only_when_asked() -> None:
    steps = planned("install,tp-peer:4:32", MPS="1")
    assert steps[0] == ("mps", ["nvidia-cuda-mps-control", "-d"])
    assert [name for name, _ in steps[1:]] == ["install", "tp-peer-4-32"]
    assert all(name != "mps" for name, _ in planned("install,tp-peer:4:32", MPS=""))


@pytest.mark.parametrize(
    "part",
    [p for p in PARTS if p.split(":")[0] in {"load", "load-math", "fit", "tp", "tp-peer", "coverage", "e2e", "soak"}],
)
def test_each_foundry_command_passes_the_argument_checks(part: str, tmp_path: Path) -> None:
    checkpoint = (
        {"CHECKPOINT": str(tmp_path)} if "qwen3-235b-rank" in part else {}
    )  # the transformers workloads' weights
    commands = planned_commands(part, TP_COMPARE="latency", **checkpoint)
    [command] = commands.values()
    assert command[0] == "foundry", command
    arguments = [str(tmp_path) if argument.startswith("/tmp/gpu-check.") else argument for argument in command[1:]]
    ran = subprocess.run(
        [sys.executable, "-m", "foundry_trace.cli", *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        cwd=ROOT,
        timeout=300,
    )
    printed = (ran.stdout + ran.stderr).strip().splitlines()
    assert ran.returncode == 2 and len(printed) == 1 and "needs an NVIDIA GPU" in printed[0], printed


def test_save_writes_the_archive_load_reuses_and_only_where_it_is_missing() -> None:
    """save:W is the LOAD bench's own SAVE (roles save, references included) into ARCHIVE,
    written under another name and moved into place once complete, so that an interrupted SAVE
    never leaves a file that load:W would take for a finished archive."""
    [(name, command)] = planned("save:qwen3-235b-rank", ARCHIVE="/dev/shm/a.foundry", LAYERS="4", CHECKPOINT="/dev/shm/c")
    script = command[-1]
    assert name == "save-qwen3-235b-rank" and command[:2] == ["bash", "-c"]
    assert script.startswith("[[ -f /dev/shm/a.foundry ]] ||") and "roles save qwen3-235b-rank /dev/shm/a.foundry.partial" in script
    assert "--layers 4" in script and "--checkpoint /dev/shm/c" in script and script.rstrip("; }").endswith("mv /dev/shm/a.foundry.partial /dev/shm/a.foundry")

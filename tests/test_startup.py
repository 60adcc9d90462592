"""Environment activation through the start-up hook, in child interpreters."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import clean_environment

HOOK = Path(__file__).resolve().parent.parent / "foundry_alloc.pth"


def run_with_hook(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter whose site directory holds the package's start-up hook,
    as it does after `pip install`."""
    site_dir = tmp_path / "site"
    site_dir.mkdir(exist_ok=True)
    shutil.copy(HOOK, site_dir / HOOK.name)
    program = f"import site; site.addsitedir({str(site_dir)!r})\n{code}"
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=clean_environment(**env), timeout=300
    )


def torch_has_cuda() -> bool:
    import torch

    return torch.version.cuda is not None


def test_hook_does_nothing_when_unset(tmp_path: Path) -> None:
    result = run_with_hook(tmp_path, "import torch, sys; assert 'foundry_alloc' not in sys.modules; print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_hook_waits_for_torch(tmp_path: Path) -> None:
    """Activation must not import torch into every Python process of the container."""
    result = run_with_hook(tmp_path, "import sys; assert 'torch' not in sys.modules; print('ok')", FOUNDRY_ALLOC="1")
    assert result.returncode == 0, result.stderr


def test_invalid_setting_fails_the_torch_import(tmp_path: Path) -> None:
    result = run_with_hook(tmp_path, "import torch", FOUNDRY_ALLOC="1", FOUNDRY_ALLOC_SIZE="lots")
    assert result.returncode != 0
    assert "ConfigError" in result.stderr
    assert "FOUNDRY_ALLOC_SIZE: 'lots' is not a size" in result.stderr


@pytest.mark.skipif(torch_has_cuda(), reason="checks the refusal of a CPU-only torch")
def test_cpu_only_torch_is_refused_by_name(tmp_path: Path) -> None:
    result = run_with_hook(tmp_path, "import torch", FOUNDRY_ALLOC="1")
    assert result.returncode != 0
    assert "CudaUnavailableError" in result.stderr and "built without CUDA" in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FOUNDRY_MODE": "restore", "FOUNDRY_ARCHIVE": "x"}, "FOUNDRY_MODE='restore' is not a mode: use save or load"),
        ({"FOUNDRY_MODE": "load"}, "FOUNDRY_MODE=load needs FOUNDRY_ARCHIVE, the path of the archive to restore"),
        ({"FOUNDRY_MODE": "save"}, "FOUNDRY_MODE=save needs FOUNDRY_ARCHIVE, the path of the archive to write"),
        ({"FOUNDRY_MODE": "load", "FOUNDRY_ARCHIVE": "/nonexistent/model.foundry"}, "does not exist: save it first"),
    ],
)
def test_invalid_trace_modes_fail_the_torch_import_by_name(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = run_with_hook(tmp_path, "import torch", **env)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]


def test_the_hook_met_twice_activates_once(tmp_path: Path) -> None:
    """Some packages re-run site processing while foundry_trace is imported at start-up, which
    processes every .pth file again: SAVE must not open a second recording, LOAD not queue twice."""
    archive = tmp_path / "a.foundry"
    archive.write_bytes(b"")
    program = f"""
import os, sys
os.environ.update(FOUNDRY_MODE="load", FOUNDRY_ARCHIVE={str(archive)!r}, FOUNDRY_ALLOC="1")
import foundry_alloc._startup as startup, foundry_trace.mode as mode
for _ in range(2):
    startup.activate_from_environment()
    mode.activate_from_environment()
print(len(startup._torch_hook.actions))
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=clean_environment(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "2", "one action from each hook, however often it is met"

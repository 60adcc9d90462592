"""What a new user does: a fresh checkout (no build products in it), `pip install .` (not
editable) into a fresh environment, then a `foundry` command run from the checkout's root that
starts child processes. The children must import the installed package, not the source tree
in the current directory, which has no compiled libraries."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_builds_the_package() -> bool:
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0]) >= 77
    except Exception:  # noqa: BLE001 - not installed, or an odd version string
        return False


def _checkout(destination: Path) -> Path:
    """The tracked files, as a fresh clone has them."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source, target = ROOT / name.decode(), destination / name.decode()
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return destination


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
@pytest.mark.skipif(not _setuptools_builds_the_package(), reason="needs setuptools>=77 here (the test extra) to build offline")
def test_a_non_editable_install_runs_a_child_starting_command_from_the_checkouts_root(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "checkout")
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(checkout)],
        capture_output=True, text=True, timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert not list(checkout.glob("foundry_*/_lib*.so")), "the build wrote into the checkout"
    fresh = tmp_path / "env"
    venv.create(fresh, with_pip=True)
    python = fresh / "bin" / "python"
    # The dependencies (torch, pydantic, ...) come from this environment's site-packages, read
    # as a plain path: its .pth files (this checkout's editable install among them) do not apply.
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "dependencies-of-the-test.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", *map(str, wheels.glob("*.whl"))],
        capture_output=True, text=True, timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    run = subprocess.run(
        [str(fresh / "bin" / "foundry"), "bench", "alloc", "--backend", "host", "--no-write"],
        cwd=checkout, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "placed alike in two fresh processes: True" in run.stdout

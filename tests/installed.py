"""A regular (not editable) install of this tree into a fresh environment, as a new user or a
serving container gets it: the tree copied without build products, built into a wheel, installed
into a new virtual environment whose other packages (torch, pydantic, ...) come from this one's
site-packages, read as a plain path (so its .pth files, this tree's editable install among them,
do not apply). Used by the tests of what only a regular install has: the start-up hook
(foundry_alloc.pth) and children that must not import a source tree in the current directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_PRODUCTS = ("*.so", "*.egg-info", "build", "__pycache__", ".whl", ".before", "out", ".pytest_cache", ".hypothesis")


def setuptools_builds_the_package() -> bool:
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0]) >= 77
    except Exception:  # noqa: BLE001 - not installed, or an odd version string
        return False


def fresh_checkout(destination: Path) -> Path:
    """The tree as a fresh clone has it: everything but build products and git's own folder
    (a copy of a working tree may carry a .git that does not describe it)."""
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*BUILD_PRODUCTS, ".git"))
    return destination


def install_fresh(directory: Path) -> tuple[Path, Path]:
    """(the checkout, the new environment's python) with this tree installed as a wheel."""
    checkout = fresh_checkout(directory / "checkout")
    wheels = directory / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(checkout)],
        capture_output=True, text=True, timeout=900,
    )
    if built.returncode != 0:
        raise RuntimeError(f"building the wheel failed:\n{built.stderr[-3000:]}")
    environment = directory / "env"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # The test's own dependencies: its environment's packages, and the system's where that
    # environment sees them too (a venv made with --system-site-packages).
    sites = [sysconfig.get_paths()["purelib"], *(entry for entry in sys.path if entry.endswith("site-packages"))]
    (purelib / "dependencies-of-the-test.pth").write_text("".join(f"{site}\n" for site in dict.fromkeys(sites)))
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", *map(str, wheels.glob("*.whl"))],
        capture_output=True, text=True, timeout=600,
    )
    if installed.returncode != 0:
        raise RuntimeError(f"installing the wheel failed:\n{installed.stderr[-3000:]}")
    return checkout, python

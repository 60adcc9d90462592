"""Shared fixtures. GPU tests (marker `gpu`) are skipped where no CUDA device and CUDA torch exist."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import foundry_alloc as fa

SIM_BASE = 0x200000000000
SIM_GRANULARITY = 2 << 20
SIM_SIZE = 8 << 30  # 8 arenas of 1 GiB: small zones of 64 MiB, large zones of 960 MiB


@functools.cache
def gpu_unavailable_reason() -> str | None:
    """Why GPU tests cannot run here, asked in a child process so this one never touches CUDA."""
    probe = "import torch,sys; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)"
    try:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot probe for CUDA: {error}"
    return None if result.returncode == 0 else "no CUDA device or no CUDA build of torch"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def sim() -> Iterator[fa.NativeAllocator]:
    """A host-simulated allocator running the same placement code as the CUDA one."""
    allocator = fa.NativeAllocator.simulated(SIM_BASE, SIM_SIZE, granularity=SIM_GRANULARITY)
    yield allocator
    allocator.close()


def clean_environment(**overrides: str) -> dict[str, str]:
    """The current environment without FOUNDRY_* variables, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env.update(overrides)
    return env


def run_process_tree(command: list[str], *, timeout: float, **options: object) -> subprocess.CompletedProcess:
    """subprocess.run(capture_output=True, text=True) for a program that starts processes of its
    own (a bench): past `timeout` its whole process group is killed, so no grandchild outlives the
    test holding GPU memory that the next tests need; then TimeoutExpired is raised."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **options)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the stand-in driver (tests/stand_in.py) as libcuda.so.1."""
    from .stand_in import build_stand_in

    return build_stand_in(tmp_path_factory.mktemp("fake-libcuda"))


@pytest.fixture(scope="session")
def regular_install(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(checkout, python) of a regular install of this tree in a fresh environment (installed.py)."""
    from .installed import install_fresh, setuptools_builds_the_package

    if not setuptools_builds_the_package():
        pytest.skip("needs setuptools>=77 here (the test extra) to build the package offline")
    return install_fresh(tmp_path_factory.mktemp("regular-install"))

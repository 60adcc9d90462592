"""The stand-in driver of fuzz/native/fake_cuda.cpp for CPU tests of the native libraries:
compiled as libcuda.so.1 into a folder, and child processes whose libcuda it is (the libraries
resolve the driver once per process). A child scenario is a function `_child_<name>()` of a test
module, run by run_child()."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKE_CUDA = ROOT / "fuzz" / "native" / "fake_cuda.cpp"


def cuda_include() -> Path:
    """Where cuda.h is, looked for as setup.py looks for it."""
    nvcc = shutil.which("nvcc")
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda", "/opt/cuda"]
    roots += [str(Path(nvcc).resolve().parent.parent)] if nvcc else []
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda.h").exists():
            return Path(root) / "include"
    raise RuntimeError("CUDA headers not found (cuda.h): set CUDA_HOME; the package build needs them too")


def build_stand_in(directory: Path) -> Path:
    """Compiles the stand-in as `directory`/libcuda.so.1; returns `directory`."""
    compiler = os.environ.get("CXX", "c++")
    command = [compiler, "-std=c++17", "-O1", "-fPIC", "-shared", "-Wl,-soname,libcuda.so.1", f"-I{cuda_include()}"]
    subprocess.run([*command, "-o", str(directory / "libcuda.so.1"), str(FAKE_CUDA)], check=True, capture_output=True)
    return directory


def run_child(stand_in: Path, module: str, scenario: str) -> str:
    """Runs `_child_<scenario>()` of tests.`module` in a process whose libcuda is the stand-in;
    returns its output."""
    environment = dict(os.environ, LD_LIBRARY_PATH=f"{stand_in}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    result = subprocess.run(
        [sys.executable, "-c", f"from tests.{module} import _child_{scenario}; _child_{scenario}()"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def fake() -> ctypes.CDLL:
    """The stand-in's controls (in a child process)."""
    library = ctypes.CDLL("libcuda.so.1")
    u64, u64_array = ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64)
    signatures = {
        "fake_cuda_function": (u64, [u64_array, u64_array, u64]),
        "fake_cuda_event": (u64, []),
        "fake_cuda_context": (u64, []),
        "fake_cuda_graph": (u64, []),
        "fake_cuda_live_graphs": (u64, []),
        "fake_cuda_live_nodes": (u64, []),
        "fake_cuda_live_modules": (u64, []),
        "fake_cuda_calls": (u64, []),
        "fake_cuda_graph_nodes": (u64, [u64]),
        "fake_cuda_define_kernel": (None, [ctypes.c_char_p, u64_array, u64_array, u64]),
        "fake_cuda_define_variable": (None, [ctypes.c_char_p, u64]),
        "fake_cuda_read_variable": (u64, [u64, ctypes.c_char_p, ctypes.c_char_p, u64]),
        "fake_cuda_function_attribute": (ctypes.c_int, [u64, ctypes.c_int]),
        "fake_cuda_fail_call": (None, [u64]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(library, name)
        function.restype, function.argtypes = restype, argtypes
    return library


def define_kernel(library: ctypes.CDLL, name: str, parameters: list[tuple[int, int]]) -> None:
    """Makes every module loaded from now on hold kernel `name` of these (offset, size) parameters."""
    offsets = (ctypes.c_uint64 * max(1, len(parameters)))(*(o for o, _ in parameters))
    sizes = (ctypes.c_uint64 * max(1, len(parameters)))(*(s for _, s in parameters))
    library.fake_cuda_define_kernel(name.encode(), offsets, sizes, len(parameters))

"""Builds the allocator core (foundry_alloc/csrc) and the graph restore loop (foundry_trace/csrc)
as plain shared libraries.

Only CUDA's headers are needed at build time (cuda.h for types, NVTX v3 which is header-only):
the library opens libcuda at run time, so it builds and loads on machines without a GPU.
The start-up hook foundry_alloc.pth is placed at the top of site-packages.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
ALLOC_SOURCES = ROOT / "foundry_alloc" / "csrc"  # also holds the headers both libraries share
RESTORE_SOURCES = ROOT / "foundry_trace" / "csrc"
COMPILE_ARGS = ["-std=c++17", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra"]
STARTUP_HOOK = "foundry_alloc.pth"


def sources(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in directory.glob("*.cpp"))


def cuda_include_dir() -> str:
    """A directory holding cuda.h and nvtx3/, from CUDA_HOME/CUDA_PATH or the usual places."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda", "/opt/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for root in filter(None, candidates):
        include = Path(root) / "include"
        if (include / "cuda.h").exists() and (include / "nvtx3" / "nvToolsExt.h").exists():
            return str(include)
    raise RuntimeError(
        "CUDA headers not found (cuda.h and nvtx3/nvToolsExt.h): set CUDA_HOME to a CUDA toolkit. "
        "Only the headers are used; no CUDA library is linked."
    )


class BuildCore(build_ext):
    """Compiles the libraries without Python's module conventions: they are loaded with ctypes
    (and the allocator by PyTorch)."""

    def build_extensions(self) -> None:
        for extension in self.extensions:
            extension.include_dirs.append(cuda_include_dir())
        super().build_extensions()

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # no PyInit_ function: this is not a Python module


class BuildWithStartupHook(build_py):
    """Also ships foundry_alloc.pth, which activates the allocator when FOUNDRY_ALLOC is set."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(ROOT / STARTUP_HOOK), str(Path(self.build_lib) / STARTUP_HOOK))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / STARTUP_HOOK)]


setup(
    ext_modules=[
        Extension(
            "foundry_alloc._libfoundry_alloc",
            sources=sources(ALLOC_SOURCES),
            language="c++",
            extra_compile_args=COMPILE_ARGS,
            libraries=["dl"],
        ),
        Extension(
            "foundry_trace._libfoundry_restore",
            sources=sources(RESTORE_SOURCES),
            include_dirs=[str(ALLOC_SOURCES.relative_to(ROOT))],
            language="c++",
            extra_compile_args=COMPILE_ARGS,
            libraries=["dl"],
        ),
    ],
    cmdclass={"build_ext": BuildCore, "build_py": BuildWithStartupHook},
)

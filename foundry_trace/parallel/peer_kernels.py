"""The peer all-reduce kernels (peer_all_reduce.cu): compiled with NVRTC for this device once per
process, loaded with cuModuleLoadData (so SAVE's tracer records the binary like any JIT
module's), and launched with arguments that are the same on every rank.

NVRTC comes with the CUDA toolkit's wheels that torch depends on (nvidia-cuda-nvrtc); nothing is
built at install time and no CUDA library is linked.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass
from pathlib import Path

from cuda.bindings import driver

from foundry_trace._driver import call
from foundry_trace.archive.records import ELEMENT_BYTES, PEER_KERNEL_PREFIX
from foundry_trace.errors import PeerError
from foundry_trace.parallel.window import PACK_BYTES

SOURCE = Path(__file__).with_name("peer_all_reduce.cu")
THREADS = 512  # peer_all_reduce.cu: THREADS and MAX_BLOCKS
MAX_BLOCKS = 64
ALGORITHMS = ("one_shot", "two_shot")
TWO_SHOT_FROM_BYTES = 512 << 10  # below, one read of every rank's whole input is cheaper than two barriers
_lock = threading.Lock()
_owners: dict[int, object] = {}  # CUfunction -> the communicator that loaded it


@functools.cache
def compiled(major: int, minor: int) -> bytes:
    """The cubin of peer_all_reduce.cu for compute capability major.minor."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as error:
        raise PeerError(f"NVRTC is not available ({error}): install cuda-bindings with the nvidia-cuda-nvrtc wheel") from None
    source = SOURCE.read_bytes()
    status, program = nvrtc.nvrtcCreateProgram(source, SOURCE.name.encode(), 0, [], [])
    _nvrtc_check(nvrtc, status, "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture=sm_{major}{minor}".encode(), b"-std=c++17"]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            _, size = nvrtc.nvrtcGetProgramLogSize(program)
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(program, log)
            raise PeerError(f"NVRTC could not compile {SOURCE.name} for sm_{major}{minor}: {log.decode(errors='replace').strip()[:2000]}")
        status, size = nvrtc.nvrtcGetCUBINSize(program)
        _nvrtc_check(nvrtc, status, "nvrtcGetCUBINSize")
        cubin = b" " * size
        _nvrtc_check(nvrtc, nvrtc.nvrtcGetCUBIN(program, cubin)[0], "nvrtcGetCUBIN")
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def _nvrtc_check(nvrtc, status, what: str) -> None:  # noqa: ANN001 - the nvrtc module
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise PeerError(f"{what} failed with {getattr(status, 'name', status)}: check the NVRTC installation")


@dataclass
class Launch:
    """One all-reduce as it is launched: which kernel, its grid, and its packs of 16 bytes."""

    algorithm: str
    dtype: str
    packs: int
    blocks: int


def plan(dtype: str, count: int, world: int) -> Launch:
    """The kernel and grid for `count` elements over `world` ranks: the same on every rank (a
    function of the shape alone), so every rank's graph holds the same launch."""
    packs = count * ELEMENT_BYTES[dtype] // PACK_BYTES
    two_shot = world > 2 and packs * PACK_BYTES >= TWO_SHOT_FROM_BYTES and packs % world == 0
    units = packs // world if two_shot else packs
    return Launch("two_shot" if two_shot else "one_shot", dtype, packs, max(1, min(MAX_BLOCKS, -(-units // THREADS))))


class Kernels:
    """The module and its functions in this process's context; unload() gives them back."""

    def __init__(self, device: int, owner: object) -> None:
        major = int(call(driver.cuDeviceGetAttribute, driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device))
        minor = int(call(driver.cuDeviceGetAttribute, driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device))
        if major < 7:
            raise PeerError(f"the peer all-reduce needs compute capability 7.0 or newer (system-scope acquire and release); this GPU has {major}.{minor}")
        self.module = call(driver.cuModuleLoadData, compiled(major, minor))
        self.functions: dict[tuple[str, str], driver.CUfunction] = {}
        try:
            for algorithm in ALGORITHMS:
                for dtype in ELEMENT_BYTES:
                    name = f"{PEER_KERNEL_PREFIX}{algorithm}_{dtype}"
                    function = call(driver.cuModuleGetFunction, self.module, name.encode())
                    self.functions[algorithm, dtype] = function
                    with _lock:
                        _owners[int(function)] = owner
        except BaseException:
            self.unload()
            raise

    def launch(self, launch: Launch, data: int, window: int, stream: int) -> None:
        arguments = ((data, launch.packs, window), (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p))
        call(
            driver.cuLaunchKernel, self.functions[launch.algorithm, launch.dtype], launch.blocks, 1, 1, THREADS, 1, 1, 0,
            driver.CUstream(stream), arguments, 0,
        )

    def unload(self) -> None:
        with _lock:
            for function in self.functions.values():
                _owners.pop(int(function), None)
        self.functions.clear()
        if self.module is not None:
            driver.cuModuleUnload(self.module)
            self.module = None


def owner_of(function: int) -> object | None:
    """The communicator whose all-reduce a CUfunction is, if it is one (SAVE's graph walker asks)."""
    with _lock:
        return _owners.get(function)

"""A communicator on NCCL, called directly (ctypes), as serving engines do for graph capture.

Used by tensor-parallel engines natively (their all-reduces are captured into their graphs) and
by LOAD, which asks it for a graph of each collective an archive recorded (collectives.py). The
ranks agree on NCCL's unique id through a torch TCPStore (MASTER_ADDR, MASTER_PORT).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cuda.bindings import driver

from .driver import call, try_call
from .errors import NcclError
from .records import CollectiveSpec

if TYPE_CHECKING:
    import torch

ENV_LIBRARY = "FOUNDRY_NCCL_LIBRARY"
UNIQUE_ID_BYTES = 128
_DTYPE = {"float16": 6, "float32": 7, "bfloat16": 9}  # ncclDataType_t
_SUM = 0  # ncclRedOp_t
STORE_KEY = "foundry/nccl-unique-id"


class _UniqueId(ctypes.Structure):
    # Bytes, not c_char: a c_char array reads and writes as a C string, cut at the first NUL,
    # and a unique id is mostly NULs (its socket address).
    _fields_ = [("internal", ctypes.c_ubyte * UNIQUE_ID_BYTES)]


def unique_id_struct(unique_id: bytes) -> _UniqueId:
    """The ncclUniqueId that NCCL takes by value, from the bytes the ranks exchanged."""
    if len(unique_id) != UNIQUE_ID_BYTES:
        raise NcclError(
            f"an NCCL unique id has {UNIQUE_ID_BYTES} bytes, got {len(unique_id)}: "
            "pass the bytes of new_unique_id() unchanged to every rank"
        )
    return _UniqueId.from_buffer_copy(unique_id)


def _library_path() -> str:
    if os.environ.get(ENV_LIBRARY):
        return os.environ[ENV_LIBRARY]
    for entry in sys.path:  # the nvidia-nccl wheel that torch depends on
        candidate = Path(entry) / "nvidia" / "nccl" / "lib" / "libnccl.so.2"
        if candidate.is_file():
            return str(candidate)
    return "libnccl.so.2"


@functools.cache
def library() -> ctypes.CDLL:
    path = _library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as error:
        raise NcclError(f"cannot load NCCL ({path}: {error}): install nvidia-nccl or set {ENV_LIBRARY}") from None
    lib.ncclGetErrorString.restype = ctypes.c_char_p
    lib.ncclGetErrorString.argtypes = [ctypes.c_int]
    lib.ncclCommInitRank.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, _UniqueId, ctypes.c_int]
    lib.ncclAllReduce.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
    ]
    lib.ncclCommDestroy.argtypes = [ctypes.c_void_p]
    return lib


def _check(result: int, what: str) -> None:
    if result != 0:
        message = library().ncclGetErrorString(result).decode(errors="replace")
        raise NcclError(f"{what} failed: {message} ({result})")


def version() -> int:
    number = ctypes.c_int(0)
    _check(library().ncclGetVersion(ctypes.byref(number)), "ncclGetVersion")
    return number.value


def new_unique_id() -> bytes:
    unique = _UniqueId()
    _check(library().ncclGetUniqueId(ctypes.byref(unique)), "ncclGetUniqueId")
    return bytes(unique)


class NcclCommunicator:
    """One rank of an NCCL communicator on the current CUDA device."""

    def __init__(self, rank: int, world_size: int, unique_id: bytes) -> None:
        if not 0 <= rank < world_size:
            raise NcclError(f"rank {rank} of {world_size}: a rank lies in 0..{world_size - 1}")
        # Connect every channel now: a connection made later would be made inside a capture.
        os.environ.setdefault("NCCL_RUNTIME_CONNECT", "0")
        self.rank, self.world_size = rank, world_size
        self._comm = ctypes.c_void_p()
        identifier = unique_id_struct(unique_id)
        _check(library().ncclCommInitRank(ctypes.byref(self._comm), world_size, identifier, rank), "ncclCommInitRank")

    @classmethod
    def from_environment(cls) -> NcclCommunicator:
        """The rank that RANK and WORLD_SIZE name (as torchrun sets them), meeting its peers at
        MASTER_ADDR:MASTER_PORT; a single rank needs neither."""
        rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls(0, 1, new_unique_id())
        from datetime import timedelta

        import torch.distributed as dist

        try:
            address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        except KeyError as missing:
            raise NcclError(f"{missing} is not set: a rank of {world_size} meets its peers at MASTER_ADDR:MASTER_PORT") from None
        store = dist.TCPStore(address, port, world_size, rank == 0, timeout=timedelta(seconds=120))
        if rank == 0:
            store.set(STORE_KEY, new_unique_id())
        return cls(rank, world_size, bytes(store.get(STORE_KEY)))

    def _all_reduce(self, address: int, count: int, dtype: str, stream: int) -> None:
        _check(
            library().ncclAllReduce(address, address, count, _DTYPE[dtype], _SUM, self._comm, stream),
            f"ncclAllReduce of {count} {dtype}",
        )

    def all_reduce(self, tensor: torch.Tensor) -> None:
        import torch

        from .collectives import spec_of

        spec = spec_of(tensor)
        self._all_reduce(spec.address, spec.count, spec.dtype, torch.cuda.current_stream().cuda_stream)

    def collective_graph(self, spec: CollectiveSpec) -> int:
        """Captures the collective on a stream of its own (relaxed mode: LOAD's threads keep
        loading modules meanwhile) into a CUgraph."""
        stream = call(driver.cuStreamCreate, driver.CUstream_flags.CU_STREAM_NON_BLOCKING)
        try:
            call(driver.cuStreamBeginCapture, stream, driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED)
            try:
                self._all_reduce(spec.address, spec.count, spec.dtype, int(stream))
            except BaseException:
                broken = try_call(driver.cuStreamEndCapture, stream)
                if broken is not None:
                    driver.cuGraphDestroy(broken)
                raise
            return int(call(driver.cuStreamEndCapture, stream))
        finally:
            call(driver.cuStreamDestroy, stream)

    def close(self) -> None:
        if self._comm:
            _check(library().ncclCommDestroy(self._comm), "ncclCommDestroy")
            self._comm = ctypes.c_void_p()

"""A communicator on NCCL, called directly (ctypes), as serving engines do for graph capture.

Used by tensor-parallel engines natively (their all-reduces are captured into their graphs) and
by LOAD, which asks it for a graph of each collective an archive recorded (collectives.py). The
ranks agree on NCCL's unique id through a torch TCPStore (MASTER_ADDR, MASTER_PORT). Every call
that waits for peers or graphs has a time limit (time_limit.py).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cuda.bindings import driver

from foundry_trace._driver import call, try_call
from foundry_trace.archive.records import CollectiveSpec
from foundry_trace.errors import NcclError, StallError
from foundry_trace.parallel.time_limit import call_with_time_limit

if TYPE_CHECKING:
    import torch

ENV_LIBRARY = "FOUNDRY_NCCL_LIBRARY"
UNIQUE_ID_BYTES = 128
_DTYPE = {"float16": 6, "float32": 7, "bfloat16": 9}  # ncclDataType_t
_SUM = 0  # ncclRedOp_t
STORE_KEY = "foundry/nccl-unique-id"
JOINED_KEY = "foundry/nccl-joined"
DEFAULT_TIMEOUT_S = 300.0


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
    lib.ncclCommAbort.argtypes = [ctypes.c_void_p]
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
    """One rank of an NCCL communicator on the current CUDA device.

    Lifetimes: NCCL's ncclCommDestroy waits, with no time limit, until every CUDA graph that
    captured a collective on the communicator is destroyed. So destroy graphs (and release
    Restored loads) before closing; the communicator refuses to close while graphs it made for
    LOAD (collective_graph()) are alive, and never waits longer than `timeout` for NCCL: a
    stall becomes StallError naming the rank and the call. Use it as a context manager: leaving
    the block closes it, or aborts it (ncclCommAbort) when the block raised.

    Example:
        >>> with NcclCommunicator.from_environment() as communicator:
        ...     restored = foundry_trace.load(archive, communicator=communicator)
        ...     ...
        ...     restored.release()        # before the communicator closes
    """

    def __init__(self, rank: int, world_size: int, unique_id: bytes, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        if not 0 <= rank < world_size:
            raise NcclError(f"rank {rank} of {world_size}: a rank lies in 0..{world_size - 1}")
        # Connect every channel now: a connection made later would be made inside a capture.
        os.environ.setdefault("NCCL_RUNTIME_CONNECT", "0")
        import torch

        self.rank, self.world_size, self.timeout = rank, world_size, timeout
        self.device = torch.cuda.current_device()  # NCCL's calls run on another thread: they are told it
        self._comm = ctypes.c_void_p()
        self._graphs: set[int] = set()  # made by collective_graph() and not yet released
        self._store: object | None = None  # the rendezvous, kept while the communicator lives
        identifier = unique_id_struct(unique_id)
        self._call_limited(
            "ncclCommInitRank (waiting for every rank to join)",
            lambda: _check(library().ncclCommInitRank(ctypes.byref(self._comm), world_size, identifier, rank), "ncclCommInitRank"),
        )

    @classmethod
    def from_environment(cls, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> NcclCommunicator:
        """The rank that RANK and WORLD_SIZE name (as torchrun sets them), meeting its peers at
        MASTER_ADDR:MASTER_PORT through a TCP store that rank 0 keeps open until every rank has
        joined; a single rank needs neither. `timeout`: seconds to wait for the peers."""
        rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls(0, 1, new_unique_id(), timeout=timeout)
        from datetime import timedelta

        import torch.distributed as dist

        try:
            address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        except KeyError as missing:
            raise NcclError(f"{missing} is not set: a rank of {world_size} meets its peers at MASTER_ADDR:MASTER_PORT") from None
        limit = timedelta(seconds=timeout if timeout is not None else 86400)
        try:
            store = dist.TCPStore(address, port, world_size, rank == 0, timeout=limit)
            if rank == 0:
                store.set(STORE_KEY, new_unique_id())
            unique_id = bytes(store.get(STORE_KEY))
        except (RuntimeError, dist.DistStoreError) as error:
            raise StallError(f"rank {rank} of {world_size}: the rendezvous at {address}:{port} failed: {error}") from None
        communicator = cls(rank, world_size, unique_id, timeout=timeout)
        communicator._store = store
        try:
            communicator._joined(store)
        except BaseException:
            communicator.abort()  # a stalled rendezvous leaves no communicator (nor its GPU memory) behind
            raise
        return communicator

    def _joined(self, store) -> None:  # noqa: ANN001 - torch.distributed.TCPStore
        """Counts this rank in; rank 0, which hosts the store, waits until every rank is counted
        (so the store outlives every read of the unique id)."""
        store.add(JOINED_KEY, 1)
        if self.rank != 0:
            return
        deadline = time.monotonic() + (self.timeout if self.timeout is not None else float("inf"))
        while store.add(JOINED_KEY, 0) < self.world_size:
            if time.monotonic() > deadline:
                raise StallError(self._what(f"the rendezvous: only {store.add(JOINED_KEY, 0)} ranks joined within {self.timeout:.0f} s"))
            time.sleep(0.01)

    def _what(self, call: str) -> str:
        return f"rank {self.rank} of {self.world_size}: {call}"

    def _call_limited(self, call: str, function: Callable[[], None]) -> None:
        """Runs an NCCL call that may wait for peers under the time limit. The limit runs it on a
        thread of its own, whose CUDA device is set first: NCCL works on the calling thread's
        current device, and a new thread's is device 0 (rank 1 would join on rank 0's GPU)."""
        device = self.device

        def on_this_device() -> None:
            import torch

            torch.cuda.set_device(device)
            function()

        call_with_time_limit(self._what(call), on_this_device, self.timeout)

    def _all_reduce(self, address: int, count: int, dtype: str, stream: int) -> None:
        _check(
            library().ncclAllReduce(address, address, count, _DTYPE[dtype], _SUM, self._comm, stream),
            self._what(f"ncclAllReduce of {count} {dtype}"),
        )

    def all_reduce(self, tensor: torch.Tensor) -> None:
        import torch

        from foundry_trace.parallel.collectives import spec_of

        self._require_open()
        spec = spec_of(tensor)
        self._all_reduce(spec.address, spec.count, spec.dtype, torch.cuda.current_stream().cuda_stream)

    def collective_graph(self, spec: CollectiveSpec) -> int:
        """Captures the collective on a stream of its own (relaxed mode: LOAD's threads keep
        loading modules meanwhile) into a CUgraph; the caller destroys it, then says so with
        graph_released()."""
        self._require_open()
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
            graph = int(call(driver.cuStreamEndCapture, stream))
        finally:
            call(driver.cuStreamDestroy, stream)
        self._graphs.add(graph)
        return graph

    def graph_released(self, graph: int) -> None:
        self._graphs.discard(graph)

    def _require_open(self) -> None:
        if not self._comm:
            raise NcclError(self._what("the communicator is closed: create another"))

    def close(self) -> None:
        """Destroys the communicator. Refuses (NcclError) while graphs it made for LOAD are
        alive: release the Restored first. Raises StallError, leaving NCCL's call behind, if
        NCCL does not return within the time-out (a graph that captured a collective through
        all_reduce() is still alive somewhere)."""
        if not self._comm:
            return
        if self._graphs:
            raise NcclError(
                self._what(f"{len(self._graphs)} graphs made for LOAD still reference this communicator, and NCCL would wait "
                           "for them for ever: release the Restored (restored.release()) first, or call abort()")
            )
        comm, self._comm = self._comm, ctypes.c_void_p()
        self._call_limited(
            "ncclCommDestroy (it waits until every graph that captured a collective on it is destroyed)",
            lambda: _check(library().ncclCommDestroy(comm), self._what("ncclCommDestroy")),
        )
        self._store = None

    def abort(self) -> None:
        """Ends the communicator without waiting for peers or graphs (ncclCommAbort): the way out
        after a failure. Graphs that still hold its collectives must not be replayed."""
        if not self._comm:
            return
        comm, self._comm = self._comm, ctypes.c_void_p()
        self._graphs.clear()
        self._call_limited("ncclCommAbort", lambda: _check(library().ncclCommAbort(comm), self._what("ncclCommAbort")))
        self._store = None

    def __enter__(self) -> NcclCommunicator:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

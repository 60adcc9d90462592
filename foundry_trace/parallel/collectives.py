"""Collectives in tensor-parallel graphs, SAVEd on one GPU with no peer.

Every rank of a tensor-parallel step runs the same kernels on the same addresses (layouts are
reproducible); only the collectives involve the other ranks. So SAVE captures one rank's step
with a RecordingCommunicator: each all-reduce becomes a marker in the graph (a 4-byte memset into
a buffer of the communicator's own, whose value numbers the collective) and a CollectiveSpec on
the host. The graph walker turns markers into CollectiveNodes. LOAD asks the live communicator
(nccl.NcclCommunicator) for a graph of each collective and puts it where the marker was.

The rank-dependent state therefore never enters an archive: the communicator (NCCL's device
structures, channels, peer buffers and proxy threads) and the rank index are re-created by the
communicator in each rank, and the weight shards by the engine before the restore point.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, get_args

from cuda.bindings import driver

from foundry_trace._driver import call, current_context
from foundry_trace.archive.records import CollectiveDtype, CollectiveSpec, PeerWindowRecord
from foundry_trace.errors import TensorParallelError

if TYPE_CHECKING:
    import torch

MARKER_BYTES = 4
DTYPES = set(get_args(CollectiveDtype))


class Communicator(Protocol):
    """What a tensor-parallel engine and LOAD need from a communicator."""

    world_size: int
    rank: int

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sums `tensor` over the ranks, in place, on torch's current stream."""

    def collective_graph(self, spec: CollectiveSpec) -> int:
        """A CUgraph that performs `spec` on this communicator (the caller destroys it)."""

    def graph_released(self, graph: int) -> None:
        """The caller destroyed `graph` (from collective_graph()) and every executable built from
        it: the communicator no longer needs to outlive them."""


def spec_of(tensor: torch.Tensor) -> CollectiveSpec:
    """The in-place sum of `tensor` as a CollectiveSpec (what an all-reduce records)."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in DTYPES or not tensor.is_contiguous():
        raise TensorParallelError(
            f"all-reduce of a {dtype} tensor (contiguous: {tensor.is_contiguous()}): Foundry records "
            f"contiguous {', '.join(sorted(DTYPES))} tensors; make the tensor contiguous or cast it"
        )
    return CollectiveSpec(operation="all_reduce", reduction="sum", dtype=dtype, count=tensor.numel(), address=tensor.data_ptr())


class RecordingCommunicator:
    """`world_size` ranks, of which this process plays rank 0, with no peer: what SAVE uses.

    Outside a capture (warm-up) all_reduce does nothing: shapes, not sums, decide the kernels.
    Inside one it leaves a marker that the graph walker resolves with marker_collective()."""

    def __init__(self, world_size: int) -> None:
        if world_size < 1:
            raise TensorParallelError(f"a tensor-parallel degree of {world_size}: it must be 1 or more")
        self.world_size = world_size
        self.rank = 0
        self.specs: list[CollectiveSpec] = []
        self._index: dict[CollectiveSpec, int] = {}
        import torch

        current_context(torch.cuda.current_device())
        # Outside the Foundry allocator's range, so that it is in no layout and no archive.
        self.marker = int(call(driver.cuMemAlloc, MARKER_BYTES))
        with _lock:
            _markers[self.marker] = self

    def all_reduce(self, tensor: torch.Tensor) -> None:
        import torch

        if not torch.cuda.is_current_stream_capturing():
            return
        spec = spec_of(tensor)
        number = self._index.setdefault(spec, len(self.specs))
        if number == len(self.specs):
            self.specs.append(spec)
        stream = torch.cuda.current_stream().cuda_stream
        call(driver.cuMemsetD32Async, self.marker, number, 1, driver.CUstream(stream))

    def collective_graph(self, spec: CollectiveSpec) -> int:
        raise TensorParallelError("a RecordingCommunicator has no peer and cannot run collectives: LOAD with an NcclCommunicator")

    def graph_released(self, graph: int) -> None:
        return None  # it makes no graphs

    def close(self) -> None:
        with _lock:
            _markers.pop(self.marker, None)
        call(driver.cuMemFree, self.marker)


_markers: dict[int, RecordingCommunicator] = {}
_lock = threading.Lock()


def marker_collective(destination: int, value: int) -> tuple[CollectiveSpec, int] | None:
    """The collective a memset node stands for, with the recording's degree, if it is a marker."""
    with _lock:
        recorder = _markers.get(destination)
    if recorder is None:
        return None
    if value >= len(recorder.specs):
        raise TensorParallelError(f"collective marker {value} was never recorded: the capture is inconsistent; capture again")
    return recorder.specs[value], recorder.world_size


ARCHIVE_NAME = "tp{degree}.foundry"


def archive_path(directory: str | Path, degree: int) -> Path:
    """Where one offline run writes the archive of `degree` (tp1.foundry, tp2.foundry, ...)."""
    return Path(directory) / ARCHIVE_NAME.format(degree=degree)


def tensor_parallel_archive(directory: str | Path, ranks: int) -> Path:
    """The archive in `directory` for `ranks` ranks, which must exist."""
    path = archive_path(directory, ranks)
    if not path.is_file():
        found = sorted(p.name for p in Path(directory).glob(ARCHIVE_NAME.format(degree="*")))
        raise TensorParallelError(
            f"{directory} holds no archive for tensor parallelism {ranks} (it holds: {', '.join(found) or 'none'}): "
            f"save one with foundry bench tp --degrees {ranks} --archive {directory}"
        )
    return path


def check_communicator(
    degree: int, collectives: int, communicator: Communicator | None, path: str, peer_window: PeerWindowRecord | None = None
) -> None:
    """Refuses an archive whose tensor-parallel degree, collectives or peer window this process
    cannot serve: before LOAD claims any memory."""
    kind = "PeerCommunicator" if peer_window is not None else "NcclCommunicator"
    if communicator is None:
        if degree > 1 or collectives:
            raise TensorParallelError(
                f"{path} was saved for tensor parallelism {degree} ({collectives or 'peer all-reduce'} collectives): pass "
                f"communicator= (e.g. foundry_trace.parallel.{kind}.from_environment()) to load()"
            )
        return
    window = getattr(communicator, "window_record", None)  # a PeerCommunicator's
    if (peer_window is not None) != (window is not None) and (collectives or peer_window is not None):
        raise TensorParallelError(
            f"{path} was saved with {'peer all-reduces' if peer_window is not None else 'NCCL collectives'}, and the "
            f"communicator given is a {type(communicator).__name__}: load it with a {kind}, or save it again with this one"
        )
    if communicator.world_size != degree:
        raise TensorParallelError(
            f"{path} was saved for tensor parallelism {degree}, but the communicator has {communicator.world_size} "
            f"ranks: load the archive saved for {communicator.world_size} (foundry bench tp --degrees "
            f"{communicator.world_size} --archive DIR writes one) or run {degree} ranks"
        )
    if peer_window is not None:
        if window != peer_window:
            raise TensorParallelError(
                f"{path} was saved with the peer window at {peer_window.base:#x} (stride {peer_window.stride:#x}, buffers of "
                f"{peer_window.buffer_bytes:#x} bytes), this communicator's is at {window.base:#x} (stride {window.stride:#x}, "
                f"buffers of {window.buffer_bytes:#x} bytes): set FOUNDRY_ALLOC_PEER_BASE, FOUNDRY_ALLOC_PEER_STRIDE and "
                "buffer_bytes as in the SAVE run"
            )
        if degree > 1 and not communicator.connected:
            raise TensorParallelError(
                f"{path} needs {degree} ranks' buffers, and this communicator has no peer mapped (SAVE's local one, or "
                "closed): connect every rank with PeerCommunicator.from_environment()"
            )

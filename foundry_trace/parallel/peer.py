"""A communicator whose all-reduce is a kernel over peer memory at fixed addresses.

Every rank maps every rank's buffer at the same address (window.py), and everything that
differs between ranks (the rank, the barrier counters, the error state) lives in memory, in the
header of the rank's own buffer, never in a kernel argument. A graph that captured these
all-reduces is therefore the same on every rank: one archive, SAVEd on one GPU, is restored
unchanged by every rank, with no argument rewritten and nothing captured at LOAD.

    # SAVE, one GPU, for degree 4: every buffer local, this process plays rank 0
    communicator = PeerCommunicator.local(4)
    # each rank (RANK, WORLD_SIZE as torchrun sets them; FOUNDRY_PEER_SOCKET or path=)
    with PeerCommunicator.from_environment() as communicator:
        restored = foundry_trace.load(archive, communicator=communicator)
        ...
        restored.release()

Ranks may share a GPU (N processes on one device) or each have their own; a buffer on another
GPU is mapped only where the two GPUs have peer access. A rank that waits longer than
`stall_timeout` for a peer at a barrier records the error on the device and stops waiting;
check() (and synchronize()) then raise StallError naming the rank, the collective and the
peer. After a stall the communicator is unusable: close it and stop every rank.
"""

from __future__ import annotations

import ctypes
import os
import struct
import tempfile
import weakref
from typing import TYPE_CHECKING, Protocol

from cuda.bindings import driver

import foundry_alloc
from foundry_alloc.config import environment_settings
from foundry_alloc.profiling import annotate
from foundry_trace._driver import call, current_context
from foundry_trace.archive.records import ELEMENT_BYTES, CollectiveSpec, PeerWindowRecord
from foundry_trace.errors import PeerError, StallError, TensorParallelError
from foundry_trace.parallel.peer_kernels import Kernels, plan
from foundry_trace.parallel.rendezvous import RankInfo, Rendezvous, close_fds
from foundry_trace.parallel.time_limit import call_with_time_limit
from foundry_trace.parallel.window import DATA_OFFSET, MAX_RANKS, PACK_BYTES, MappedWindow, WindowLayout

if TYPE_CHECKING:
    import torch

ENV_SOCKET = "FOUNDRY_PEER_SOCKET"
DEFAULT_BUFFER_BYTES = 64 << 20  # two staging areas of about 32 MiB: a decode step's all-reduce at any batch
DEFAULT_TIMEOUT_S = 300.0  # the rendezvous and every agreement between ranks
DEFAULT_STALL_S = 30.0  # a barrier's longest wait on the device
MAGIC = 0x3152454550444E46  # peer_all_reduce.cu: "FNDPEER1"
# peer_all_reduce.cu's Header, up to the error fields: magic, rank, world, stride, capacity,
# timeout_ns, host_error, sequence, done_blocks, solo
_HEADER = struct.Struct("<QIIQQQQQII")
_ERROR = struct.Struct("<IIIIQQ")  # ErrorRecord: error, peer, kind, phase, sequence, packs
_KINDS = {1: "one-shot", 2: "two-shot"}
_DTYPES = {1: "bfloat16", 2: "float16", 3: "float32"}  # peer_all_reduce.cu: Bf16::code, F16::code, F32::code


class _Load(Protocol):
    """What the communicator needs of a LOAD it holds (a Restored, from the layer above)."""

    @property
    def released(self) -> bool: ...


def default_layout(buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> WindowLayout:
    """The window of the allocator's configuration (installed, else FOUNDRY_ALLOC_PEER_*)."""
    config = foundry_alloc.installed_config()
    if config is None:
        config = foundry_alloc.AllocatorConfig.create(**environment_settings())
    return WindowLayout(config.peer_window_base, config.peer_stride, buffer_bytes)


def socket_path(path: str | None = None) -> str:
    """The rendezvous socket: `path`, else FOUNDRY_PEER_SOCKET, else one named after
    MASTER_PORT (torchrun sets it) in the temporary folder."""
    if path:
        return path
    if os.environ.get(ENV_SOCKET, "").strip():
        return os.environ[ENV_SOCKET].strip()
    if os.environ.get("MASTER_PORT", "").strip():
        return os.path.join(tempfile.gettempdir(), f"foundry-peer-{os.environ['MASTER_PORT'].strip()}.sock")
    raise PeerError(f"no rendezvous socket: pass path=, or set {ENV_SOCKET} (or MASTER_PORT, as torchrun does) alike for every rank")


def _device_uuid(device: int) -> bytes:
    return bytes(call(driver.cuDeviceGetUuid, call(driver.cuDeviceGet, device)).bytes)


class PeerCommunicator:
    """One rank of a peer-memory communicator on the current CUDA device. Create it with
    connect() / from_environment() (every rank, before the engine builds its state) or local()
    (SAVE); use it as a context manager, or close() it after releasing every Restored that used
    it (close() unmaps every buffer: a graph replayed after it would fault)."""

    def __init__(self, rank: int, world_size: int, layout: WindowLayout, *, solo: bool, stall_timeout: float, timeout: float) -> None:
        """Use connect(), from_environment() or local()."""
        if not 1 <= world_size <= MAX_RANKS or not 0 <= rank < world_size:
            raise PeerError(f"rank {rank} of {world_size}: the peer communicator serves 1 to {MAX_RANKS} ranks, rank 0 to world size - 1")
        if stall_timeout <= 0 or timeout <= 0:
            raise PeerError(f"stall_timeout={stall_timeout}, timeout={timeout}: give positive numbers of seconds")
        import torch

        self.rank, self.world_size, self.layout = rank, world_size, layout
        self.solo, self.stall_timeout, self.timeout = solo, stall_timeout, timeout
        self.device = torch.cuda.current_device()
        current_context(self.device)
        self.window = MappedWindow(layout, self.device)
        self._rendezvous: Rendezvous | None = None
        self._kernels: Kernels | None = None
        self._host_error = 0
        self._closed = False
        self._loads: weakref.WeakSet[_Load] = weakref.WeakSet()

    def _what(self, phase: str) -> str:
        return f"rank {self.rank} of {self.world_size}: {phase}"

    @classmethod
    def connect(
        cls, rank: int, world_size: int, path: str, *, buffer_bytes: int = DEFAULT_BUFFER_BYTES, timeout: float = DEFAULT_TIMEOUT_S,
        stall_timeout: float = DEFAULT_STALL_S,
    ) -> PeerCommunicator:
        """Meets the other ranks at the Unix socket `path` (rank 0 hosts it), maps every rank's
        buffer in the window, and returns once every rank has. Raises StallError naming the
        rank that did not come within `timeout`, PeerError for a peer that does not fit; either
        leaves nothing mapped or reserved."""
        with annotate("peer.connect"):
            communicator = cls(rank, world_size, default_layout(buffer_bytes), solo=False, stall_timeout=stall_timeout, timeout=timeout)
            try:
                communicator._join(path)
            except BaseException:
                communicator._teardown(quietly=True)
                raise
        return communicator

    @classmethod
    def from_environment(
        cls, *, path: str | None = None, buffer_bytes: int = DEFAULT_BUFFER_BYTES, timeout: float = DEFAULT_TIMEOUT_S,
        stall_timeout: float = DEFAULT_STALL_S,
    ) -> PeerCommunicator:
        """The rank that RANK and WORLD_SIZE name (as torchrun sets them), meeting its peers at
        socket_path(path)."""
        try:
            rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError:
            raise PeerError(f"RANK={os.environ.get('RANK')!r}, WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: both must be integers") from None
        if world_size == 1:
            return cls.local(1, buffer_bytes=buffer_bytes, stall_timeout=stall_timeout)
        return cls.connect(rank, world_size, socket_path(path), buffer_bytes=buffer_bytes, timeout=timeout, stall_timeout=stall_timeout)

    @classmethod
    def local(cls, world_size: int, *, buffer_bytes: int = DEFAULT_BUFFER_BYTES, stall_timeout: float = DEFAULT_STALL_S) -> PeerCommunicator:
        """`world_size` ranks' buffers, all on this GPU, this process playing rank 0 with no
        peer: what SAVE captures with. Its barriers do not wait (the header says so, not the
        kernels' arguments), so eager warm-up and any replay in the SAVE process run; the sums
        then hold this rank's share only. A LOAD refuses it for a degree above 1."""
        with annotate("peer.local"):
            communicator = cls(0, world_size, default_layout(buffer_bytes), solo=True, stall_timeout=stall_timeout, timeout=DEFAULT_TIMEOUT_S)
            try:
                window, layout = communicator.window, communicator.layout
                handles = [window.create_buffer(exportable=False) for _ in range(world_size)]
                for rank, handle in enumerate(handles):
                    window.map(handle, layout.slot(rank))
                    call(driver.cuMemsetD8, layout.slot(rank), 0, layout.buffer_bytes)
                window.map(handles[0], layout.base)
                communicator._write_header()
            except BaseException:
                communicator._teardown(quietly=True)
                raise
        return communicator

    def _join(self, path: str) -> None:
        window, layout = self.window, self.layout
        own = window.create_buffer(exportable=True)
        fd = window.export(own)
        me = RankInfo(self.rank, self.world_size, os.getpid(), layout.base, layout.stride, layout.buffer_bytes, _device_uuid(self.device))
        try:
            self._rendezvous, infos, fds = Rendezvous.join(path, me, fd, self.timeout)
        finally:
            os.close(fd)
        try:
            for rank, info in enumerate(infos):
                handle = own if rank == self.rank else self._import(info, fds[rank])
                window.map(handle, layout.slot(rank))
            window.map(own, layout.base)
        finally:
            close_fds(fds)
        call(driver.cuMemsetD8, layout.base, 0, DATA_OFFSET)
        self._write_header()
        self.agree("the window", b"")  # every header written before any rank's first barrier

    def _import(self, info: RankInfo, fd: int) -> int:
        """A peer's buffer, after checking that this GPU can reach the one it lives on."""
        if info.device_uuid != _device_uuid(self.device):
            owner = next((d for d in range(int(call(driver.cuDeviceGetCount))) if _device_uuid(d) == info.device_uuid), None)
            if owner is None:
                raise PeerError(self._what(f"rank {info.rank}'s buffer lives on a GPU this process cannot see: make every rank's GPU visible to every rank"))
            if not call(driver.cuDeviceCanAccessPeer, call(driver.cuDeviceGet, self.device), call(driver.cuDeviceGet, owner)):
                raise PeerError(self._what(f"this GPU ({self.device}) has no peer access to rank {info.rank}'s GPU ({owner}): use GPUs linked by NVLink or PCIe peer-to-peer, or NCCL"))
        return self.window.import_buffer(fd, info.rank)

    def _write_header(self) -> None:
        host, device = 0, 0
        if not self.solo:
            host = int(call(driver.cuMemHostAlloc, _ERROR.size, driver.CU_MEMHOSTALLOC_DEVICEMAP))
            self._host_error = host
            ctypes.memset(host, 0, _ERROR.size)
            device = int(call(driver.cuMemHostGetDevicePointer, host, 0))
        header = _HEADER.pack(
            MAGIC, self.rank, self.world_size, self.layout.stride, self.layout.capacity, int(self.stall_timeout * 1e9), device, 0, 0,
            int(self.solo),
        )
        call(driver.cuMemcpyHtoD, self.layout.base, header, len(header))

    @property
    def window_record(self) -> PeerWindowRecord:
        """The window as an archive records it."""
        return PeerWindowRecord(base=self.layout.base, stride=self.layout.stride, buffer_bytes=self.layout.buffer_bytes)

    @property
    def connected(self) -> bool:
        """Every rank's buffer is mapped here from the rank itself (not a local SAVE stand-in)."""
        return not self._closed and not self.solo

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sums `tensor` over the ranks, in place, on torch's current stream (captured as a
        plain kernel launch). The tensor: contiguous bfloat16, float16 or float32, at an
        address and of a size that are multiples of 16 bytes, at most the buffer's capacity."""
        import torch

        from foundry_trace.parallel.collectives import spec_of

        self._require_usable()
        spec = spec_of(tensor)
        if spec.address % PACK_BYTES or spec.size_bytes % PACK_BYTES:
            raise TensorParallelError(
                self._what(f"an all-reduce of {spec.size_bytes} bytes at {spec.address:#x}: the peer all-reduce moves 16-byte packs; "
                           "give it a tensor whose address and size are multiples of 16 bytes")
            )
        if spec.size_bytes > self.layout.capacity:
            raise TensorParallelError(
                self._what(f"an all-reduce of {spec.size_bytes} bytes exceeds the peer buffer's {self.layout.capacity} per collective: "
                           "pass a larger buffer_bytes (within FOUNDRY_ALLOC_PEER_STRIDE), the same to SAVE and every rank")
            )
        if self.world_size == 1 or spec.count == 0:
            return
        if self._kernels is None:
            self._kernels = Kernels(self.device, self)
        self._kernels.launch(plan(spec.dtype, spec.count, self.world_size), spec.address, self.layout.base, torch.cuda.current_stream().cuda_stream)

    def check(self) -> None:
        """Raises StallError if a barrier of this rank waited past `stall_timeout` (read from
        host memory the kernels write: no CUDA call, nothing waited for). Call it after
        synchronizing, or use synchronize()."""
        if not self._host_error:
            return
        error, peer, kind, phase, sequence, packs = _ERROR.unpack(ctypes.string_at(self._host_error, _ERROR.size))
        if error:
            dtype = _DTYPES.get(kind >> 8, "?")
            elements = packs * PACK_BYTES // ELEMENT_BYTES[dtype] if dtype in ELEMENT_BYTES else "?"
            barrier = "first" if phase == 0 else "second"
            raise StallError(
                self._what(f"the all-reduce ({_KINDS.get(kind & 0xFF, '?')}, {elements} {dtype} elements), collective {sequence} "
                           f"of this communicator, waited more than {self.stall_timeout:g} s for rank {peer} at its {barrier} barrier: "
                           "that rank stopped or runs other collectives; this communicator cannot be used any more: close it and "
                           "stop every rank")
            )

    def synchronize(self) -> None:
        """Waits for torch's current stream, then check(): a replay that stalled on a missing
        peer ends within `stall_timeout` and raises here, never hangs."""
        import torch

        torch.cuda.current_stream().synchronize()
        self.check()

    def agree(self, phase: str, payload: bytes) -> list[bytes]:
        """Every rank's `payload` for `phase` (host side, through the rendezvous), by rank; a
        rank that left or does not come within `timeout` raises StallError on every rank."""
        self._require_usable()
        if self._rendezvous is None:
            if self.world_size > 1:
                raise PeerError(self._what(f"{phase}: a local communicator (SAVE's) has no peers to agree with; connect() every rank"))
            return [payload]
        with annotate(f"peer.agree {phase}"):
            return self._rendezvous.exchange(phase, payload, self.timeout)

    def hold(self, restored: _Load) -> None:
        """LOAD registers a load whose graphs address the window: close() refuses while it lives."""
        self._loads.add(restored)

    def collective_graph(self, spec: CollectiveSpec) -> int:
        raise TensorParallelError(
            "the peer communicator runs collectives as plain kernels inside the graphs: an archive with collective nodes was "
            "saved with NCCL's recorder; load it with an NcclCommunicator, or save it again with a PeerCommunicator"
        )

    def graph_released(self, graph: int) -> None:
        return None  # it makes no graphs

    def _require_usable(self) -> None:
        if self._closed:
            raise PeerError(self._what("the communicator is closed: create another"))
        self.check()

    def close(self) -> None:
        """Unmaps every buffer and frees the window, the kernels and the rendezvous. Refuses
        (PeerError) while a Restored loaded with it is not released: its graphs address the
        window, and a replay after the unmap would fault."""
        if self._closed:
            return
        live = [restored for restored in self._loads if not restored.released]
        if live:
            raise PeerError(
                self._what(f"{len(live)} restored load(s) still replay graphs that address the peer window: release them first "
                           "(restored.release()), or abort()")
            )
        import torch

        torch.cuda.synchronize(self.device)
        self._teardown()

    def _teardown(self, *, quietly: bool = False) -> None:
        """Every step runs, whatever fails; the first failure is raised after, unless `quietly`
        (on the way out of another failure, which must not be masked)."""
        self._closed = True
        failures = []
        for step in (self._unload, self.window.close, self._free_host_error, self._leave):
            try:
                step()
            except Exception as error:  # noqa: BLE001 - handed on below
                failures.append(error)
        if failures and not quietly:
            raise failures[0]

    def _unload(self) -> None:
        if self._kernels is not None:
            self._kernels.unload()
            self._kernels = None

    def _free_host_error(self) -> None:
        if self._host_error:
            host, self._host_error = self._host_error, 0
            call(driver.cuMemFreeHost, host)

    def _leave(self) -> None:
        if self._rendezvous is not None:
            rendezvous, self._rendezvous = self._rendezvous, None
            rendezvous.close()

    def abort(self, reason: str) -> None:
        """Tells every peer this rank stops (they raise StallError at their next agreement),
        waits for this rank's kernels no longer than the stall time-out (a barrier still
        waiting ends by then), and tears down. Where the device does not finish in time, the
        window stays mapped until the process exits, rather than unmapped under a kernel."""
        if self._closed:
            return
        if self._rendezvous is not None:
            self._rendezvous.abort(self._what(reason))
        import torch

        try:
            call_with_time_limit(self._what("abort: waiting for this rank's kernels"), lambda: torch.cuda.synchronize(self.device),
                                 self.stall_timeout + 5)
        except Exception:  # noqa: BLE001 - a stalled or failed device: leave the mappings to the process's exit
            self._closed = True
            self._leave()
            return
        self._teardown(quietly=True)

    def __enter__(self) -> PeerCommunicator:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort(f"stopped by {kind.__name__}: {error}")

"""The peer window: one virtual-address range at a fixed base, the same in every rank's process,
where every rank's buffer is mapped at the same address.

    slot 0   base                    this process's own buffer, mapped a second time
    slot 1   base + stride           rank 0's buffer
    slot r+1 base + (r + 1) * stride rank r's buffer

A kernel given the window's base thus reaches its own rank's header (slot 0) and every peer's
buffer by arithmetic alone, with arguments that are equal on every rank: one archive serves
every rank unchanged. The range is reserved whole for MAX_RANKS ranks at the base, whatever the
degree (the driver honours the address hint of a large reservation, not of a small one).

Every buffer starts with the header the kernels read (peer_all_reduce.cu: rank, world size,
stride, staging capacity, time limit, sequence, error), then the barrier flags, then two staging
areas of `capacity` bytes each.
"""

from __future__ import annotations

from dataclasses import dataclass

from cuda.bindings import driver

from foundry_alloc.config import PEER_SLOTS
from foundry_trace._driver import call
from foundry_trace.errors import PeerError

SLOTS = PEER_SLOTS  # the process's own buffer, then one a rank
MAX_RANKS = SLOTS - 1  # peer_all_reduce.cu's flag arrays hold 8 ranks: tensor parallelism within one node
DATA_OFFSET = 65536  # peer_all_reduce.cu: the header, then flags[2 phases][64 blocks][8 ranks], then staging
PACK_BYTES = 16
GRANULE = 2 << 20

_FD = driver.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR


@dataclass(frozen=True)
class WindowLayout:
    """Where the window lies and how large each rank's buffer is: equal in SAVE and in every
    rank's LOAD, or the saved kernels' arguments point elsewhere (load() checks it)."""

    base: int
    stride: int
    buffer_bytes: int

    def __post_init__(self) -> None:
        if self.base % GRANULE or self.stride % GRANULE or self.buffer_bytes % GRANULE:
            raise PeerError(
                f"peer window base {self.base:#x}, stride {self.stride:#x}, buffer {self.buffer_bytes:#x}: each must be a "
                "multiple of 2 MiB (the mapping granularity)"
            )
        if not DATA_OFFSET + 2 * PACK_BYTES <= self.buffer_bytes <= self.stride:
            raise PeerError(
                f"a peer buffer of {self.buffer_bytes:#x} bytes does not fit a slot of {self.stride:#x}: give a buffer "
                f"between {GRANULE:#x} bytes and the stride (FOUNDRY_ALLOC_PEER_STRIDE)"
            )
        if self.base + self.size > 1 << 47:
            raise PeerError(f"the peer window [{self.base:#x}, +{self.size:#x}) ends past the user address space: lower its base")

    @property
    def size(self) -> int:
        return SLOTS * self.stride

    @property
    def capacity(self) -> int:
        """Bytes one collective can stage: half of what follows the header and flags."""
        return (self.buffer_bytes - DATA_OFFSET) // 2 // PACK_BYTES * PACK_BYTES

    def slot(self, rank: int) -> int:
        """Address of rank `rank`'s buffer in every process."""
        if not 0 <= rank < MAX_RANKS:
            raise PeerError(f"rank {rank}: the peer window holds ranks 0..{MAX_RANKS - 1}")
        return self.base + (rank + 1) * self.stride


class MappedWindow:
    """The window's reservation, the buffers this process created or imported, and their
    mappings. close() undoes all of it in reverse, also after a partial setup: a failed
    communicator leaves no reservation, mapping or handle behind."""

    def __init__(self, layout: WindowLayout, device: int) -> None:
        self.layout, self.device = layout, device
        self._reserved = False
        self._handles: list[int] = []
        self._mapped: list[int] = []
        address = int(call(driver.cuMemAddressReserve, layout.size, 0, layout.base, 0))
        if address != layout.base:
            call(driver.cuMemAddressFree, address, layout.size)
            raise PeerError(
                f"the driver did not give the peer window its fixed base {layout.base:#x} (it offered {address:#x}): something "
                "else holds that range; choose another base with FOUNDRY_ALLOC_PEER_BASE, the same for SAVE and every rank"
            )
        self._reserved = True

    def _properties(self, exportable: bool) -> driver.CUmemAllocationProp:
        properties = driver.CUmemAllocationProp()
        properties.type = driver.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        properties.location.type = driver.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        properties.location.id = self.device
        if exportable:
            properties.requestedHandleTypes = _FD
        return properties

    def create_buffer(self, exportable: bool) -> int:
        """A new physical buffer on this device (exportable: as a POSIX file descriptor)."""
        handle = int(call(driver.cuMemCreate, self.layout.buffer_bytes, self._properties(exportable), 0))
        self._handles.append(handle)
        return handle

    def export(self, handle: int) -> int:
        """A file descriptor for `handle` (the caller closes it)."""
        return int(call(driver.cuMemExportToShareableHandle, driver.CUmemGenericAllocationHandle(handle), _FD, 0))

    def import_buffer(self, fd: int, rank: int) -> int:
        """The buffer behind a peer's file descriptor."""
        try:
            handle = int(call(driver.cuMemImportFromShareableHandle, fd, _FD))
        except Exception as error:
            raise PeerError(f"rank {rank}'s buffer could not be imported ({error}): the descriptor it sent is not a CUDA buffer") from None
        self._handles.append(handle)
        return handle

    def map(self, handle: int, address: int) -> None:
        """Maps `handle` at `address` (inside the window), readable and writable by this device."""
        call(driver.cuMemMap, address, self.layout.buffer_bytes, 0, driver.CUmemGenericAllocationHandle(handle), 0)
        self._mapped.append(address)
        access = driver.CUmemAccessDesc()
        access.location.type = driver.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        access.location.id = self.device
        access.flags = driver.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        call(driver.cuMemSetAccess, address, self.layout.buffer_bytes, [access], 1)

    def close(self) -> None:
        """Unmaps, releases and frees everything, in reverse order; idempotent."""
        errors = []
        for address in reversed(self._mapped):
            errors.append(driver.cuMemUnmap(address, self.layout.buffer_bytes)[0])
        self._mapped.clear()
        for handle in reversed(self._handles):
            errors.append(driver.cuMemRelease(driver.CUmemGenericAllocationHandle(handle))[0])
        self._handles.clear()
        if self._reserved:
            errors.append(driver.cuMemAddressFree(self.layout.base, self.layout.size)[0])
            self._reserved = False
        failed = [e for e in errors if e != driver.CUresult.CUDA_SUCCESS]
        if failed:
            raise PeerError(f"releasing the peer window failed ({getattr(failed[0], 'name', failed[0])}): the CUDA context may be gone")


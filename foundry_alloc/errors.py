"""Every error foundry_alloc raises, in one place. Each message says what is wrong and how to fix it."""

from __future__ import annotations


class FoundryAllocError(Exception):
    """Base class of the allocator's errors."""


class ConfigError(FoundryAllocError, ValueError):
    """A setting (argument or FOUNDRY_ALLOC_* variable) has a value the allocator cannot use."""


class NativeLibraryError(FoundryAllocError, ImportError):
    """The compiled allocator library is missing or does not match this Python package."""


class CudaUnavailableError(FoundryAllocError, RuntimeError):
    """The allocator was asked for on a PyTorch build or machine without CUDA."""


class AllocatorAlreadyInitializedError(FoundryAllocError, RuntimeError):
    """PyTorch's CUDA allocator was initialized before foundry_alloc.install() could replace it."""


class AlreadyInstalledError(FoundryAllocError, RuntimeError):
    """install() was called again with a different configuration."""


class NotInstalledError(FoundryAllocError, RuntimeError):
    """A query that needs the installed allocator ran before foundry_alloc.install()."""


class ReservationError(FoundryAllocError, RuntimeError):
    """The fixed virtual-address range cannot be reserved at its base."""


class AllocatorOutOfMemoryError(FoundryAllocError, MemoryError):
    """The device (or an arena's slice of the range) has no room for a request."""


class DriverError(FoundryAllocError, RuntimeError):
    """A CUDA driver call failed for a reason other than memory."""


class InvalidRequestError(FoundryAllocError, ValueError):
    """A request the allocator cannot serve: unknown arena, device out of range, bad pointer."""


class LayoutFormatError(FoundryAllocError, ValueError):
    """A layout file is not a valid Foundry layout."""

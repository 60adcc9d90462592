"""foundry_alloc: a deterministic CUDA allocator for PyTorch.

Every block lives in one fixed virtual-address range, placed by a pure function of the sequence of
requests, so a process that repeats the same allocations gets the same addresses and CUDA graphs
captured in one process stay valid in another.
"""

from .allocator import NativeAllocator
from .arenas import (
    ARENA_NAME_PATTERN,
    BUILTIN_ARENAS,
    ENGINE,
    GRAPH,
    MAX_ARENAS,
    TRANSIENT,
    arena,
    arena_names,
    current_arena,
)
from .config import DEFAULT_BASE, DEFAULT_SIZE, ENVIRONMENT_VARIABLES, AllocatorConfig
from .errors import (
    AllocatorAlreadyInitializedError,
    AllocatorOutOfMemoryError,
    AlreadyInstalledError,
    ConfigError,
    CudaUnavailableError,
    DriverError,
    FoundryAllocError,
    InvalidRequestError,
    LayoutFormatError,
    NativeLibraryError,
    NotInstalledError,
    ReservationError,
)
from .install import (
    empty_cache,
    fingerprint,
    install,
    installed,
    installed_config,
    layout,
    mappings,
    reserve,
    reset_peak_stats,
    stats,
)
from .layout import Allocation, Layout, LayoutDiff, diff_layouts
from .stats import AllocatorStats, ArenaStats

__all__ = [
    "ARENA_NAME_PATTERN",
    "BUILTIN_ARENAS",
    "DEFAULT_BASE",
    "DEFAULT_SIZE",
    "ENGINE",
    "ENVIRONMENT_VARIABLES",
    "GRAPH",
    "MAX_ARENAS",
    "TRANSIENT",
    "Allocation",
    "AllocatorAlreadyInitializedError",
    "AllocatorConfig",
    "AllocatorOutOfMemoryError",
    "AllocatorStats",
    "AlreadyInstalledError",
    "ArenaStats",
    "ConfigError",
    "CudaUnavailableError",
    "DriverError",
    "FoundryAllocError",
    "InvalidRequestError",
    "Layout",
    "LayoutDiff",
    "LayoutFormatError",
    "NativeAllocator",
    "NativeLibraryError",
    "NotInstalledError",
    "ReservationError",
    "arena",
    "arena_names",
    "current_arena",
    "diff_layouts",
    "empty_cache",
    "fingerprint",
    "install",
    "installed",
    "installed_config",
    "layout",
    "mappings",
    "reserve",
    "reset_peak_stats",
    "stats",
]

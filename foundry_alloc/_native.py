"""ctypes bindings of the compiled allocator core (foundry_alloc/csrc, built by the package build)."""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
from pathlib import Path

from .errors import (
    AllocatorOutOfMemoryError,
    DriverError,
    FoundryAllocError,
    InvalidRequestError,
    NativeLibraryError,
    ReservationError,
)

MAX_ARENAS = 8
LIVE_BLOCKS, MAPPINGS = 0, 1  # what fa_layout lists
LIBRARY_STEM = "_libfoundry_alloc"
ALLOC_SYMBOL = "foundry_malloc"
FREE_SYMBOL = "foundry_free"

# Status codes of csrc/status.hpp.
OK, OUT_OF_MEMORY, OUT_OF_ADDRESS_SPACE, RESERVATION_FAILED, DRIVER_ERROR, INVALID_ARGUMENT, UNKNOWN_POINTER = range(7)
_ERROR_FOR_STATUS: dict[int, type[FoundryAllocError]] = {
    OUT_OF_MEMORY: AllocatorOutOfMemoryError,
    OUT_OF_ADDRESS_SPACE: AllocatorOutOfMemoryError,
    RESERVATION_FAILED: ReservationError,
    DRIVER_ERROR: DriverError,
    INVALID_ARGUMENT: InvalidRequestError,
    UNKNOWN_POINTER: InvalidRequestError,
}


class BlockRecord(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("requested", ctypes.c_uint64),
        ("sequence", ctypes.c_uint64),
        ("arena", ctypes.c_int32),
        ("reserved_", ctypes.c_int32),
    ]


class ArenaCounters(ctypes.Structure):
    _fields_ = [
        ("live_bytes", ctypes.c_uint64),
        ("requested_bytes", ctypes.c_uint64),
        ("live_blocks", ctypes.c_uint64),
        ("peak_live_bytes", ctypes.c_uint64),
        ("mapped_bytes", ctypes.c_uint64),
        ("allocations", ctypes.c_uint64),
        ("frees", ctypes.c_uint64),
    ]


class SpaceStats(ctypes.Structure):
    _fields_ = [
        ("base", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("granularity", ctypes.c_uint64),
        ("mapped_bytes", ctypes.c_uint64),
        ("peak_mapped_bytes", ctypes.c_uint64),
        ("live_bytes", ctypes.c_uint64),
        ("peak_live_bytes", ctypes.c_uint64),
        ("live_blocks", ctypes.c_uint64),
        ("arena_size", ctypes.c_uint64),
        ("arenas", ArenaCounters * MAX_ARENAS),
        ("small_span", ctypes.c_uint64 * MAX_ARENAS),
        ("large_span", ctypes.c_uint64 * MAX_ARENAS),
    ]


class HostCounters(ctypes.Structure):
    _fields_ = [
        ("mapped_bytes", ctypes.c_uint64),
        ("map_calls", ctypes.c_uint64),
        ("reserved_ranges", ctypes.c_uint64),
        ("orderings", ctypes.c_uint64),  # cross-stream orderings so far
        ("orderings_kept", ctypes.c_uint64),  # of them, the most recent ones orderings() gives
    ]


def compiled_library(package: Path, stem: str, what: str, sources: str) -> Path:
    """Where the package build put a compiled library (also used by foundry_trace's restore loop)."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = package / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    raise NativeLibraryError(
        f"the compiled {what} ({stem}*.so) is missing from {package}: install the package with "
        f"`pip install .` (or `pip install -e .`) so that its build compiles {sources}"
    )


def library_path() -> Path:
    return compiled_library(Path(__file__).resolve().parent, LIBRARY_STEM, "allocator", "foundry_alloc/csrc")


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "fa_new_cuda": (ctypes.c_void_p, [ctypes.c_uint64, ctypes.c_uint64]),
    "fa_new_host": (ctypes.c_void_p, [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64]),
    "fa_delete": (ctypes.c_int, [ctypes.c_void_p]),
    "fa_allocate": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)],
    ),
    "fa_release": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64]),
    "fa_claim": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int]),
    "fa_reserve": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "fa_trim": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint64)]),
    "fa_layout": (
        ctypes.c_int,
        [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(BlockRecord),
            ctypes.c_uint64,
            ctypes.POINTER(ctypes.c_uint64),
        ],
    ),
    "fa_stats": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(SpaceStats)]),
    "fa_reset_peaks": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "fa_last_error": (ctypes.c_char_p, []),
    "fa_select_arena": (ctypes.c_int, [ctypes.c_int]),
    "fa_selected_arena": (ctypes.c_int, []),
    "fa_set_arena_name": (None, [ctypes.c_int, ctypes.c_char_p]),
    "fa_suggest_base": (ctypes.c_uint64, [ctypes.c_uint64]),
    "fa_sizeof_stats": (ctypes.c_uint64, []),
    "fa_sizeof_block": (ctypes.c_uint64, []),
    "fa_host_set_capturing": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]),
    "fa_host_occupy": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]),
    "fa_host_counters": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(HostCounters)]),
    "fa_host_orderings": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint64]),
    "fa_install": (None, [ctypes.c_void_p]),
    "fa_torch_oom_available": (ctypes.c_int, []),
}


@functools.cache
def library() -> ctypes.CDLL:
    """Loads the core once and declares every entry point's signature."""
    path = library_path()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        raise NativeLibraryError(f"cannot load {path}: {error}; reinstall the package") from None
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            function = getattr(lib, name)
        except AttributeError:
            raise NativeLibraryError(f"{path} lacks {name}: it is from another version; reinstall the package") from None
        function.restype = restype
        function.argtypes = argtypes
    if lib.fa_sizeof_stats() != ctypes.sizeof(SpaceStats) or lib.fa_sizeof_block() != ctypes.sizeof(BlockRecord):
        raise NativeLibraryError(f"{path} was built from other sources than this package: reinstall it")
    return lib


def check(status: int) -> None:
    """Raises the error class that matches a core status, with the core's message."""
    if status == OK:
        return
    message = (library().fa_last_error() or b"").decode(errors="replace")
    raise _ERROR_FOR_STATUS.get(status, DriverError)(message)

"""Installing the allocator into PyTorch, and the process-wide queries on the installed one."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable

from . import _native
from .address_space import check_range_free
from .allocator import NativeAllocator
from .arenas import GRAPH
from .config import ENV_ENABLE, AllocatorConfig, requested_config
from .errors import (
    AllocatorAlreadyInitializedError,
    AlreadyInstalledError,
    CudaUnavailableError,
    NotInstalledError,
)
from .layout import Layout
from .profiling import annotate
from .stats import AllocatorStats

_lock = threading.Lock()
_installed: tuple[AllocatorConfig, NativeAllocator] | None = None


def install(
    config: AllocatorConfig | None = None,
    *,
    base: int | None = None,
    size: int | None = None,
    verbose: bool | None = None,
) -> NativeAllocator:
    """Makes Foundry PyTorch's CUDA allocator (through torch.cuda.memory.change_current_allocator).

    Call it before the first CUDA tensor exists, or set FOUNDRY_ALLOC=1 to have it done when the
    program imports torch. The range is reserved at each device's first allocation (or by
    reserve()).

    Args:
        config: the whole configuration; FOUNDRY_ALLOC_* variables are then not read (a warning
            names any that is set, since the caller may have expected it to apply).
        base, size, verbose: single settings. Without `config`, each one not given comes from
            FOUNDRY_ALLOC_BASE / FOUNDRY_ALLOC_SIZE / FOUNDRY_ALLOC_VERBOSE where set (whether
            or not FOUNDRY_ALLOC is), else from the defaults: the arguments win.

    Returns:
        The installed allocator. Installing again with an equal configuration returns it again;
        a different one raises AlreadyInstalledError.

    Raises:
        ConfigError (an unusable argument or variable, named), AllocatorAlreadyInitializedError
        (CUDA memory exists already), ReservationError (the range is taken), CudaUnavailableError.

    Example:
        >>> import foundry_alloc
        >>> allocator = foundry_alloc.install(base=0x200000000000, size=4 << 40)
        >>> import torch; torch.empty(1, device="cuda").data_ptr() >= 0x200000000000
        True
    """
    global _installed
    config = requested_config(config, base=base, size=size, verbose=verbose)
    with _lock, annotate("alloc.install"):
        if _installed is not None:
            if _installed[0] == config:
                return _installed[1]
            raise AlreadyInstalledError(
                f"the allocator is already installed with base {_installed[0].base:#x} and size "
                f"{_installed[0].size:#x}; a process has one allocator: pass the same configuration or none"
            )
        torch = _import_cuda_torch()
        if torch.cuda.is_initialized():
            raise _already_initialized()
        check_range_free(config)
        allocator = NativeAllocator.cuda(config.base, config.size)
        pluggable = torch.cuda.memory.CUDAPluggableAllocator(
            str(_native.library_path()), _native.ALLOC_SYMBOL, _native.FREE_SYMBOL
        )
        _native.library().fa_install(allocator.handle)
        try:
            torch.cuda.memory.change_current_allocator(pluggable)
        except RuntimeError as error:
            _native.library().fa_install(None)
            allocator.close()
            if "already initialized" in str(error):
                raise _already_initialized() from None
            raise
        _installed = (config, allocator)
    if config.verbose:
        print(
            f"foundry_alloc: installed, range {config.base:#x} + {config.size:#x} bytes per device",
            file=sys.stderr,
        )
    return allocator


def _import_cuda_torch():  # noqa: ANN202 - the torch module
    import torch

    if torch.version.cuda is None or not hasattr(torch._C, "_cuda_customAllocator"):
        raise CudaUnavailableError(
            f"this PyTorch ({torch.__version__}) is built without CUDA, so it has no CUDA allocator to "
            f"replace: install a CUDA build of torch, or unset {ENV_ENABLE}"
        )
    return torch


def _already_initialized() -> AllocatorAlreadyInitializedError:
    return AllocatorAlreadyInitializedError(
        "PyTorch's CUDA allocator is already initialized (CUDA was used before foundry_alloc.install()), "
        "and PyTorch cannot swap it any more: call install() before the first CUDA tensor is created, "
        f"or set {ENV_ENABLE}=1 so that it is installed when the program imports torch"
    )


def installed() -> NativeAllocator | None:
    """The allocator install() put in place, or None before it (LOAD uses it to claim memory)."""
    return _installed[1] if _installed is not None else None


def installed_config() -> AllocatorConfig | None:
    """The configuration of the installed allocator (its range), or None before install()."""
    return _installed[0] if _installed is not None else None


def _require() -> NativeAllocator:
    if _installed is None:
        raise NotInstalledError(
            f"the Foundry allocator is not installed in this process: call foundry_alloc.install() "
            f"before CUDA is first used, or set {ENV_ENABLE}=1"
        )
    return _installed[1]


def _device(device: int | None) -> int:
    if device is not None:
        return device
    import torch

    return torch.cuda.current_device()


def reserve(device: int | None = None) -> None:
    """Reserves the device's range now (cuMemAddressReserve at the configured base), so that an
    unavailable base fails here with ReservationError rather than at the first allocation, and
    so that nothing else (NCCL reserves address space of its own) takes the range first.

    Args:
        device: the CUDA device (default: torch's current one).

    Example:
        >>> foundry_alloc.install(); foundry_alloc.reserve()
    """
    allocator = _require()
    with annotate("alloc.reserve"):
        allocator.reserve(_device(device))


def layout(device: int | None = None) -> Layout:
    """The live blocks of the device's range: address, size, requested size, arena and sequence
    number of each, as a pydantic Layout (`.write(path)`, `Layout.read(path)`, `.fingerprint()`).

    Args:
        device: the CUDA device (default: torch's current one).

    Returns:
        The Layout; equal in two processes that made the same allocations in the same order.

    Example:
        >>> foundry_alloc.layout().write("layout.json")   # then: foundry layout-diff a.json b.json
    """
    return _require().layout(_device(device))


def mappings(device: int | None = None) -> list[tuple[int, int, str]]:
    """(address, size, arena) of the device's physical mappings (the 2 MiB granules backed by
    cuMemCreate), merged where they touch."""
    return _require().mappings(_device(device))


def fingerprint(device: int | None = None, arenas: Iterable[str] | None = None) -> str:
    """A hash of the layout that is equal in two processes iff their layouts are.

    Args:
        device: the CUDA device (default: torch's current one).
        arenas: compare only these arenas (default: all), e.g. ["engine", "graph"].

    Example:
        >>> print(foundry_alloc.fingerprint(arenas=["engine"]))   # the same in SAVE and LOAD
    """
    return layout(device).fingerprint(arenas)


def stats(device: int | None = None) -> AllocatorStats:
    """Reserved, mapped, live and peak bytes of the device's range, in all and per arena (what
    torch.cuda.memory_stats cannot report for a pluggable allocator); `.render()` as a table.

    Example:
        >>> print(foundry_alloc.stats().render())
    """
    return _require().stats(_device(device))


def reset_peak_stats(device: int | None = None) -> None:
    """Starts the peak counters of stats() afresh from what is live now."""
    _require().reset_peaks(_device(device))


def empty_cache(device: int | None = None, *, graphs: bool = False) -> int:
    """Gives idle physical memory back to the driver; returns the bytes released.

    Memory of arena 'graph' is kept unless graphs=True: captured graphs read and write it at
    replay even where no tensor is alive. Pass graphs=True only once those graphs are destroyed.

    Example:
        >>> del scratch; freed = foundry_alloc.empty_cache()
    """
    allocator = _require()
    device = _device(device)
    names = tuple(n for n in allocator.stats(device).arenas if graphs or n != GRAPH)
    return allocator.trim(device, names)

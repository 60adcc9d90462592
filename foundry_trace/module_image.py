"""What SAVE stores of a module: its binary cut to the kernels the graphs launch, and only the
module variables whose contents the process changed.

LOAD's driver cost of loading a module grows with the kernels in it, and PyTorch's modules
are mostly kernels no graph uses. The others are taken out entirely where cubin_compact.py can
rewrite the module, and cut to stubs (cubin_trim.py) otherwise. A cut binary is used only once
the driver has checked it here: it loads, and each kept kernel loads and has the attributes of
the kernel the process ran (registers, shared, constant and local memory, ...); otherwise the
binary is stored whole.
Writing a variable back costs two driver calls at LOAD (one module holds 1,144 variables), and
most hold what the binary initialises them to, so SAVE compares each with a fresh copy of the
module and stores only the ones that differ.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

import nvtx
from cuda.bindings import driver

from .cubin import ELF_MAGIC, module_symbols
from .cubin_compact import compact_cubin
from .cubin_trim import dropped_sections, trim_cubin
from .driver import call, device_bytes, try_call
from .errors import CompactionDeclined, CubinFormatError, MissingBinaryError

NVTX_DOMAIN = "foundry"
MAX_VARIABLE_BYTES = 64 << 20  # module globals larger than this are refused rather than carried
# What the compiler fixed for a kernel: equal values mean the driver sees the same kernel.
_FIXED_ATTRIBUTES = tuple(
    getattr(driver.CUfunction_attribute, f"CU_FUNC_ATTRIBUTE_{name}")
    for name in (
        "NUM_REGS", "SHARED_SIZE_BYTES", "CONST_SIZE_BYTES", "LOCAL_SIZE_BYTES", "MAX_THREADS_PER_BLOCK",
        "BINARY_VERSION", "PTX_VERSION", "CACHE_MODE_CA", "CLUSTER_SIZE_MUST_BE_SET",
    )
)


@dataclass(frozen=True)
class StoredModule:
    binary: bytes  # what the archive holds: trimmed, or whole
    trimmed: bool
    variables: dict[str, bytes]  # name -> contents, for the variables that differ from a fresh load


def stored_module(binary: bytes, live: driver.CUmodule, kernels: Collection[str], variables: Collection[str]) -> StoredModule:
    """`binary` (as the archive would store it whole), trimmed to `kernels` where the driver
    accepts the result, with the `variables` whose contents in `live` (the process's loaded
    copy) differ from a fresh load's."""
    with nvtx.annotate("foundry.save.module", domain=NVTX_DOMAIN):
        trimmed = fresh = None
        for candidate in _trimmed(binary, kernels):
            fresh = _checked_load(candidate, live, kernels)
            if fresh is not None:
                trimmed = candidate
                break
        if fresh is None:
            fresh = call(driver.cuModuleLoadData, binary)
        try:
            changed = _changed_variables(live, fresh, variables)
        finally:
            call(driver.cuModuleUnload, fresh)
    return StoredModule(binary=trimmed if trimmed is not None else binary, trimmed=trimmed is not None, variables=changed)


def _trimmed(binary: bytes, kernels: Collection[str]) -> Iterator[bytes]:
    """The cut-down binaries to try, smallest first: the other kernels taken out entirely
    (cubin_compact.py), or left as stubs (cubin_trim.py) where that declines or the driver
    refuses it. The driver finds plain functions by name too: each must keep `kernels` as
    entries."""
    if binary[:4] != ELF_MAGIC:
        return  # a fatbin of several images: the driver picks one, all are kept
    try:
        dropped = dropped_sections(binary, kernels)
    except CubinFormatError:
        return
    for cut in (lambda: compact_cubin(binary, dropped), lambda: trim_cubin(binary, kernels)):
        try:
            candidate = cut()
            if candidate is not None and set(kernels) <= module_symbols(candidate).entries:
                yield candidate
        except (CubinFormatError, CompactionDeclined):
            continue


def _checked_load(trimmed: bytes, live: driver.CUmodule, kernels: Collection[str]) -> driver.CUmodule | None:
    """The trimmed binary loaded, where the driver takes it and its kernels are the live ones."""
    fresh = try_call(driver.cuModuleLoadData, trimmed)
    if fresh is None:
        return None
    try:
        same = _same_kernels(live, fresh, kernels)
    except BaseException:
        call(driver.cuModuleUnload, fresh)
        raise
    if not same:
        call(driver.cuModuleUnload, fresh)
        return None
    return fresh


def _same_kernels(live: driver.CUmodule, fresh: driver.CUmodule, kernels: Collection[str]) -> bool:
    for name in kernels:
        original = call(driver.cuModuleGetFunction, live, name.encode())
        copy = try_call(driver.cuModuleGetFunction, fresh, name.encode())
        if copy is None or try_call(driver.cuFuncLoad, copy) is None:
            return False
        for attribute in _FIXED_ATTRIBUTES:
            if try_call(driver.cuFuncGetAttribute, attribute, original) != try_call(driver.cuFuncGetAttribute, attribute, copy):
                return False
    return True


def _changed_variables(live: driver.CUmodule, fresh: driver.CUmodule, names: Collection[str]) -> dict[str, bytes]:
    changed = {}
    for name in sorted(names):
        found = try_call(driver.cuModuleGetGlobal, live, name.encode())
        if found is None:
            continue
        address, size = int(found[0]), int(found[1])
        if size > MAX_VARIABLE_BYTES:
            raise MissingBinaryError(
                f"module variable {name} holds {size} bytes, more than Foundry carries ({MAX_VARIABLE_BYTES}); allocate such buffers with torch instead"
            )
        contents = device_bytes(address, size)
        initial = try_call(driver.cuModuleGetGlobal, fresh, name.encode())
        if initial is None or int(initial[1]) != size or device_bytes(int(initial[0]), size) != contents:
            changed[name] = contents
    return changed

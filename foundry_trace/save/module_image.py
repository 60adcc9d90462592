"""What SAVE stores of a module: its binary cut to the kernels the graphs launch, and only the
module variables whose contents the process changed.

LOAD's driver cost of loading a module grows with the kernels in it, and PyTorch's modules
are mostly kernels no graph uses. The others are taken out entirely where binary/compact.py can
rewrite the module, and cut to stubs (binary/trim.py) otherwise. A cut binary is used only once
the driver has checked it here: it loads, and each kept kernel loads and has the attributes of
the kernel the process ran (registers, shared, constant and local memory, ...); otherwise the
binary is stored whole.
Writing a variable back costs two driver calls at LOAD (one module holds 1,144 variables), and
most hold what the binary initialises them to, so SAVE compares each with a fresh copy of the
module and stores only the ones that differ. Some initial values are addresses in the module
itself (a table of kernels, a pointer to another variable), which the driver fills in at each
load: a variable differs there in every copy. SAVE finds those words by loading a second copy,
where a variable differs from the first; LOAD leaves them as its own load filled them in, and a
variable that differs only there is not stored (a program that wrote its own value into such a
word would see the load's there after LOAD).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Literal

from cuda.bindings import driver

from foundry_alloc.profiling import annotate
from foundry_trace._driver import call, device_bytes, try_call
from foundry_trace.binary.compact import compact_cubin
from foundry_trace.binary.cubin import ELF_MAGIC, module_symbols
from foundry_trace.binary.trim import dropped_sections, trim_cubin
from foundry_trace.binary.variables import load_dependent_words, without_words
from foundry_trace.errors import CompactionDeclined, CubinFormatError, MissingBinaryError

MAX_VARIABLE_BYTES = 64 << 20  # module globals larger than this are refused rather than carried
# What the compiler fixed for a kernel: equal values mean the driver sees the same kernel.
_FIXED_ATTRIBUTES = tuple(
    getattr(driver.CUfunction_attribute, f"CU_FUNC_ATTRIBUTE_{name}")
    for name in (
        "NUM_REGS", "SHARED_SIZE_BYTES", "CONST_SIZE_BYTES", "LOCAL_SIZE_BYTES", "MAX_THREADS_PER_BLOCK",
        "BINARY_VERSION", "PTX_VERSION", "CACHE_MODE_CA", "CLUSTER_SIZE_MUST_BE_SET",
    )
)


# How SAVE cut a module's binary: the unused kernels taken out, cut to stubs, or not at all.
Cut = Literal["compacted", "stubs", "whole"]


@dataclass(frozen=True)
class StoredModule:
    binary: bytes  # what the archive holds: cut, or whole
    cut: Cut
    # Where `cut` is not "compacted": why, each way tried (LOAD's driver pays for every kernel a
    # stub keeps: binary/compact.py).
    not_compacted: str | None
    variables: dict[str, bytes]  # name -> contents, for the variables that differ from a fresh load
    relocated: dict[str, tuple[int, ...]]  # name -> offsets of its words that each load fills in

    @property
    def trimmed(self) -> bool:
        return self.cut != "whole"


def stored_module(binary: bytes, live: driver.CUmodule, kernels: Collection[str], variables: Collection[str]) -> StoredModule:
    """`binary` (as the archive would store it whole), trimmed to `kernels` where the driver
    accepts the result, with the `variables` whose contents in `live` (the process's loaded
    copy) differ from a fresh load's."""
    with annotate("save.module"):
        cut: Cut = "whole"
        stored, fresh, reasons = binary, None, []
        for method, candidate in cuts(binary, kernels, reasons):
            fresh = _checked_load(candidate, live, kernels)
            if fresh is not None:
                cut, stored = method, candidate
                break
            reasons.append(f"{method}: the driver refused it, or its kernels differ from the live ones")
        if fresh is None:
            fresh = call(driver.cuModuleLoadData, stored)
        try:
            changed, relocated = _changed_variables(live, fresh, stored, variables)
        finally:
            call(driver.cuModuleUnload, fresh)
    return StoredModule(
        binary=stored, cut=cut, not_compacted=None if cut == "compacted" else "; ".join(reasons) or None,
        variables=changed, relocated=relocated,
    )


def cuts(binary: bytes, kernels: Collection[str], reasons: list[str]) -> Iterator[tuple[Cut, bytes]]:
    """The cut-down binaries to try, smallest first, each with how it was cut: the other kernels
    taken out entirely (binary/compact.py), or left as stubs (binary/trim.py) where that declines
    or the driver refuses it. The driver finds plain functions by name too: each must keep
    `kernels` as entries. Why a way gave nothing is appended to `reasons`."""
    if binary[:4] != ELF_MAGIC:
        reasons.append("a fatbin of several images this GPU loads: the driver picks one, all are kept")
        return
    try:
        dropped = dropped_sections(binary, kernels)
    except CubinFormatError as error:
        reasons.append(f"the cubin cannot be cut: {error}")
        return
    ways: tuple[tuple[Cut, Callable[[], bytes | None]], ...] = (
        ("compacted", lambda: compact_cubin(binary, dropped)), ("stubs", lambda: trim_cubin(binary, kernels)),
    )
    for method, cut in ways:
        try:
            candidate = cut()
            entries = module_symbols(candidate).entries if candidate is not None else frozenset()
        except (CubinFormatError, CompactionDeclined) as error:
            reasons.append(f"{method}: declined: {error}")
            continue
        if candidate is None:
            reasons.append(f"{method}: no kernel to take out")
        elif not set(kernels) <= entries:
            reasons.append(f"{method}: a kept kernel is no longer an entry")
        else:
            yield method, candidate


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


def _changed_variables(
    live: driver.CUmodule, fresh: driver.CUmodule, binary: bytes, names: Collection[str]
) -> tuple[dict[str, bytes], dict[str, tuple[int, ...]]]:
    """The variables of `live` whose contents differ from `fresh` (a load of `binary`) other
    than in the words each load fills in, and those words' offsets for each."""
    changed: dict[str, bytes] = {}
    relocated: dict[str, tuple[int, ...]] = {}
    second: driver.CUmodule | None = None  # another load of `binary`, once a variable differs
    try:
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
            initial = _contents(fresh, name, size)
            if initial == contents:
                continue
            if initial is not None:
                if second is None:
                    second = call(driver.cuModuleLoadData, binary)
                words = load_dependent_words(initial, _contents(second, name, size))
                if words and without_words(contents, words, initial) == initial:
                    continue  # differs only where the driver fills in addresses
                if words:
                    relocated[name] = words
            changed[name] = contents
    finally:
        if second is not None:
            call(driver.cuModuleUnload, second)
    return changed, relocated


def _contents(module: driver.CUmodule, name: str, size: int) -> bytes | None:
    """A variable's contents in `module`; None where it is missing or of another size."""
    found = try_call(driver.cuModuleGetGlobal, module, name.encode())
    if found is None or int(found[1]) != size:
        return None
    return device_bytes(int(found[0]), size)

"""Module binaries seen by the tracer, and the mapping of captured CUfunctions to them.

The driver names a captured kernel (cuFuncGetName) and its loaded module (cuFuncGetModule), but
gives no way back from a CUmodule to its binary; CUPTI hands over every binary as it is loaded,
and for explicit loads (cuModuleLoadData: Triton's JIT, Inductor) the handle the call returned,
which identifies the binary exactly (Inductor gives kernels of different compiled graphs the same
names). Other kernels (loaded lazily by the runtime) are matched to the binaries that export their
name; where several do (templates compiled into several translation units), to the one whose
whole set of entries equals the loaded module's (cuModuleEnumerateFunctions).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import get_args

from cuda.bindings import driver

from foundry_trace._driver import call, try_call
from foundry_trace.archive.records import SETTABLE_FUNCTION_ATTRIBUTES, FunctionRecord, ModuleRecord
from foundry_trace.binary.cubin import CubinFormatError, ModuleSymbols, loadable_images, module_symbols
from foundry_trace.errors import MissingBinaryError
from foundry_trace.save.module_image import Cut, stored_module


@dataclass(frozen=True)
class ModuleCut:
    """How SAVE cut one module's binary (module_image.StoredModule), for SAVE's report: where a
    module is not compacted, LOAD's driver pays for every kernel left in it."""

    module: int  # its index in the archive
    entries: int  # kernels in the binary the process loaded
    kept: int  # kernels the graphs launch
    loaded_bytes: int
    stored_bytes: int
    cut: Cut
    not_compacted: str | None  # why, where it is not

    def summary(self) -> str:
        """One line of SAVE's report."""
        return (f"module {self.module}: {self.cut}, {self.kept} of {self.entries} kernels kept, "
                f"{self.loaded_bytes} -> {self.stored_bytes} bytes ({self.not_compacted})")


def cut_counts(cuts: Iterable[ModuleCut]) -> dict[Cut, int]:
    """How many modules SAVE cut each way, every way named (0 where none)."""
    counts = Counter(cut.cut for cut in cuts)
    return {way: counts[way] for way in get_args(Cut)}


@dataclass
class _Binary:
    digest: str
    data: bytes
    symbols: ModuleSymbols


@dataclass
class ModuleRegistry:
    """Binaries by digest (each once), with an index from entry name to binaries.

    Binaries the ELF reader cannot list (compressed fatbins, as PyTorch's CUDA 13 builds ship)
    wait in `pending` until a kernel cannot be found; then the driver itself lists their entries
    (load, enumerate, unload)."""

    binaries: dict[str, _Binary] = field(default_factory=dict)
    by_entry: dict[str, list[str]] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    by_handle: dict[int, str] = field(default_factory=dict)  # CUmodule -> digest, for explicit loads
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _own: threading.local = field(default_factory=threading.local)

    @contextmanager
    def own_loads(self) -> Iterator[None]:
        """Module loads made inside, on this thread, are Foundry's own checks: the tracer does
        not record them (their handles would name binaries the program never loaded)."""
        self._own.active = True
        try:
            yield
        finally:
            self._own.active = False

    def saw_binary(self, data: bytes) -> None:
        """The tracer's report of a binary being loaded."""
        if not getattr(self._own, "active", False):
            self.add(data)

    def saw_load(self, module: int, image: bytes) -> None:
        """The tracer's report of an explicit load."""
        if not getattr(self._own, "active", False):
            self.add_handle(module, image)

    def add(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self.binaries:
                return digest
            try:
                symbols = module_symbols(data)
            except CubinFormatError:
                symbols = ModuleSymbols(frozenset(), frozenset())
            self.binaries[digest] = _Binary(digest, data, symbols)
            if symbols.entries:
                self._index(digest)
            else:
                self.pending.append(digest)
        return digest

    def add_handle(self, module: int, image: bytes) -> None:
        """An explicit load: the CUmodule it returned and the image it was handed."""
        digest = self.add(image)
        with self._lock:
            self.by_handle[module] = digest

    def _index(self, digest: str) -> None:
        for name in self.binaries[digest].symbols.entries:
            self.by_entry.setdefault(name, []).append(digest)

    def index_pending(self) -> None:
        """Lists the entries of every pending binary through the driver."""
        with self._lock:
            pending, self.pending = self.pending, []
        for digest in pending:
            with self.own_loads():
                entries = _driver_entry_names(self.binaries[digest].data)  # loads a module: no lock held
            with self._lock:
                binary = self.binaries[digest]
                self.binaries[digest] = _Binary(digest, binary.data, ModuleSymbols(entries, binary.symbols.variables))
                self._index(digest)


def _driver_entry_names(data: bytes) -> frozenset[str]:
    module = call(driver.cuModuleLoadData, data)
    try:
        return _function_names(module)
    finally:
        call(driver.cuModuleUnload, module)


def _function_names(module: driver.CUmodule) -> frozenset[str]:
    count = call(driver.cuModuleGetFunctionCount, module)
    names = set()
    for function in call(driver.cuModuleEnumerateFunctions, count, module) if count else ():
        name = call(driver.cuFuncGetName, function)
        names.add(name.decode() if isinstance(name, bytes) else str(name))
    return frozenset(names)


@dataclass(frozen=True)
class _Function:
    binary: str  # digest of the module binary as loaded
    name: str
    attributes: dict[str, int]


class FunctionTable:
    """Turns CUfunction handles into function indices of the archive, resolving each handle once."""

    def __init__(self, registry: ModuleRegistry) -> None:
        self._registry = registry
        self._index: dict[int, int] = {}
        self._module_entries: dict[int, frozenset[str]] = {}
        self._functions: list[_Function] = []
        self.module_handles: dict[str, int] = {}  # digest -> a loaded CUmodule of that binary

    def __len__(self) -> int:
        return len(self._functions)

    def index(self, function: int, where: str) -> int:
        found = self._index.get(function)
        if found is None:
            found = self._index[function] = len(self._functions)
            self._functions.append(self._resolve(function, where))
        return found

    def _resolve(self, function: int, where: str) -> _Function:
        handle = driver.CUfunction(function)
        name = call(driver.cuFuncGetName, handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        module = int(call(driver.cuFuncGetModule, handle))
        exact = self._registry.by_handle.get(module)
        if exact is not None:
            entries = self._registry.binaries[exact].symbols.entries
            if not entries or name in entries:  # else the handle was reused by a module loaded otherwise
                return self._function(exact, module, name, handle)
        if name not in self._registry.by_entry and self._registry.pending:
            self._registry.index_pending()
        candidates = self._registry.by_entry.get(name, [])
        if len(candidates) > 1:
            entries = self._entries_of(module)
            candidates = [d for d in candidates if self._registry.binaries[d].symbols.entries == entries] or candidates[:0]
        if not candidates:
            raise MissingBinaryError(
                f"kernel {name} (used by {where}) comes from a module whose binary the tracer did not see"
                + (" unambiguously" if name in self._registry.by_entry else "")
                + ": it was loaded before tracing started. Start tracing before the first CUDA call "
                "(FOUNDRY_MODE=save, or enter foundry_trace.record(...) before the model is built)"
            )
        return self._function(candidates[0], module, name, handle)

    def _function(self, digest: str, module: int, name: str, handle: driver.CUfunction) -> _Function:
        self.module_handles.setdefault(digest, module)
        attributes = {}
        for attribute in SETTABLE_FUNCTION_ATTRIBUTES:
            value = try_call(driver.cuFuncGetAttribute, getattr(driver.CUfunction_attribute, attribute), handle)
            if value is not None:
                attributes[attribute] = int(value)
        return _Function(binary=digest, name=name, attributes=attributes)

    def _entries_of(self, module: int) -> frozenset[str]:
        if module not in self._module_entries:
            self._module_entries[module] = _function_names(driver.CUmodule(module))
        return self._module_entries[module]

    def records(self, add_blob, capability: tuple[int, int]) -> tuple[list[ModuleRecord], list[FunctionRecord], list[ModuleCut]]:  # noqa: ANN001
        """The records of the functions and of the binaries they come from, each binary reduced
        to the images a GPU of `capability` loads and trimmed to the kernels used, with the
        module-scope variables whose contents the process changed (module_image.py), and how
        each binary was cut; blobs go through `add_blob` (bytes -> digest)."""
        modules: list[ModuleRecord] = []
        cuts: list[ModuleCut] = []
        position: dict[str, int] = {}
        for digest in dict.fromkeys(f.binary for f in self._functions):
            binary = self._registry.binaries[digest]
            kernels = sorted({f.name for f in self._functions if f.binary == digest})
            live = driver.CUmodule(self.module_handles[digest])
            with self._registry.own_loads():
                stored = stored_module(loadable_images(binary.data, capability), live, kernels, binary.symbols.variables)
            position[digest] = len(modules)
            modules.append(
                ModuleRecord(
                    digest=add_blob(stored.binary), size=len(stored.binary), loaded_size=len(binary.data),
                    entries=len(binary.symbols.entries), trimmed=stored.trimmed,
                    variables={name: add_blob(contents) for name, contents in stored.variables.items()},
                    relocated=stored.relocated,
                )
            )
            cuts.append(ModuleCut(position[digest], len(binary.symbols.entries), len(kernels), len(binary.data), len(stored.binary), stored.cut, stored.not_compacted))
        functions = [FunctionRecord(module=position[f.binary], name=f.name, attributes=f.attributes) for f in self._functions]
        return modules, functions, cuts

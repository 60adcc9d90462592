"""ctypes bindings of the restore loop (foundry_trace/csrc, built by the package build).

ctypes releases the GIL for each call, so graphs are built and instantiated on several threads
at once; the library resolves the driver's entry points itself, at run time.
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from foundry_alloc._native import compiled_library
from foundry_trace.errors import ArchiveFormatError, DriverCallError, RestoreError

LIBRARY_STEM = "_libfoundry_restore"
ERROR_BYTES = 512
# Status codes of csrc/restore_api.cpp.
OK, INVALID_TABLE, DRIVER_FAILURE, NO_DRIVER = range(4)

_u64, _u32, _bytes = ctypes.c_uint64, ctypes.c_uint32, ctypes.c_char_p
_u64_array = ctypes.POINTER(ctypes.c_uint64)


class _ChunkOutcome(ctypes.Structure):
    """csrc/chunk_restore.hpp's ChunkOutcome."""

    _fields_ = [
        ("executable", _u64), ("status", ctypes.c_int32), ("reserved", ctypes.c_uint32),
        ("build_start", ctypes.c_double), ("build_end", ctypes.c_double),
        ("instantiate_start", ctypes.c_double), ("instantiate_end", ctypes.c_double),
        ("error", ctypes.c_char * ERROR_BYTES),
    ]


class _BlobRef(ctypes.Structure):
    """csrc/blob_read.hpp's BlobRef."""

    _fields_ = [
        ("offset", _u64), ("stored", _u64), ("size", _u64), ("codec", _u32), ("reserved", _u32), ("digest", ctypes.c_uint8 * 32),
    ]


class _BlobSource(ctypes.Structure):
    """csrc/blob_read.hpp's BlobSource: bytes in memory (data), or a blob to read (ref)."""

    _fields_ = [("data", ctypes.c_void_p), ("size", _u64), ("ref", _BlobRef)]


class _ModuleVariable(ctypes.Structure):
    """csrc/module_load.hpp's ModuleVariable."""

    _fields_ = [("name", ctypes.c_char_p), ("contents", _BlobSource), ("ranges", _u64_array), ("range_count", _u32), ("reserved", _u32)]


class _ChunkGraph(ctypes.Structure):
    """csrc/chunk_restore.hpp's ChunkGraph."""

    _fields_ = [("table", _BlobSource), ("payload", _BlobSource)]


class _ModuleFunction(ctypes.Structure):
    """csrc/module_load.hpp's ModuleFunction."""

    _i32_array = ctypes.POINTER(ctypes.c_int32)
    _fields_ = [("name", ctypes.c_char_p), ("attributes", _i32_array), ("values", _i32_array), ("attribute_count", _u32), ("reserved", _u32)]


class _ModuleRequest(ctypes.Structure):
    """csrc/module_load.hpp's ModuleRequest."""

    _fields_ = [
        ("image", _BlobSource), ("variables", ctypes.POINTER(_ModuleVariable)), ("functions", ctypes.POINTER(_ModuleFunction)),
        ("function_handles", _u64_array), ("param_bytes", _u64_array), ("variable_count", _u32), ("function_count", _u32),
        ("module", _u64), ("times", ctypes.c_double * 2),
    ]


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "fr_table_check": (ctypes.c_int, [_bytes, _u64, _bytes, _u64, _u32, _u32, _u32, ctypes.c_char_p, _u64]),
    "fr_function_param_bytes": (ctypes.c_int, [_u64, _u64_array, ctypes.c_char_p, _u64]),
    "fr_modules_load": (ctypes.c_int, [ctypes.c_int, _u64, ctypes.POINTER(_ModuleRequest), _u32, ctypes.POINTER(_u32), ctypes.c_char_p, _u64]),
    "fr_module_unload": (None, [_u64]),
    "fr_graph_build": (
        ctypes.c_int,
        [_bytes, _u64, _bytes, _u64, _u64_array, _u64_array, _u32, _u64_array, _u32, _u64_array, _u32, _u64, _u64_array, ctypes.c_char_p, _u64],
    ),
    "fr_graph_instantiate": (ctypes.c_int, [_u64, _u64, _u64_array, ctypes.c_char_p, _u64]),
    "fr_graph_upload": (ctypes.c_int, [_u64, _u64, ctypes.c_char_p, _u64]),
    "fr_chunk_restore": (
        ctypes.c_int,
        [ctypes.c_int, ctypes.POINTER(_ChunkGraph), _u32, _u64_array, _u64_array, _u32, _u64_array, _u32, _u64_array, _u32, _u64, _u32, ctypes.c_void_p,
         ctypes.POINTER(_ChunkOutcome), ctypes.c_char_p, _u64],
    ),
    "fr_build_gate_create": (ctypes.c_void_p, [_u32]),
    "fr_sha256": (None, [_bytes, _u64, ctypes.c_char_p, ctypes.c_int]),
    "fr_blob_read": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(_BlobRef), ctypes.c_char_p, _u64, ctypes.c_char_p, _u64]),
    "fr_build_gate_destroy": (None, [ctypes.c_void_p]),
    "fr_graph_destroy": (None, [_u64]),
    "fr_executable_destroy": (None, [_u64]),
}


@functools.cache
def library() -> ctypes.CDLL:
    path = compiled_library(Path(__file__).resolve().parent, LIBRARY_STEM, "restore loop", "foundry_trace/csrc")
    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def _raise(status: int, buffer: ctypes.Array, what: str) -> None:
    raise _error(status, buffer.value.decode(errors="replace"), what)


def _error(status: int, message: str, what: str) -> Exception:
    if status == INVALID_TABLE:
        return ArchiveFormatError(f"{what}: {message}: the archive is corrupted; save it again")
    if status == NO_DRIVER:
        return RestoreError(f"{what}: {message}")
    return DriverCallError(f"{what}: {message}")


def check_table(table: bytes, payload: bytes, functions: int, events: int, collectives: int = 0, what: str = "archive") -> None:
    """Raises ArchiveFormatError unless `table` is well formed for `payload` (no driver needed)."""
    error = ctypes.create_string_buffer(ERROR_BYTES)
    status = library().fr_table_check(table, len(table), payload, len(payload), functions, events, collectives, error, ERROR_BYTES)
    if status != OK:
        _raise(status, error, what)


def function_param_bytes(handle: int) -> int:
    """The size of a kernel's parameter buffer (CUfunction `handle`): the end of its last
    parameter, by cuFuncGetParamInfo; 0 where the driver cannot tell (before CUDA 12.4)."""
    size = ctypes.c_uint64(0)
    error = ctypes.create_string_buffer(ERROR_BYTES)
    status = library().fr_function_param_bytes(handle, ctypes.byref(size), error, ERROR_BYTES)
    if status != OK:
        _raise(status, error, f"function {handle:#x}")
    return size.value


CODECS = {"raw": 0, "zlib": 1}  # csrc/blob_read.hpp's kRaw, kZlib


class BlobLocation(Protocol):
    """A blob of an archive file as the native readers read it (csrc/blob_read.hpp): where it
    lies, its stored and decoded sizes, its codec ("raw" or "zlib"), and the SHA-256 (hex) it
    must have once decoded. The archive's own locator (archive.format.StoredBlob) is one."""

    digest: str
    offset: int
    stored: int
    size: int
    codec: str


Blob = bytes | BlobLocation  # in memory, or read (and checked) from the archive by the native call


def _fill(slot: _BlobSource, blob: Blob) -> None:
    if isinstance(blob, bytes):  # the caller keeps `blob` alive until the call returns
        slot.data, slot.size = ctypes.cast(ctypes.c_char_p(blob), ctypes.c_void_p), len(blob)
    else:
        slot.ref.offset, slot.ref.stored, slot.ref.size = blob.offset, blob.stored, blob.size
        slot.ref.codec = CODECS[blob.codec]
        slot.ref.digest[:] = bytes.fromhex(blob.digest)


def sha256(data: bytes, *, portable: bool = False) -> bytes:
    """SHA-256 as the native readers compute it (libcrypto's where it loads); `portable`: the
    native fallback for a process without libcrypto."""
    digest = ctypes.create_string_buffer(32)
    library().fr_sha256(data, len(data), digest, int(portable))
    return digest.raw


def read_blob(archive: int, blob: BlobLocation) -> bytes:
    """Reads, decodes and checks one blob of the archive open as file descriptor `archive`, as
    LOAD's native threads do; ArchiveFormatError names what is wrong with it."""
    out = ctypes.create_string_buffer(max(1, blob.size))
    source = _BlobSource()
    _fill(source, blob)
    error = ctypes.create_string_buffer(ERROR_BYTES)
    status = library().fr_blob_read(archive, ctypes.byref(source.ref), out, blob.size, error, ERROR_BYTES)
    if status != OK:
        _raise(status, error, "the archive")
    return out.raw[: blob.size]


@dataclass(frozen=True)
class StoredVariable:
    """A module variable as LOAD writes it: its stored contents, of which the (start, end) byte
    `ranges` are written (the rest the load fills in itself)."""

    name: str
    contents: Blob
    ranges: Sequence[tuple[int, int]]


@dataclass(frozen=True)
class LoadedModule:
    """A module fr_modules_load loaded: its CUmodule, for each function asked for, in order, its
    CUfunction and parameter buffer size (0 where the driver cannot tell), and the (start, end)
    of its work in time.perf_counter() seconds."""

    module: int
    functions: list[int]
    param_bytes: list[int]
    times: tuple[float, float]


@dataclass(frozen=True)
class ModuleRequest:
    """A module to load: its binary, its stored variables, the (entry name, {CUfunction_attribute:
    value}) of each function to resolve, and what errors call it."""

    image: Blob
    variables: Sequence[StoredVariable]
    functions: Sequence[tuple[str, Mapping[int, int]]]
    what: str


@dataclass(frozen=True)
class ModulesLoaded:
    """What fr_modules_load did with a batch: the modules loaded, in order (the caller owns them),
    and, where it stopped early, why the next one failed (it is not loaded)."""

    loaded: list[LoadedModule]
    failure: Exception | None


def load_modules(archive: int, requests: Sequence[ModuleRequest], context: int) -> ModulesLoaded:
    """Loads the modules in `context`, in order, in one call (the GIL released throughout): each
    binary loaded, its stored variables written, its functions resolved with the attributes that
    differ set; blobs not in memory are read from `archive` (a file descriptor) and checked. It
    stops at the first failure, which names the module's `what`, the step, and the blob,
    variable or kernel; that module is left unloaded, the ones before it loaded."""
    keep: list[object] = []  # the arrays the structures point into stay alive until the call returns
    slots = (_ModuleRequest * max(1, len(requests)))()
    for slot, request in zip(slots, requests, strict=False):
        _fill(slot.image, request.image)
        variables = (_ModuleVariable * max(1, len(request.variables)))()
        for stored, variable in zip(variables, request.variables, strict=False):
            ranges = (ctypes.c_uint64 * max(1, 2 * len(variable.ranges)))(*(bound for pair in variable.ranges for bound in pair))
            keep.append(ranges)
            stored.name = variable.name.encode()
            _fill(stored.contents, variable.contents)
            stored.ranges, stored.range_count = ranges, len(variable.ranges)
        wanted = (_ModuleFunction * max(1, len(request.functions)))()
        for function, (name, attributes) in zip(wanted, request.functions, strict=False):
            ids = (ctypes.c_int32 * max(1, len(attributes)))(*attributes.keys())
            values = (ctypes.c_int32 * max(1, len(attributes)))(*attributes.values())  # wrapped to 32 bits as c_int32(v) wraps
            keep += [ids, values]
            function.name, function.attributes, function.values, function.attribute_count = name.encode(), ids, values, len(attributes)
        handles = (ctypes.c_uint64 * max(1, len(request.functions)))()
        param_bytes = (ctypes.c_uint64 * max(1, len(request.functions)))()
        keep += [variables, wanted, handles, param_bytes]
        slot.variables, slot.variable_count = variables, len(request.variables)
        slot.functions, slot.function_count = wanted, len(request.functions)
        slot.function_handles, slot.param_bytes = handles, param_bytes
    loaded = ctypes.c_uint32(0)
    error = ctypes.create_string_buffer(ERROR_BYTES)
    status = library().fr_modules_load(archive, context, slots, len(requests), ctypes.byref(loaded), error, ERROR_BYTES)
    modules = [
        LoadedModule(slot.module, list(slot.function_handles[: len(request.functions)]), list(slot.param_bytes[: len(request.functions)]),
                     (slot.times[0], slot.times[1]))
        for slot, request in zip(slots[: loaded.value], requests, strict=False)
    ]
    failure = None
    if status != OK:
        what = requests[loaded.value].what if loaded.value < len(requests) else "the modules"
        failure = _error(status, error.value.decode(errors="replace"), what)
    return ModulesLoaded(modules, failure)


def unload_module(module: int) -> None:
    library().fr_module_unload(module)


class Handles:
    """CUfunction, CUevent and collective CUgraph handles by archive index, as the C arrays each
    build reads, and each function's parameter buffer size (as load_modules reads it; 0 where
    unknown), which the build checks every kernel node's arguments against."""

    def __init__(self, functions: list[int], events: list[int], collectives: list[int] = ()) -> None:  # type: ignore[assignment]
        self.functions = (ctypes.c_uint64 * max(1, len(functions)))(*functions)
        self.param_bytes = (ctypes.c_uint64 * max(1, len(functions)))()
        self.function_count = len(functions)
        self.events = (ctypes.c_uint64 * max(1, len(events)))(*events)
        self.event_count = len(events)
        self.set_collectives(list(collectives))

    def set_collectives(self, graphs: list[int]) -> None:
        self.collectives = (ctypes.c_uint64 * max(1, len(graphs)))(*graphs)
        self.collective_count = len(graphs)


def build_graph(table: bytes, payload: bytes, handles: Handles, context: int, what: str) -> int:
    """Validates the table and builds its CUgraph; returns the handle."""
    graph = ctypes.c_uint64(0)
    error = ctypes.create_string_buffer(ERROR_BYTES)
    status = library().fr_graph_build(
        table, len(table), payload, len(payload), handles.functions, handles.param_bytes, handles.function_count,
        handles.events, handles.event_count, handles.collectives, handles.collective_count, context, ctypes.byref(graph),
        error, ERROR_BYTES,
    )
    if status != OK:
        _raise(status, error, what)
    return graph.value


def instantiate(graph: int, context: int, what: str) -> int:
    """Instantiates a CUgraph; returns the CUgraphExec."""
    executable = ctypes.c_uint64(0)
    error = ctypes.create_string_buffer(ERROR_BYTES)
    status = library().fr_graph_instantiate(graph, context, ctypes.byref(executable), error, ERROR_BYTES)
    if status != OK:
        _raise(status, error, what)
    return executable.value


def upload(executable: int, context: int, what: str) -> None:
    """Uploads an executable to the device and waits until it is there."""
    error = ctypes.create_string_buffer(ERROR_BYTES)
    status = library().fr_graph_upload(executable, context, error, ERROR_BYTES)
    if status != OK:
        _raise(status, error, what)


class BuildGate:
    """The cap on builds at once across the chunks of one LOAD that the native runner restores
    side by side (csrc/chunk_restore.hpp). Freed once nothing refers to it: a chunk abandoned
    in the driver keeps its pipeline, and so the gate, alive until its call returns; never at
    interpreter exit, where such a call may still be running."""

    def __init__(self, builders: int) -> None:
        if builders < 1:
            raise ValueError(f"builders={builders}: a build gate lets at least one build through")
        handle = library().fr_build_gate_create(builders)
        if not handle:
            raise MemoryError("no host memory for the native runner's build gate")
        self.handle: int = handle
        weakref.finalize(self, library().fr_build_gate_destroy, handle).atexit = False


@dataclass(frozen=True)
class GraphOutcome:
    """What the native chunk runner made of one graph: its executable, or the error; the build's
    and the instantiation's (start, end) in time.perf_counter() seconds (None where not run)."""

    executable: int
    error: Exception | None
    build: tuple[float, float] | None
    instantiate: tuple[float, float] | None


def restore_chunk(
    archive: int, blobs: Sequence[tuple[Blob, Blob]], names: Sequence[str], handles: Handles, context: int, threads: int,
    gate: BuildGate,
) -> list[GraphOutcome]:
    """Builds, then instantiates, the graphs of (table, payload) `blobs` on `threads` native
    threads, each build through `gate`, in one call (the GIL released throughout); blobs not in
    memory are read from `archive` (a file descriptor) and checked first, on those threads.
    `names` ("graph '8/03'") head each graph's error. Each built CUgraph is destroyed by the
    call; the caller owns the executables."""
    count = len(blobs)
    graphs = (_ChunkGraph * max(1, count))()
    for graph, (table, payload) in zip(graphs, blobs, strict=False):  # blobs stay alive: the call reads them
        _fill(graph.table, table)
        _fill(graph.payload, payload)
    outcomes = (_ChunkOutcome * max(1, count))()
    error = ctypes.create_string_buffer(ERROR_BYTES)
    status = library().fr_chunk_restore(
        archive, graphs, count, handles.functions, handles.param_bytes, handles.function_count, handles.events, handles.event_count,
        handles.collectives, handles.collective_count, context, threads, gate.handle, outcomes, error, ERROR_BYTES,
    )
    if status != OK:
        _raise(status, error, f"{count} graphs")
    results = []
    for outcome, name in zip(outcomes, names, strict=False):
        built = (outcome.build_start, outcome.build_end) if outcome.build_start else None
        instantiated = (outcome.instantiate_start, outcome.instantiate_end) if outcome.instantiate_start else None
        failure = _error(outcome.status, outcome.error.decode(errors="replace"), name) if outcome.status != OK else None
        results.append(GraphOutcome(outcome.executable, failure, built, instantiated))
    return results


def destroy_graph(graph: int) -> None:
    library().fr_graph_destroy(graph)


def destroy_executable(executable: int) -> None:
    library().fr_executable_destroy(executable)

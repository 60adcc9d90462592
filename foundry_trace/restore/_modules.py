"""Loading recorded modules in a LOAD: each one's binary, its stored variables (written around
the words the load itself fills in), and the functions the graphs launch from it, with the
function attributes the SAVE process had set on them. A batch of modules is one native call
(native.load_modules) that also reads and checks the blobs: the module thread needs the GIL once
per batch, not once per module, read or driver step, so LOAD's main thread (or the engine's)
running Python does not stall it between modules."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from cuda.bindings import driver

from foundry_trace import _native as native
from foundry_trace.archive.format import Archive
from foundry_trace.archive.records import FunctionRecord, ModuleRecord
from foundry_trace.binary.variables import WORD, written_ranges
from foundry_trace.errors import ArchiveFormatError
from foundry_trace.restore._resources import LoadResources


def load_modules(
    archive: Archive, indices: Sequence[int], functions_of: Callable[[int], Sequence[FunctionRecord]], context: int,
    resources: LoadResources,
) -> native.ModulesLoaded:
    """Loads modules `indices` of the archive in order, each recorded in `resources` once loaded,
    and resolves `functions_of(index)` of each: their CUfunctions and parameter buffer sizes, in
    that order. It stops at the first module that fails (left unloaded), and says why."""
    requests: list[native.ModuleRequest] = []
    refused: ArchiveFormatError | None = None
    for index in indices:
        try:
            requests.append(_request(archive, index, functions_of(index)))
        except ArchiveFormatError as error:  # the modules before it still load
            refused = error
            break
    batch = native.load_modules(archive.fileno(), requests, context)
    for loaded in batch.loaded:
        resources.add_module(loaded.module)
    return native.ModulesLoaded(batch.loaded, batch.failure or refused)  # the native failure comes first in order


def _request(archive: Archive, index: int, functions: Sequence[FunctionRecord]) -> native.ModuleRequest:
    record: ModuleRecord = archive.manifest.modules[index]
    what = f"module {index}"
    variables = [
        stored_variable(name, archive.locate(digest), record.relocated.get(name, ()), what) for name, digest in record.variables.items()
    ]
    wanted = [(f.name, {int(getattr(driver.CUfunction_attribute, a)): v for a, v in f.attributes.items()}) for f in functions]
    return native.ModuleRequest(archive.locate(record.digest), variables, wanted, what)


def stored_variable(name: str, contents: native.Blob, relocated: Collection[int], what: str) -> native.StoredVariable:
    """A stored variable as LOAD writes it: all but the words at `relocated`, which the load
    fills in. Those must lie within the contents, which the module's variable must match in
    size (checked as it is written)."""
    size = len(contents) if isinstance(contents, bytes) else contents.size
    if any(at + WORD > size for at in relocated):
        raise ArchiveFormatError(
            f"{what}: variable {name}: the archive stores {size} bytes for it, with load-filled words at {sorted(relocated)} "
            "past them: the archive is corrupted; save it again"
        )
    return native.StoredVariable(name, contents, written_ranges(size, relocated))

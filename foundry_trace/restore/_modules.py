"""Loading one recorded module in a LOAD: its binary, its stored variables (written around the
words the load itself fills in), and the functions the graphs launch from it, with the function
attributes the SAVE process had set on them, in one native call (native.load_module) that also
reads and checks the blobs: the module thread needs the GIL once per module, not once per read
or driver step, so LOAD's main thread (or the engine's) running Python does not stall it."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from cuda.bindings import driver

from foundry_trace import _native as native
from foundry_trace.archive.format import Archive
from foundry_trace.archive.records import FunctionRecord, ModuleRecord
from foundry_trace.binary.variables import WORD, written_ranges
from foundry_trace.errors import ArchiveFormatError
from foundry_trace.restore._resources import LoadResources


def load_module(
    archive: Archive, index: int, functions: Sequence[FunctionRecord], context: int, resources: LoadResources
) -> native.LoadedModule:
    """Loads module `index` of the archive (recorded in `resources` once loaded; on failure
    nothing stays loaded) and resolves `functions`: their CUfunctions and parameter buffer
    sizes, in that order."""
    record: ModuleRecord = archive.manifest.modules[index]
    what = f"module {index}"
    variables = [
        stored_variable(name, archive.locate(digest), record.relocated.get(name, ()), what) for name, digest in record.variables.items()
    ]
    wanted = [(f.name, {int(getattr(driver.CUfunction_attribute, a)): v for a, v in f.attributes.items()}) for f in functions]
    loaded = native.load_module(archive.fileno(), archive.locate(record.digest), context, variables, wanted, what)
    resources.add_module(loaded.module)
    return loaded


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

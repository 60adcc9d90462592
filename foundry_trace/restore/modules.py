"""Loading one recorded module in a LOAD: its binary, its stored variables (written around the
words the load itself fills in), and the functions the graphs launch from it, with the function
attributes the SAVE process had set on them."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from cuda.bindings import driver

from foundry_trace.archive.format import Archive
from foundry_trace.archive.records import FunctionRecord, ModuleRecord
from foundry_trace.binary.variables import written_ranges
from foundry_trace.driver import call
from foundry_trace.errors import ArchiveFormatError
from foundry_trace.restore.resources import LoadResources


def load_module(
    archive: Archive, record: ModuleRecord, functions: Iterable[tuple[int, FunctionRecord]], resources: LoadResources
) -> dict[int, int]:
    """Loads `record`'s binary (recorded in `resources` at once), writes its stored variables,
    and returns the CUfunction of each of `functions` (archive index -> handle)."""
    binary = archive.blob(record.digest)
    module = call(driver.cuModuleLoadData, binary)
    resources.add_module(int(module))
    for name, digest in record.variables.items():
        write_variable(module, name, archive.blob(digest), record.relocated.get(name, ()))
    found = {}
    for number, function in functions:
        handle = call(driver.cuModuleGetFunction, module, function.name.encode())
        for attribute, value in function.attributes.items():
            set_function_attribute(handle, attribute, value)
        found[number] = int(handle)
    return found


def write_variable(module: driver.CUmodule, name: str, contents: bytes, relocated: Collection[int]) -> None:
    """LOAD's write of a stored variable into its freshly loaded module: all but the words at
    `relocated`, which the load filled in. The stored contents must be exactly the variable's
    size: anything else would write past it or leave part of it as SAVE never saw it."""
    address, size = call(driver.cuModuleGetGlobal, module, name.encode())
    if len(contents) != int(size) or any(at + 8 > int(size) for at in relocated):
        raise ArchiveFormatError(
            f"module variable {name} is {int(size)} bytes, but the archive stores {len(contents)} bytes"
            + (f" with load-filled words at {sorted(relocated)}" if relocated else "")
            + " for it: the archive is corrupted or from another module; save it again"
        )
    for start, end in written_ranges(len(contents), relocated):
        call(driver.cuMemcpyHtoD, int(address) + start, contents[start:end], end - start)


def set_function_attribute(function: driver.CUfunction, name: str, value: int) -> None:
    attribute = getattr(driver.CUfunction_attribute, name)
    current = call(driver.cuFuncGetAttribute, attribute, function)
    if int(current) != value:
        call(driver.cuFuncSetAttribute, function, attribute, value)

"""What SAVE stores of a module (module_image.stored_module), on the driver: a real cubin
(tests/data/trim_kernels.cubin) loaded as the process's live module, then stored with one kernel
kept (and once with the one that branches through a jump table). Each case reports how the binary
was cut (compacted: the other kernels taken out; stubbed: cut to stubs; whole), which variables
were stored, and runs the kept kernel from the live module and from the stored one. One variable
holds another's address, which each load fills in: it is stored only where written elsewhere,
and its restored copy points into the restored module.
Prints one JSON line for tests/gpu/test_save_gpu.py."""

from __future__ import annotations

import ctypes
import json
import struct
from pathlib import Path

from cuda.bindings import driver

from foundry_trace import _native as native
from foundry_trace._driver import call, device_bytes
from foundry_trace.binary.compact import compact_cubin
from foundry_trace.binary.cubin import module_symbols
from foundry_trace.binary.trim import dropped_sections, trim_cubin
from foundry_trace.restore._modules import stored_variable
from foundry_trace.save import module_image
from foundry_trace.save.module_image import stored_module

CUBIN = (Path(__file__).resolve().parents[1] / "data" / "trim_kernels.cubin").read_bytes()
KEPT = ["_Z4keptPf"]  # calls a device function that reads a variable
VARIABLES = ["kernel_table", "scale", "tagged", "target"]  # tagged holds target's address, kernel_table a kernel's
VALUES = 32


def _cut(binary: bytes, kept: list[str]) -> str:
    if binary == compact_cubin(CUBIN, dropped_sections(CUBIN, kept)):
        return "compacted"
    return "stubbed" if binary == trim_cubin(CUBIN, kept) else "whole" if binary == CUBIN else "other"


def _run(module: driver.CUmodule, kernel: str) -> bytes:
    """A kernel of one pointer argument on the 32-bit values 0, 1, 2, ... from `module`: its
    output bytes (kept: x[i] * scale as floats; switched: a jump table on x[i] as ints)."""
    function = call(driver.cuModuleGetFunction, module, kernel.encode())
    buffer = call(driver.cuMemAlloc, VALUES * 4)
    call(driver.cuMemcpyHtoD, buffer, struct.pack(f"<{VALUES}i", *range(VALUES)), VALUES * 4)
    pointer = ctypes.c_uint64(int(buffer))
    arguments = (ctypes.c_void_p * 1)(ctypes.addressof(pointer))
    call(driver.cuLaunchKernel, function, 1, 1, 1, VALUES, 1, 1, 0, 0, ctypes.addressof(arguments), 0)
    out = bytearray(VALUES * 4)
    call(driver.cuMemcpyDtoH, out, buffer, VALUES * 4)
    call(driver.cuMemFree, buffer)
    return bytes(out)


def _variable(module: driver.CUmodule, name: str) -> bytes:
    address, size = call(driver.cuModuleGetGlobal, module, name.encode())
    return device_bytes(int(address), int(size))


def _address(module: driver.CUmodule, name: str) -> int:
    return int(call(driver.cuModuleGetGlobal, module, name.encode())[0])


def _case(live: driver.CUmodule, kept: list[str] = KEPT) -> dict[str, object]:
    stored = stored_module(CUBIN, live, kept, VARIABLES)
    variables = [stored_variable(name, contents, stored.relocated.get(name, ()), "module") for name, contents in stored.variables.items()]
    context = int(call(driver.cuCtxGetCurrent))
    batch = native.load_modules(-1, [native.ModuleRequest(stored.binary, variables, [], "the stored module")], context)  # as LOAD does
    if batch.failure is not None:
        raise batch.failure
    fresh = driver.CUmodule(batch.loaded[0].module)
    try:
        runs_the_same = all(_run(fresh, kernel) == _run(live, kernel) for kernel in kept)
        pointer, tag = struct.unpack("<Qi4x", _variable(fresh, "tagged"))
        own_pointer = pointer == _address(fresh, "target") + 4 != _address(live, "target") + 4
    finally:
        native.unload_module(int(fresh))
    return {
        "trimmed": stored.trimmed,
        "cut": _cut(stored.binary, kept),
        "reported_cut": stored.cut,
        "not_compacted": stored.not_compacted,
        "entries": sorted(module_symbols(stored.binary).entries),
        "variables": sorted(stored.variables),
        "relocated": {name: list(words) for name, words in stored.relocated.items()},
        "scale": struct.unpack("<f", _variable(live, "scale"))[0],
        "tag": tag,  # as restored
        "own_pointer": own_pointer,  # the restored tagged.pointer points into the restored module
        "runs_the_same": runs_the_same,
    }


def main() -> None:
    call(driver.cuInit, 0)
    context = call(driver.cuDevicePrimaryCtxRetain, call(driver.cuDeviceGet, 0))
    call(driver.cuCtxSetCurrent, context)
    live = call(driver.cuModuleLoadData, CUBIN)
    results = {"untouched": _case(live), "jump_table": _case(live, ["_Z8switchedPi"])}
    compact, trim = module_image.compact_cubin, module_image.trim_cubin
    module_image.compact_cubin = lambda binary, dropped: b"not a module"  # the driver refuses it
    results["compacted_refused"] = _case(live)
    module_image.trim_cubin = lambda binary, kernels: b"not a module either"
    results["both_refused"] = _case(live)
    other = ["_Z6unusedPf"]  # loads, lacks the kernel
    module_image.compact_cubin = lambda binary, dropped: compact(binary, dropped_sections(binary, other))
    module_image.trim_cubin = lambda binary, kernels: trim(binary, other)
    results["kernel_missing"] = _case(live)
    module_image.compact_cubin, module_image.trim_cubin = compact, trim
    address, _size = call(driver.cuModuleGetGlobal, live, b"scale")
    call(driver.cuMemcpyHtoD, address, struct.pack("<f", 5.0), 4)
    address, _size = call(driver.cuModuleGetGlobal, live, b"tagged")
    call(driver.cuMemcpyHtoD, int(address) + 8, struct.pack("<i", 9), 4)  # next to target's address
    results["variable_written"] = _case(live)
    call(driver.cuModuleUnload, live)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

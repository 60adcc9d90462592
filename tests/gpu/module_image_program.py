"""What SAVE stores of a module (module_image.stored_module), on the driver: a real cubin
(tests/data/trim_kernels.cubin) loaded as the process's live module, then stored with one kernel
kept. Prints one JSON line for tests/gpu/test_save_gpu.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from cuda.bindings import driver

from foundry_trace import module_image
from foundry_trace.cubin import module_symbols
from foundry_trace.driver import call
from foundry_trace.module_image import stored_module

CUBIN = (Path(__file__).resolve().parents[1] / "data" / "trim_kernels.cubin").read_bytes()
KEPT = ["_Z4keptPf"]


def _case(live: driver.CUmodule) -> dict[str, object]:
    stored = stored_module(CUBIN, live, KEPT, ["scale"])
    return {
        "trimmed": stored.trimmed,
        "smaller": len(stored.binary) < len(CUBIN),
        "entries": sorted(module_symbols(stored.binary).entries),
        "variables": {name: struct.unpack("<f", contents)[0] for name, contents in stored.variables.items()},
    }


def main() -> None:
    call(driver.cuInit, 0)
    context = call(driver.cuDevicePrimaryCtxRetain, call(driver.cuDeviceGet, 0))
    call(driver.cuCtxSetCurrent, context)
    live = call(driver.cuModuleLoadData, CUBIN)
    results = {"untouched": _case(live)}
    address, _size = call(driver.cuModuleGetGlobal, live, b"scale")
    call(driver.cuMemcpyHtoD, address, struct.pack("<f", 5.0), 4)
    results["variable_written"] = _case(live)
    refused = module_image.trim_cubin
    module_image.trim_cubin = lambda binary, kernels: b"not a module"  # the driver refuses it
    results["driver_refuses"] = _case(live)
    module_image.trim_cubin = lambda binary, kernels: refused(binary, ["_Z6unusedPf"])  # loads, lacks the kernel
    results["kernel_missing"] = _case(live)
    call(driver.cuModuleUnload, live)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

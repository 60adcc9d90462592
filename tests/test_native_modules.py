"""Loading a module natively (native.load_module, csrc/module_load.cpp) against the stand-in
driver: variables written around the load-filled words, attributes set only where they differ,
parameter sizes read, and every failure (a refused image, a missing kernel or variable, a size
that disagrees, any driver call failing) named and leaving no module loaded."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import pytest
from cuda.bindings import driver

from foundry_trace import _native as native
from foundry_trace.errors import ArchiveFormatError, DriverCallError
from foundry_trace.restore._modules import stored_variable

from . import stand_in as stand_in_driver

MAX_SHARED = int(driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
CARVEOUT = int(driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT)


def run_child(stand_in: Path, scenario: str) -> str:
    return stand_in_driver.run_child(stand_in, "test_native_modules", scenario)


def test_a_module_loads_with_its_variables_attributes_and_parameter_sizes(stand_in: Path) -> None:
    run_child(stand_in, "loads")


def test_attributes_equal_to_the_loaded_ones_are_not_set_again(stand_in: Path) -> None:
    run_child(stand_in, "attributes_unchanged")


def test_every_refusal_is_named_and_leaves_no_module(stand_in: Path) -> None:
    run_child(stand_in, "refusals")


def test_a_failure_of_any_driver_call_leaves_no_module(stand_in: Path) -> None:
    run_child(stand_in, "injected_failures")


def test_load_filled_words_past_the_stored_contents_are_refused_before_the_driver() -> None:
    with pytest.raises(ArchiveFormatError, match=r"module 3: variable table: the archive stores 16 bytes for it, with load-filled words at \[16\]"):
        stored_variable("table", bytes(16), [16], "module 3")
    assert stored_variable("table", bytes(32), [8], "module 3").ranges == [(0, 8), (16, 32)]


# --- what the child processes run ---

TABLE = bytes(range(32))  # word 8..16 is filled in by the load


def _define(fake: ctypes.CDLL) -> None:
    stand_in_driver.define_kernel(fake, "first", [(0, 8), (8, 8)])
    stand_in_driver.define_kernel(fake, "second", [(0, 8), (8, 4), (16, 8)])
    fake.fake_cuda_define_variable(b"table", 32)
    fake.fake_cuda_define_variable(b"scale", 4)


def _load(fake: ctypes.CDLL, *, image: bytes = b"image", variables: list | None = None, functions: list | None = None) -> native.LoadedModule:
    variables = [native.StoredVariable("table", TABLE, [(0, 8), (16, 32)])] if variables is None else variables
    functions = [("second", {MAX_SHARED: 65536, CARVEOUT: 50}), ("first", {})] if functions is None else functions
    return native.load_module(-1, image, fake.fake_cuda_context(), variables, functions, "module 7")


def _child_loads() -> None:
    fake = stand_in_driver.fake()
    _define(fake)
    loaded = _load(fake)
    assert loaded.module and len(set(loaded.functions)) == 2 and all(loaded.functions)
    assert loaded.param_bytes == [24, 16]
    assert 0 < loaded.times[0] <= loaded.times[1] <= time.perf_counter()  # the clock of LOAD's spans
    out = ctypes.create_string_buffer(32)
    assert fake.fake_cuda_read_variable(loaded.module, b"table", out, 32) == 32
    assert out.raw == TABLE[:8] + b"\xee" * 8 + TABLE[16:], out.raw  # the load's word kept
    assert fake.fake_cuda_function_attribute(loaded.functions[0], MAX_SHARED) == 65536
    assert fake.fake_cuda_function_attribute(loaded.functions[0], CARVEOUT) == 50
    assert fake.fake_cuda_function_attribute(loaded.functions[1], MAX_SHARED) == 0
    # A second load is a module of its own; unloading one leaves the other.
    other = _load(fake, variables=[], functions=[("first", {})])
    assert other.module != loaded.module and other.functions[0] != loaded.functions[1]
    native.unload_module(loaded.module)
    assert fake.fake_cuda_live_modules() == 1
    native.unload_module(other.module)
    assert fake.fake_cuda_live_modules() == 0
    empty = _load(fake, variables=[], functions=[])
    assert empty.functions == [] and empty.param_bytes == []
    native.unload_module(empty.module)


def _child_attributes_unchanged() -> None:
    fake = stand_in_driver.fake()
    _define(fake)
    for attributes, calls in (({MAX_SHARED: 0, CARVEOUT: 0}, 2), ({MAX_SHARED: 0, CARVEOUT: -1}, 3)):
        fake.fake_cuda_fail_call(0)  # counts calls that can fail: the load, the lookup, each set
        loaded = _load(fake, variables=[], functions=[("first", attributes)])
        assert fake.fake_cuda_calls() == calls, (attributes, fake.fake_cuda_calls())
        assert fake.fake_cuda_function_attribute(loaded.functions[0], CARVEOUT) == attributes[CARVEOUT]
        native.unload_module(loaded.module)


def _child_refusals() -> None:
    fake = stand_in_driver.fake()
    _define(fake)
    cases = [
        (dict(image=b"BAD image"), DriverCallError, "module 7: cuModuleLoadData failed with CUDA_ERROR_INVALID_IMAGE"),
        (dict(functions=[("first", {}), ("missing", {})]), DriverCallError, "cuModuleGetFunction failed with CUDA_ERROR_NOT_FOUND (500) for kernel missing"),
        (dict(variables=[native.StoredVariable("absent", bytes(8), [(0, 8)])]), DriverCallError, "for module variable absent"),
        (
            dict(variables=[native.StoredVariable("table", bytes(31), [(0, 31)])]), ArchiveFormatError,
            "module 7: module variable table is 32 bytes, but the archive stores 31 bytes for it",
        ),
        (dict(variables=[native.StoredVariable("table", TABLE, [(16, 40)])]), ArchiveFormatError, "the byte range 16-40 to write lies outside its 32 bytes"),
        (dict(variables=[native.StoredVariable("table", TABLE, [(8, 8)])]), ArchiveFormatError, "the byte range 8-8"),
    ]
    for arguments, error, message in cases:
        with pytest.raises(error) as raised:
            _load(fake, **arguments)
        assert message in str(raised.value), str(raised.value)
        assert fake.fake_cuda_live_modules() == 0, arguments


def _child_injected_failures() -> None:
    fake = stand_in_driver.fake()
    _define(fake)
    fake.fake_cuda_fail_call(0)
    native.unload_module(_load(fake).module)
    calls = fake.fake_cuda_calls()  # the load, 2 copies, 2 lookups, 2 attribute sets
    assert calls == 7, calls
    for failing in range(1, calls + 1):
        fake.fake_cuda_fail_call(failing)
        with pytest.raises(DriverCallError, match="CUDA_ERROR_OUT_OF_MEMORY"):
            _load(fake)
        assert fake.fake_cuda_live_modules() == 0, failing
    fake.fake_cuda_fail_call(0)
    native.unload_module(_load(fake).module)
    assert fake.fake_cuda_live_modules() == 0

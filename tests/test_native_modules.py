"""Loading modules natively (native.load_modules, csrc/module_load.cpp) against the stand-in
driver, one or a batch in a call: variables written around the load-filled words, attributes set only where they differ,
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


def test_a_batch_stops_at_its_first_failure_keeping_the_modules_before_it(stand_in: Path) -> None:
    run_child(stand_in, "batch")


def test_the_pipelines_module_thread_settles_every_module_of_a_batch_around_a_failure(stand_in: Path) -> None:
    run_child(stand_in, "pipeline_batch")


def test_a_module_the_archive_refuses_before_the_driver_fails_alone_and_after_the_ones_before_it(stand_in: Path) -> None:
    run_child(stand_in, "archive_batch")


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
    batch = native.load_modules(-1, [native.ModuleRequest(image, variables, functions, "module 7")], fake.fake_cuda_context())
    if batch.failure is not None:
        raise batch.failure
    return batch.loaded[0]


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


def _request(image: bytes, what: str) -> native.ModuleRequest:
    return native.ModuleRequest(image, [native.StoredVariable("table", TABLE, [(0, 8), (16, 32)])], [("first", {})], what)


def _child_batch() -> None:
    fake = stand_in_driver.fake()
    _define(fake)
    context = fake.fake_cuda_context()
    whole = native.load_modules(-1, [_request(b"image", f"module {n}") for n in range(3)], context)
    assert whole.failure is None and len(whole.loaded) == 3 and len({m.module for m in whole.loaded}) == 3
    assert all(m.functions[0] and m.param_bytes == [16] for m in whole.loaded)
    assert [m.times[0] <= m.times[1] for m in whole.loaded] == [True] * 3
    assert whole.loaded[0].times[1] <= whole.loaded[1].times[0], "loaded in order, one after another"
    for module in whole.loaded:
        native.unload_module(module.module)
    stopped = native.load_modules(-1, [_request(b"image", "module 4"), _request(b"BAD image", "module 5"), _request(b"image", "module 6")], context)
    assert len(stopped.loaded) == 1 and isinstance(stopped.failure, DriverCallError)
    assert str(stopped.failure).startswith("module 5: cuModuleLoadData failed"), str(stopped.failure)
    assert fake.fake_cuda_live_modules() == 1, "the module before the failure stays loaded, for its owner to record"
    native.unload_module(stopped.loaded[0].module)
    assert native.load_modules(-1, [], context) == native.ModulesLoaded([], None)


def _child_pipeline_batch() -> None:
    from types import SimpleNamespace

    from foundry_trace.restore import _pipeline as pipeline
    from foundry_trace.restore._resources import LoadResources

    fake = stand_in_driver.fake()
    _define(fake)
    images = {0: b"image", 1: b"BAD image", 2: b"image", 3: b"image"}

    class Batches(pipeline.Pipeline):
        """Loads stand-in images; records the batches its module thread was handed."""

        batches: list[list[int]] = []

        def _start_worker(self) -> None:
            pass

        def _load_modules(self, indices: list[int]) -> tuple[int, BaseException | None]:
            self.batches.append(list(indices))
            batch = native.load_modules(-1, [_request(images[i], f"module {i}") for i in indices], self.context)
            for loaded in batch.loaded:
                self._resources.add_module(loaded.module)
            return len(batch.loaded), batch.failure

    modules = [SimpleNamespace(size=4 - n) for n in range(4)]  # largest first: 0, 1, 2, 3
    graphs = [SimpleNamespace(key="1", modules=(0, 1, 2)), SimpleNamespace(key="2", modules=(3,))]
    manifest = SimpleNamespace(functions=[], modules=modules, graphs=graphs)
    resources = LoadResources(0)
    loading = Batches(SimpleNamespace(manifest=manifest), resources, threads=1, builders=1, chunk_nodes=0, context=fake.fake_cuda_context(),
                      started=0.0, native_chunks=False)
    loading.load_all_modules()
    with pytest.raises(DriverCallError, match="module 1: cuModuleLoadData"):
        loading.wait_for_modules()
    outcomes = {index: future.exception(timeout=10) for index, future in loading._modules.items()}
    assert [index for index, error in outcomes.items() if error is None] == [0, 2, 3], outcomes
    assert Batches.batches == [[0, 1, 2], [2], [3]], "the first step's batch, the module behind its failure, then the rest's batch"
    loading.close()
    assert fake.fake_cuda_live_modules() == 3 and resources.release().modules == 3
    assert fake.fake_cuda_live_modules() == 0


def _child_archive_batch() -> None:
    from types import SimpleNamespace

    from foundry_trace.restore import _pipeline as pipeline
    from foundry_trace.restore._modules import load_modules
    from foundry_trace.restore._resources import LoadResources

    fake = stand_in_driver.fake()
    _define(fake)
    blobs = {"good": b"image", "bad": b"BAD image", "table": TABLE}

    def module(image: str, relocated: tuple[int, ...], size: int) -> SimpleNamespace:
        return SimpleNamespace(digest=image, size=size, variables={"table": "table"}, relocated={"table": relocated})

    # Module 1 the driver refuses; module 2 the archive (a load-filled word past its variable).
    modules = [module("good", (8,), 4), module("bad", (8,), 3), module("good", (32,), 2), module("good", (8,), 1)]
    manifest = SimpleNamespace(functions=[], modules=modules, graphs=[SimpleNamespace(key="1", modules=(0, 1, 2, 3))])
    archive = SimpleNamespace(manifest=manifest, locate=blobs.__getitem__, fileno=lambda: -1)
    resources = LoadResources(0)
    context = fake.fake_cuda_context()
    first = load_modules(archive, [0, 1, 2, 3], lambda index: [], context, resources)
    assert len(first.loaded) == 1 and isinstance(first.failure, DriverCallError), first.failure
    assert str(first.failure).startswith("module 1: "), "the first failure in order, not the archive's refusal behind it"
    behind = load_modules(archive, [2, 3], lambda index: [], context, resources)
    assert behind.loaded == [] and isinstance(behind.failure, ArchiveFormatError) and "module 2: variable table" in str(behind.failure)
    assert fake.fake_cuda_live_modules() == 1 and resources.release().modules == 1 and fake.fake_cuda_live_modules() == 0

    class NoContext(pipeline.Pipeline):
        def _start_worker(self) -> None:
            pass

    resources = LoadResources(0)
    loading = NoContext(archive, resources, threads=1, builders=1, chunk_nodes=0, context=context, started=0.0, native_chunks=False)
    loading.load_all_modules()
    outcomes = {index: future.exception(timeout=10) for index, future in loading._modules.items()}
    loading.close()
    assert [type(error).__name__ for error in outcomes.values()] == ["NoneType", "DriverCallError", "ArchiveFormatError", "NoneType"], outcomes
    assert fake.fake_cuda_live_modules() == 2 and resources.release().modules == 2

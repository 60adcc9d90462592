"""The C++ libraries against hostile numbers, on the CPU: claims of ranges that wrap past 2^64,
node tables that nest child graphs deep, launch attributes that carry host pointers, kernel
arguments of the wrong size, and the inputs the native fuzz target (fuzz/native) found. Each
must end in the project's own error while the process goes on working, never in a crash.

The build loop runs against the stand-in driver of fuzz/native/fake_cuda.cpp, compiled here as
libcuda.so.1 and loaded by a child process (the library resolves the driver once per process).
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import foundry_alloc as fa
from foundry_trace import _native as native
from foundry_trace.archive import _node_table as node_table
from foundry_trace.archive._node_table import (
    BODY,
    HEADER,
    LAUNCH_ATTRIBUTES,
    MAGIC,
    MAX_GRAPH_DEPTH,
    NODE,
    VERSION,
    decode,
    encode,
)
from foundry_trace.archive.records import ChildGraphNode, Edge, GraphBody, KernelNode, walk_nodes
from foundry_trace.errors import ArchiveFormatError, DriverCallError

from . import stand_in as stand_in_driver
from .conftest import SIM_BASE, SIM_GRANULARITY, SIM_SIZE

ROOT = Path(__file__).resolve().parent.parent
NATIVE_FUZZ = ROOT / "fuzz" / "native"
FUZZ_INPUTS = sorted((NATIVE_FUZZ / "regressions").glob("*.bin")) + sorted((NATIVE_FUZZ / "corpus").glob("*.bin"))
U64 = 1 << 64
END = SIM_BASE + SIM_SIZE
ARENA = SIM_SIZE // 8

# --- 1. claims whose arithmetic would wrap ---

aligned = st.integers(min_value=0, max_value=(U64 - 1) // 512).map(lambda n: n * 512)
near_top = st.integers(min_value=1, max_value=1 << 32).map(lambda k: U64 - k)
wrapping_claims = st.one_of(
    st.tuples(st.integers(min_value=0, max_value=SIM_SIZE // 512 - 1).map(lambda n: SIM_BASE + n * 512), near_top),
    st.tuples(near_top.map(lambda a: a - a % 512), st.integers(min_value=1, max_value=U64 - 1)),
    st.tuples(aligned, near_top),
    # straddling the end of the space, and of an arena (the engine arena is the first)
    st.tuples(
        st.integers(min_value=1, max_value=4096).map(lambda k: END - 512 * k),
        st.integers(min_value=1, max_value=U64 - 1),
    ).filter(lambda c: c[0] + c[1] > END),
    st.tuples(
        st.integers(min_value=1, max_value=4096).map(lambda k: SIM_BASE + ARENA - 512 * k),
        st.integers(min_value=1, max_value=U64 - 1),
    ).filter(lambda c: c[0] + c[1] > SIM_BASE + ARENA),
)


def _snapshot(sim: fa.NativeAllocator) -> tuple:
    return sim.layout(), sim.mappings(), sim.stats()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(wrapping_claims, min_size=1, max_size=4))
def test_claims_that_wrap_past_the_space_are_refused_and_change_nothing(claims: list[tuple[int, int]]) -> None:
    sim = fa.NativeAllocator.simulated(SIM_BASE, SIM_SIZE, granularity=SIM_GRANULARITY)
    try:
        kept = sim.allocate(4096)
        before = _snapshot(sim)
        for address, size in claims:
            with pytest.raises(fa.InvalidRequestError, match=f"cannot claim \\[{address:#x}, \\+{size:#x}\\)"):
                sim.claim(address, size, fa.ENGINE)
            assert _snapshot(sim) == before
        # The heap is intact: placement, claims and frees go on as before.
        placed = sim.allocate(3 << 20)
        sim.claim(SIM_BASE + (8 << 20), 4096, fa.ENGINE)
        sim.free(placed)
        sim.free(SIM_BASE + (8 << 20))
        sim.free(kept)
        assert sim.layout().allocations == ()
    finally:
        sim.close()


def test_a_space_that_would_end_past_2_to_the_64_is_refused() -> None:
    sim = fa.NativeAllocator.simulated(U64 - (4 << 30), 8 << 30, granularity=SIM_GRANULARITY)
    try:
        with pytest.raises(fa.InvalidRequestError, match="past the end of the 64-bit address space"):
            sim.allocate(4096)
    finally:
        sim.close()


# --- 2. child graphs nested deep ---


def nested_table(depth: int) -> bytes:
    """A table whose child graphs nest `depth` deep: body i holds one child graph node naming
    body i + 1, and the last body one empty node (written directly: encode() would nest records
    as deep)."""
    bodies = depth + 1
    directory = b"".join(BODY.pack(i, 1, 0, 0) for i in range(bodies))
    child, empty = node_table._KIND_CODE["graph"], node_table._KIND_CODE["empty"]
    nodes = b"".join(NODE.pack(child, 0, 0, i + 1, 0, 0, 0, 0, 0, 0, 0, 0, 0) for i in range(depth))
    nodes += NODE.pack(empty, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return HEADER.pack(MAGIC, VERSION, bodies, bodies, 0) + directory + nodes


def test_the_nesting_cap_is_64_levels() -> None:
    assert MAX_GRAPH_DEPTH == 64


@pytest.mark.parametrize("depth", [65, 2000, 10_000])
def test_tables_nested_past_the_cap_are_refused_by_the_check_and_by_decode(depth: int) -> None:
    table = nested_table(depth)
    with pytest.raises(ArchiveFormatError, match=f"child graphs nest {depth} deep \\(at most 64"):
        native.check_table(table, b"", 0, 0)
    with pytest.raises(ArchiveFormatError, match=f"nest {depth} deep"):
        decode(table, b"", 0, 0)


@pytest.mark.parametrize("depth", [65, 10_000])
def test_decode_checks_the_depth_itself_before_building_records(depth: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python mirror of the cap, should the native check ever let a table through."""
    monkeypatch.setattr(node_table, "check_table", lambda *arguments: None)
    with pytest.raises(ArchiveFormatError, match=f"nest {depth} deep"):
        decode(nested_table(depth), b"", 0, 0)


def test_a_table_nested_64_deep_is_accepted() -> None:
    table = nested_table(MAX_GRAPH_DEPTH)
    native.check_table(table, b"", 0, 0)
    body, levels = decode(table, b"", 0, 0), 0
    while isinstance(body.nodes[0], ChildGraphNode):
        body, levels = body.nodes[0].graph, levels + 1
    assert levels == MAX_GRAPH_DEPTH
    assert len(list(walk_nodes(decode(table, b"", 0, 0).nodes))) == MAX_GRAPH_DEPTH + 1


# --- 3. launch attributes ---

# CUlaunchAttributeID (cuda.h): 0 IGNORE, 7 PROGRAMMATIC_EVENT and 12 LAUNCH_COMPLETION_EVENT (a
# CUevent), 13 DEVICE_UPDATABLE_KERNEL_NODE (a device node handle), 15 unassigned, the rest unknown.
REFUSED_ATTRIBUTES = [0, 7, 12, 13, 15, 19, 20, 64, 255, 1 << 16, (1 << 32) - 1]


def attribute_table(attribute: int) -> tuple[bytes, bytes]:
    value = struct.pack("<QII", 0x7F0012345678, 0, 1).ljust(64, b"\0")  # a host pointer, as an event holds
    node = KernelNode(
        function=0, grid=(1, 1, 1), block=(32, 1, 1), shared_bytes=0, arguments=bytes(16), attributes={attribute: value}
    )
    encoded = encode(GraphBody(nodes=(node,), edges=()))
    return encoded.table, encoded.payload


@pytest.mark.parametrize("attribute", REFUSED_ATTRIBUTES)
def test_attributes_that_may_carry_pointers_are_refused_naming_the_id(attribute: int) -> None:
    table, payload = attribute_table(attribute)
    with pytest.raises(ArchiveFormatError, match=f"launch attribute id {attribute} is not one LOAD restores"):
        native.check_table(table, payload, 1, 0)
    with pytest.raises(ArchiveFormatError, match=f"id {attribute} "):
        decode(table, payload, 1, 0)


def test_the_check_accepts_exactly_the_attributes_python_lists() -> None:
    accepted = set()
    for attribute in range(64):
        table, payload = attribute_table(attribute)
        try:
            native.check_table(table, payload, 1, 0)
            accepted.add(attribute)
        except ArchiveFormatError:
            pass
    assert accepted == LAUNCH_ATTRIBUTES


def test_an_attribute_entry_with_its_reserved_field_set_is_refused() -> None:
    table, payload = attribute_table(8)
    attributes_at = 16  # after the 16 argument bytes
    payload = payload[: attributes_at + 4] + b"\x01" + payload[attributes_at + 5 :]
    with pytest.raises(ArchiveFormatError, match=r"launch attribute #0 \(id 8\): a reserved field is set"):
        native.check_table(table, payload, 1, 0)


def test_save_records_no_attribute_the_check_refuses_but_device_updatable_nodes() -> None:
    """SAVE reads every attribute the driver names (but the two event ones); only
    DEVICE_UPDATABLE_KERNEL_NODE (13) is refused, as its value holds a handle of the saving
    process. A new id in cuda-bindings fails here until its value is judged."""
    from foundry_trace.save.graph_walker import _NODE_ATTRIBUTES

    assert {int(a) for a in _NODE_ATTRIBUTES} - LAUNCH_ATTRIBUTES == {13}


# --- 4 and 5: the build loop against the stand-in driver ---


def run_child(stand_in: Path, scenario: str) -> str:
    return stand_in_driver.run_child(stand_in, "test_native_hardening", scenario)


def test_function_param_bytes_is_the_end_of_the_last_parameter(stand_in: Path) -> None:
    run_child(stand_in, "param_bytes")


def test_function_param_bytes_is_0_where_the_driver_cannot_tell(stand_in: Path) -> None:
    run_child(stand_in, "param_bytes_unknown")


def test_kernel_arguments_shorter_than_the_parameters_are_refused(stand_in: Path) -> None:
    run_child(stand_in, "argument_sizes")


def test_the_pipeline_records_each_functions_parameter_size(stand_in: Path) -> None:
    run_child(stand_in, "pipeline")


def test_the_native_chunk_runner_restores_each_graph_or_names_its_failure(stand_in: Path) -> None:
    run_child(stand_in, "native_chunk")


def test_chunks_side_by_side_share_one_cap_on_builds(stand_in: Path) -> None:
    run_child(stand_in, "build_gate")


def test_a_pipeline_with_native_chunks_restores_the_archive_and_records_its_spans(stand_in: Path) -> None:
    run_child(stand_in, "pipeline_native")


def test_native_chunks_run_in_order_within_the_thread_budget(stand_in: Path) -> None:
    run_child(stand_in, "native_chunks_in_order")


def test_by_default_no_graph_builds_beside_the_first_steps_instantiations(stand_in: Path) -> None:
    run_child(stand_in, "default_chunks")


def test_builds_nest_up_to_the_cap(stand_in: Path) -> None:
    run_child(stand_in, "nesting")


@pytest.mark.parametrize("path", FUZZ_INPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_inputs_are_refused_or_accepted_never_a_crash(path: Path) -> None:
    table, payload = split_fuzz_input(path.read_bytes())
    try:
        native.check_table(table, payload, FUZZ_FUNCTIONS, FUZZ_EVENTS, FUZZ_COLLECTIVES)
    except ArchiveFormatError:
        with pytest.raises(ArchiveFormatError):
            decode(table, payload, FUZZ_FUNCTIONS, FUZZ_EVENTS, FUZZ_COLLECTIVES)
        return
    decode(table, payload, FUZZ_FUNCTIONS, FUZZ_EVENTS, FUZZ_COLLECTIVES)


def test_fuzz_inputs_build_or_are_refused_never_a_crash(stand_in: Path) -> None:
    outcomes = run_child(stand_in, "fuzz_inputs")
    assert "built micro_double-relu.bin" in outcomes and "built deepest.bin" in outcomes
    assert "DriverCallError short_kernel_arguments.bin" in outcomes


# As fuzz_restore.cpp and fuzz/fuzz_node_table.py.
FUZZ_FUNCTIONS = FUZZ_EVENTS = FUZZ_COLLECTIVES = 4
FUZZ_PARAMETERS = [[(0, 8), (8, 8), (16, 8), (24, 8)], [(i * 8, 8) for i in range(6)], [(0, 8), (8, 4), (16, 8)], []]


def split_fuzz_input(data: bytes) -> tuple[bytes, bytes]:
    (length,) = struct.unpack_from("<I", data)
    return data[4 : 4 + length], data[4 + length :]


# --- what the child processes run ---


def _functions(fake: ctypes.CDLL) -> list[int]:
    handles = []
    for parameters in FUZZ_PARAMETERS:
        offsets = (ctypes.c_uint64 * max(1, len(parameters)))(*(o for o, _ in parameters))
        sizes = (ctypes.c_uint64 * max(1, len(parameters)))(*(s for _, s in parameters))
        handles.append(fake.fake_cuda_function(offsets, sizes, len(parameters)))
    return handles


def _handles(fake: ctypes.CDLL) -> native.Handles:
    functions = _functions(fake)
    handles = native.Handles(
        functions,
        [fake.fake_cuda_event() for _ in range(FUZZ_EVENTS)],
        [fake.fake_cuda_graph() for _ in range(FUZZ_COLLECTIVES)],
    )
    for number, function in enumerate(functions):
        handles.param_bytes[number] = native.function_param_bytes(function)
    return handles


def _child_param_bytes() -> None:
    fake = stand_in_driver.fake()
    assert [native.function_param_bytes(f) for f in _functions(fake)] == [32, 48, 24, 0]


def _child_param_bytes_unknown() -> None:
    fake = stand_in_driver.fake()
    fake.fake_cuda_hide(b"cuFuncGetParamInfo")
    assert [native.function_param_bytes(f) for f in _functions(fake)] == [0, 0, 0, 0]


def _kernel(function: int, size: int) -> KernelNode:
    return KernelNode(function=function, grid=(1, 1, 1), block=(32, 1, 1), shared_bytes=0, arguments=bytes(size))


def _child_argument_sizes() -> None:
    fake = stand_in_driver.fake()
    handles, context = _handles(fake), fake.fake_cuda_context()
    assert list(handles.param_bytes) == [32, 48, 24, 0]
    for size in (8, 47):  # shorter: the driver would read past it
        bad = encode(GraphBody(nodes=(_kernel(0, 32), _kernel(1, size)), edges=()))
        try:
            native.build_graph(bad.table, bad.payload, handles, context, "graph 'g'")
            raise AssertionError(f"{size} bytes of arguments for 48 bytes of parameters were built")
        except DriverCallError as error:
            expected = (
                f"body 0, node 1: kernel function 1 takes 48 bytes of parameters, but the archive holds only {size} bytes"
            )
            assert expected in str(error), str(error)
        assert fake.fake_cuda_live_graphs() == FUZZ_COLLECTIVES and fake.fake_cuda_live_nodes() == 0
    # Unknown sizes (function 3, or a driver before CUDA 12.4) go unchecked; equal ones build, and
    # longer ones (the `extra` launch form hands over a whole struct, tail padding included).
    good = encode(GraphBody(nodes=(_kernel(0, 32), _kernel(1, 48), _kernel(1, 56), _kernel(2, 24), _kernel(3, 16)), edges=()))
    graph = native.build_graph(good.table, good.payload, handles, context, "graph 'g'")
    assert fake.fake_cuda_graph_nodes(graph) == 5
    native.destroy_graph(graph)


def _child_pipeline() -> None:
    from foundry_trace.archive.format import Archive
    from foundry_trace.restore._resources import LoadResources

    fake = stand_in_driver.fake()
    with Archive(ROOT / "tests" / "data" / "micro.foundry") as archive:
        NoContext = _stand_in_pipeline(fake, [f.name for f in archive.manifest.functions])  # noqa: N806 - a class
        resources = LoadResources(0)
        loading = NoContext(archive, resources, threads=1, builders=1, chunk_nodes=0, context=fake.fake_cuda_context(), started=0.0)
        assert loading._load_modules(list(range(len(archive.manifest.modules)))) == (2, None)
        assert list(loading._handles.param_bytes) == [32, 48] and all(loading._handles.functions)
        assert [(span.what, span.phase) for span in loading.spans] == [("module 0", "module"), ("module 1", "module")]
        loading.close()
        assert fake.fake_cuda_live_modules() == 2 and resources.release().modules == 2
        assert fake.fake_cuda_live_modules() == 0


def _child_native_chunk() -> None:
    fake = stand_in_driver.fake()
    handles, context = _handles(fake), fake.fake_cuda_context()
    good = encode(GraphBody(nodes=(_kernel(0, 32), _kernel(1, 48), _kernel(2, 24)), edges=(Edge(source=0, destination=1), Edge(source=1, destination=2))))
    short = encode(GraphBody(nodes=(_kernel(1, 8),), edges=()))  # 8 bytes for 48 of parameters: refused
    blobs = [(good.table, good.payload)] * 12
    blobs[3] = (b"\x00" * 16, b"")  # not a table
    blobs[7] = (short.table, short.payload)
    names = [f"graph '{n}'" for n in range(12)]
    for threads, builders in ((1, 1), (4, 2), (8, 8), (16, 3)):
        outcomes = native.restore_chunk(-1, blobs, names, handles, context, threads, native.BuildGate(builders))
        assert len(outcomes) == 12
        for number, outcome in enumerate(outcomes):
            if number == 3:
                assert isinstance(outcome.error, ArchiveFormatError) and "graph '3'" in str(outcome.error)
                assert outcome.executable == 0 and outcome.instantiate is None
            elif number == 7:
                assert isinstance(outcome.error, DriverCallError) and "graph '7'" in str(outcome.error), outcome.error
                assert "48 bytes of parameters" in str(outcome.error) and outcome.executable == 0
            else:
                assert outcome.error is None and outcome.executable != 0, outcome.error
                (built, ended), (started, done) = outcome.build, outcome.instantiate
                assert built <= ended <= started <= done
        builds_ended = max(o.build[1] for o in outcomes)
        assert all(o.instantiate is None or o.instantiate[0] >= builds_ended for o in outcomes), "an instantiation ran beside a build"
        assert len({o.executable for o in outcomes if o.executable}) == 10
        assert fake.fake_cuda_live_graphs() == FUZZ_COLLECTIVES and fake.fake_cuda_live_nodes() == 0, "a built graph was left"
        for outcome in outcomes:
            native.destroy_executable(outcome.executable)
    assert native.restore_chunk(-1, [], [], handles, context, 4, native.BuildGate(2)) == []


def _child_build_gate() -> None:
    from concurrent.futures import ThreadPoolExecutor

    fake = stand_in_driver.fake()
    handles, context = _handles(fake), fake.fake_cuda_context()
    good = encode(GraphBody(nodes=tuple(_kernel(n % 3, (32, 48, 24)[n % 3]) for n in range(200)), edges=()))
    blobs, names = [(good.table, good.payload)] * 16, [f"graph '{n}'" for n in range(16)]
    gate = native.BuildGate(1)
    with ThreadPoolExecutor(4) as pool:  # four chunks side by side, four threads each, one gate
        calls = [pool.submit(native.restore_chunk, -1, blobs, names, handles, context, 4, gate) for _ in range(4)]
        outcomes = [outcome for call in calls for outcome in call.result(60)]
    assert all(outcome.error is None for outcome in outcomes), [outcome.error for outcome in outcomes if outcome.error]
    builds = sorted(outcome.build for outcome in outcomes)
    assert all(end <= start for (_, end), (start, _) in zip(builds, builds[1:], strict=False)), "two builds ran at once"
    for outcome in outcomes:
        native.destroy_executable(outcome.executable)
    try:
        native.BuildGate(0)
        raise AssertionError("a gate of 0 builders was made")
    except ValueError as error:
        assert "builders=0" in str(error)


def _stand_in_pipeline(fake: ctypes.CDLL, kernels: list[str]) -> type:
    """Pipeline for the stand-in driver, whose modules hold `kernels` (with the parameters of
    FUZZ_PARAMETERS, in order); its workers make no context current (the stand-in has none for
    cuda.bindings)."""
    from foundry_trace.restore import _pipeline as pipeline

    for name, parameters in zip(kernels, FUZZ_PARAMETERS, strict=False):
        stand_in_driver.define_kernel(fake, name, parameters)

    class NoContext(pipeline.Pipeline):
        def _start_worker(self) -> None:
            pass

    return NoContext


def _child_pipeline_native() -> None:
    from foundry_trace.archive.format import Archive
    from foundry_trace.restore._resources import LoadResources

    fake = stand_in_driver.fake()
    with Archive(ROOT / "tests" / "data" / "micro.foundry") as archive:
        NoContext = _stand_in_pipeline(fake, [f.name for f in archive.manifest.functions])  # noqa: N806 - a class
        resources = LoadResources(0)
        loading = NoContext(
            archive, resources, threads=4, builders=2, chunk_nodes=4096, context=fake.fake_cuda_context(), started=0.0,
            native_chunks=True,
        )
        loading.queue(archive.manifest.graphs)
        executables = [loading.executable(entry).result(30) for entry in archive.manifest.graphs]
        loading.close()
        assert all(executables) and len(set(executables)) == len(archive.manifest.graphs)
        phases = [span.phase for span in loading.spans if span.worker == "native"]
        assert phases.count("build") == phases.count("instantiate") == len(archive.manifest.graphs), phases
        assert fake.fake_cuda_live_graphs() == 0
        summary = resources.release()
        assert summary.executables == len(archive.manifest.graphs) and summary.built_graphs == 0
        assert summary.modules == len(archive.manifest.modules) and fake.fake_cuda_live_modules() == 0


def _forty_small_graphs(fake: ctypes.CDLL) -> tuple[type, list, object]:
    """A pipeline class on the stand-in driver, and an archive of 40 graphs of 3 kernel nodes
    (its blobs in memory stand for those of a file)."""
    from types import SimpleNamespace

    kernels = [f"k{n}" for n in range(len(FUZZ_PARAMETERS))]
    good = encode(GraphBody(nodes=(_kernel(0, 32), _kernel(1, 48), _kernel(2, 24)), edges=(Edge(source=0, destination=1),)))
    graphs = [SimpleNamespace(key=str(n), nodes=3, modules=(0,), table="t", payload="p") for n in range(40)]
    manifest = SimpleNamespace(
        functions=[SimpleNamespace(module=0, name=name, attributes={}) for name in kernels],
        modules=[SimpleNamespace(size=1, digest="m", variables={}, relocated={})],
        graphs=graphs,
    )
    blobs = {"m": b"image", "t": good.table, "p": good.payload}
    return _stand_in_pipeline(fake, kernels), graphs, SimpleNamespace(manifest=manifest, locate=blobs.__getitem__, fileno=lambda: -1)


def _child_native_chunks_in_order() -> None:
    from foundry_trace.restore._resources import LoadResources

    fake = stand_in_driver.fake()
    NoContext, graphs, archive = _forty_small_graphs(fake)  # noqa: N806 - a class
    for chunk_nodes in (12, 3):  # chunks of 4 graphs (one call at a time), or of 1 (4 calls side by side)
        resources = LoadResources(0)
        loading = NoContext(
            archive, resources, threads=4, builders=2, chunk_nodes=chunk_nodes, context=fake.fake_cuda_context(), started=0.0,
            native_chunks=True,
        )
        loading.queue(graphs)
        executables = [loading.executable(entry).result(30) for entry in graphs]
        loading.close()
        assert all(executables) and len(set(executables)) == len(graphs)
        builds = {span.what: span for span in loading.spans if span.phase == "build"}
        if chunk_nodes == 12:
            for first in range(0, 36, 4):  # a chunk's call ends before the next one's starts
                assert max(builds[f"graph {n}"].end for n in range(first, first + 4)) <= min(
                    builds[f"graph {n}"].start for n in range(first + 4, first + 8)
                )
        assert fake.fake_cuda_live_graphs() == 0
        assert resources.release().executables == len(graphs)


def _child_default_chunks() -> None:
    from foundry_trace.restore._pipeline import DEFAULT_BUILDERS, DEFAULT_CHUNK_NODES
    from foundry_trace.restore._resources import LoadResources

    fake = stand_in_driver.fake()
    NoContext, graphs, archive = _forty_small_graphs(fake)  # noqa: N806 - a class
    resources = LoadResources(0)
    loading = NoContext(
        archive, resources, threads=4, builders=DEFAULT_BUILDERS, chunk_nodes=DEFAULT_CHUNK_NODES, context=fake.fake_cuda_context(),
        started=0.0, native_chunks=True,
    )
    loading.queue(graphs[:1])  # the first step, then the rest: the driver alone's order after it
    loading.queue(graphs)
    executables = [loading.executable(entry).result(30) for entry in graphs]
    loading.close()
    assert all(executables) and len(set(executables)) == len(graphs)
    spans = {(span.what, span.phase): span for span in loading.spans if span.worker == "native"}
    assert spans[("graph 0", "instantiate")].end <= min(spans[(f"graph {n}", "build")].start for n in range(1, 40))
    last_build = max(spans[(f"graph {n}", "build")].end for n in range(1, 40))
    assert last_build <= min(spans[(f"graph {n}", "instantiate")].start for n in range(1, 40)), "every build, then every instantiation"
    assert fake.fake_cuda_live_graphs() == 0
    assert resources.release().executables == len(graphs)


def _child_nesting() -> None:
    fake = stand_in_driver.fake()
    handles, context = _handles(fake), fake.fake_cuda_context()
    graph = native.build_graph(nested_table(MAX_GRAPH_DEPTH), b"", handles, context, "deep")
    assert fake.fake_cuda_graph_nodes(graph) == MAX_GRAPH_DEPTH + 1
    native.destroy_graph(graph)
    try:
        native.build_graph(nested_table(10_000), b"", handles, context, "deeper")
        raise AssertionError("a table nested 10,000 deep was built")
    except ArchiveFormatError as error:
        assert "nest 10000 deep" in str(error)


def _child_fuzz_inputs() -> None:
    fake = stand_in_driver.fake()
    handles, context = _handles(fake), fake.fake_cuda_context()
    for path in FUZZ_INPUTS:
        table, payload = split_fuzz_input(path.read_bytes())
        try:
            native.destroy_graph(native.build_graph(table, payload, handles, context, path.name))
            print("built", path.name)
        except (ArchiveFormatError, DriverCallError) as error:
            print(type(error).__name__, path.name)
        assert fake.fake_cuda_live_graphs() == FUZZ_COLLECTIVES and fake.fake_cuda_live_nodes() == 0, path.name

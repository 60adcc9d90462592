"""SAVE: record the graphs a program captures, with everything needed to rebuild them elsewhere.

    with foundry_trace.record("model.foundry") as rec:      # the restore point: engine state is built
        for batch in sizes:
            with rec.key(batch):
                ... warm-up; torch.cuda.graph(g): out = model(x) ...
            rec.add_output(batch, "logits", out)

The tracer must see every module a captured kernel comes from, so it should run before the
model's first kernel: call foundry_trace.start_tracing() early (FOUNDRY_MODE=save does), or the
archive is refused with the name of each kernel whose binary was missed.
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import foundry_alloc
from foundry_alloc.profiling import annotate
from foundry_trace._driver import device_bytes
from foundry_trace.archive._node_table import early_build, encode, node_kinds
from foundry_trace.archive.format import ArchiveWriter
from foundry_trace.archive.manifest import GraphEntry, Manifest, OutputReference, OutputTensor
from foundry_trace.archive.records import GraphBody, KernelNode, MemcpyNode, MemorySegment, MemsetNode, walk_nodes
from foundry_trace.errors import TracerStateError
from foundry_trace.fingerprint import current_fingerprint
from foundry_trace.save.graph_walker import GraphWalker
from foundry_trace.save.modules import FunctionTable, ModuleCut, ModuleRegistry, cut_counts
from foundry_trace.save.tracer import Listener, Tracer

SHOWN_CUTS = 5  # SAVE's report names this many of the modules that were not compacted, most kernels left first
MAX_CARRIED_BLOCK = 1 << 20  # contents of blocks created after the restore point, up to this size


class Session:
    """The process-wide tracer and what it has seen: modules from the start, graphs while a
    recording is open."""

    def __init__(self) -> None:
        self.registry = ModuleRegistry()
        self.recording: Recording | None = None
        self.tracer = Tracer(Listener(self.registry.saw_binary, self.registry.saw_load, self._graph_instantiated, self._capture_beginning))

    def _graph_instantiated(self, graph: int, graph_exec: int) -> None:
        if self.recording is not None:
            self.recording.graph_instantiated(graph, graph_exec)

    def _capture_beginning(self) -> None:
        if self.recording is not None:
            self.recording.capture_beginning()


_session: Session | None = None
_session_lock = threading.Lock()


def start_tracing() -> Session:
    """Starts the CUPTI tracer for this process (once; later calls return the same session).

    Call it before the model's first kernel: the tracer must see every module a captured kernel
    comes from (the driver loads modules lazily, at a kernel's first launch), or SAVE refuses the
    archive with MissingBinaryError naming each kernel whose binary it missed. Needs the `save`
    extra (cupti-python); CuptiUnavailableError says what is missing.

    Example:
        >>> foundry_alloc.install(); foundry_trace.start_tracing()
        >>> model = build_model()                      # its kernels' modules are seen as they load
    """
    global _session
    with _session_lock:
        if _session is None:
            session = Session()
            session.tracer.start()
            _session = session
        return _session


class Recording:
    """One archive in the making."""

    def __init__(self, path: str | Path, session: Session, *, restore_point_now: bool = True) -> None:
        self.path = Path(path)
        self._session = session
        self._functions = FunctionTable(session.registry)
        self._blobs: dict[str, tuple[bytes, bool]] = {}  # digest -> (data, compress)
        self._walker = GraphWalker(self._functions)
        self._graphs: list[tuple[str, GraphBody, int, int]] = []
        self._outputs: dict[str, list[OutputTensor]] = {}
        self._references: dict[str, list[OutputReference]] = {}
        self.metadata: dict[str, str] = {}  # stored in the manifest as it is at finish()
        self.digest: str | None = None  # the archive's, once written
        self.module_cuts: list[ModuleCut] = []  # how each module's binary was cut, once written
        self._key: str | None = None
        self._restore_layout: foundry_alloc.Layout | None = None
        self._device: int | None = None
        session.tracer.errors.clear()
        if restore_point_now:
            self.restore_point()

    def _add_blob(self, data: bytes, compress: bool = False) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self._blobs.setdefault(digest, (data, compress))
        return digest

    def restore_point(self) -> None:
        """Marks the engine's state as complete: what is live now, LOAD re-creates itself."""
        import torch

        self._device = torch.cuda.current_device()
        self._restore_layout = foundry_alloc.layout(self._device)

    def capture_beginning(self) -> None:
        """Called inside CUPTI's callback: reads the allocator's bookkeeping only, no CUDA call
        that could synchronize."""
        if self._restore_layout is None:
            self.restore_point()

    @contextmanager
    def key(self, key: object) -> Iterator[None]:
        """Graphs instantiated inside the block are saved (and restored) under `key`."""
        previous, self._key = self._key, str(key)
        try:
            with annotate(f"save.key {key}"):
                yield
        finally:
            self._key = previous

    def add_output(self, key: object, name: str, tensor) -> None:  # noqa: ANN001 - torch.Tensor
        """Declares a tensor a graph writes, so that LOAD can hand back a view of it."""
        self._outputs.setdefault(str(key), []).append(
            OutputTensor(
                name=name,
                address=tensor.data_ptr(),
                dtype=str(tensor.dtype).removeprefix("torch."),
                shape=tuple(tensor.shape),
                stride=tuple(tensor.stride()),
            )
        )

    def add_reference(self, key: object, name: str, digest: str, deterministic: bool) -> None:
        """Records what output `name` of graph `key` held after a replay on inputs the caller
        can reproduce (SHA-256 of its bytes), and whether replays agreed: `foundry verify`
        compares a restore with it."""
        self._references.setdefault(str(key), []).append(OutputReference(name=name, digest=digest, deterministic=deterministic))

    def graph_instantiated(self, graph: int, _graph_exec: int) -> None:
        key = self._key if self._key is not None else str(len(self._graphs))
        taken = {k for k, *_ in self._graphs}
        if key in taken:  # a second graph under one key: number it (key#1, key#2, ...)
            key = next(f"{key}#{n}" for n in range(1, len(taken) + 2) if f"{key}#{n}" not in taken)
        with annotate(f"save.walk {key}"):
            body, nodes, edges = self._walker.walk(graph, f"graph {key!r}")
        self._graphs.append((key, body, nodes, edges))

    def finish(self) -> Path:
        """Writes the archive (to a temporary name first, so a failure leaves nothing behind),
        keeps its digest in `self.digest` and prints it on stderr: the archive's identity, which
        LOAD can pin (FOUNDRY_ARCHIVE_DIGEST) and `foundry sign` signs."""
        if self._session.tracer.errors:
            raise self._session.tracer.errors[0]
        if self._restore_layout is None or self._device is None:
            raise TracerStateError("no graph was captured during the recording: nothing to save")
        import torch

        torch.cuda.synchronize()
        with annotate("save.write"):
            writer = ArchiveWriter(self.path)
            try:
                path = writer.finish(self._manifest(writer))
            except BaseException:
                writer.abort()
                raise
        self.digest = writer.digest
        print(f"foundry_trace: wrote {path} (digest sha256:{self.digest})", file=sys.stderr)
        _report_cuts(self.module_cuts)
        return path

    def _manifest(self, writer: ArchiveWriter) -> Manifest:
        import torch

        capability = torch.cuda.get_device_capability(self._device)
        modules, functions, self.module_cuts = self._functions.records(self._add_blob, capability)
        memory = self._memory_segments()
        for digest, (data, compress) in self._blobs.items():
            writer.add_blob(data, digest, compress=compress)
        templates: dict[str, int] = {}
        arena_of = ArenaFinder(memory, self._restore_layout)
        entries = []
        for key, body, nodes, edges in self._graphs:
            encoded = encode(body)
            template = templates.setdefault(encoded.topology, len(templates))
            used = {functions[n.function].module for n in walk_nodes(body.nodes) if isinstance(n, KernelNode)}
            entries.append(
                GraphEntry(
                    key=key,
                    template=template,
                    table=writer.add_blob(encoded.table),
                    payload=writer.add_blob(encoded.payload),
                    modules=tuple(sorted(used)),
                    outputs=tuple(self._outputs.get(key, ())),
                    nodes=body.count_nodes(),
                    edges=body.count_edges(),
                    driver_nodes=nodes,
                    driver_edges=edges,
                    copy_arenas=arena_of.copies(body),
                    early=early_build(node_kinds(encoded.table), arena_of.copies(body), foundry_alloc.GRAPH),
                    references=tuple(self._references.get(key, ())),
                )
            )
        return Manifest(
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            fingerprint=current_fingerprint(self._restore_layout),
            restore_layout=self._restore_layout,
            modules=tuple(modules),
            functions=tuple(functions),
            templates=tuple(templates),
            graphs=tuple(entries),
            memory=tuple(memory),
            events=self._walker.event_count,
            blobs=writer.blobs,
            tensor_parallel=self._walker.tensor_parallel or 1,
            collectives=self._walker.collectives,
            peer_window=self._walker.peer_window,
            metadata=self.metadata,
        )

    def _memory_segments(self) -> list[MemorySegment]:
        before = {(a.address, a.size, a.arena) for a in self._restore_layout.allocations}
        segments = [
            MemorySegment(address=address, size=size, arena=arena)
            for address, size, arena in foundry_alloc.mappings(self._device)
            if arena == foundry_alloc.GRAPH
        ]
        for block in foundry_alloc.layout(self._device).allocations:
            if block.arena == foundry_alloc.GRAPH or (block.address, block.size, block.arena) in before:
                continue
            carried = block.size <= MAX_CARRIED_BLOCK
            contents = self._add_blob(device_bytes(block.address, block.size), compress=True) if carried else None
            segments.append(MemorySegment(address=block.address, size=block.size, arena=block.arena, contents=contents))
        return segments


def _report_cuts(cuts: Sequence[ModuleCut]) -> None:
    """SAVE's line on the modules' binaries, and the costliest of those not compacted: LOAD's
    driver pays for every kernel left in a module, at every load."""
    counts = cut_counts(cuts)
    print(f"foundry_trace: modules: {counts['compacted']} compacted, {counts['stubs']} cut to stubs, {counts['whole']} whole", file=sys.stderr)
    left = sorted((cut for cut in cuts if cut.cut != "compacted" and cut.entries > cut.kept), key=lambda cut: cut.kept - cut.entries)
    for cut in left[:SHOWN_CUTS]:
        print(f"foundry_trace:   {cut.summary()}", file=sys.stderr)


def current_recording() -> Recording | None:
    """The recording open in this process, if any."""
    return _session.recording if _session is not None else None


def open_recording(path: str | Path, *, restore_point_now: bool = True) -> Recording:
    """Opens the process's recording into `path` (tracer started if it is not); without
    `restore_point_now`, the restore point is taken at the first capture (FOUNDRY_MODE=save)."""
    if foundry_alloc.installed() is None:
        raise TracerStateError(
            "recording needs the Foundry allocator, so that addresses are reproducible: call "
            "foundry_alloc.install() (or set FOUNDRY_ALLOC=1) before CUDA is first used"
        )
    session = start_tracing()
    with _session_lock:
        if session.recording is not None:
            raise TracerStateError(f"a recording into {session.recording.path} is already open")
        session.recording = Recording(path, session, restore_point_now=restore_point_now)
        return session.recording


def close_recording(recording: Recording) -> bool:
    """Stops `recording` from seeing further graphs; False if it was not the open one."""
    with _session_lock:
        if _session is None or _session.recording is not recording:
            return False
        _session.recording = None
        return True


@contextmanager
def record(path: str | Path) -> Iterator[Recording]:
    """Records the graphs instantiated inside the block into the archive at `path`, written
    when the block ends (atomically: a failure leaves no file). The start of the block is the
    restore point: what is allocated then is the engine's, re-created by the engine at LOAD.

    Args:
        path: the archive to write.

    Yields:
        The Recording: key(k) names the graphs captured in its block, add_output(k, name,
        tensor) declares an output LOAD hands back, add_reference() stores a checked result.

    Raises:
        TracerStateError (no allocator, a recording already open, nothing captured),
        UnsupportedNodeError (a node kind that cannot be persisted, named), MissingBinaryError.

    Example:
        >>> foundry_alloc.install(); foundry_trace.start_tracing()
        >>> engine = build_engine()
        >>> with foundry_trace.record("model.foundry") as rec:
        ...     with rec.key(8):
        ...         with torch.cuda.graph(graph): out = engine.step(8)
        ...     rec.add_output(8, "logits", out)
    """
    recording = open_recording(path)
    try:
        with annotate("save"):
            yield recording
            recording.finish()
    finally:
        close_recording(recording)


class ArenaFinder:
    """The arena an address lies in: of the recorded memory, else of the engine's layout."""

    def __init__(self, memory: list[MemorySegment], layout: foundry_alloc.Layout) -> None:
        ranges = [(m.address, m.size, m.arena) for m in memory] + [(a.address, a.size, a.arena) for a in layout.allocations]
        self._ranges = sorted(ranges)
        self._starts = [start for start, _, _ in self._ranges]

    def arena(self, address: int) -> str:
        index = bisect.bisect_right(self._starts, address) - 1  # arenas are disjoint slices
        if index >= 0 and address < self._starts[index] + self._ranges[index][1]:
            return self._ranges[index][2]
        return "unknown"

    def copies(self, body: GraphBody) -> tuple[str, ...]:
        """The arenas the graph's memset and memcpy nodes name."""
        arenas = set()
        for node in walk_nodes(body.nodes):
            if isinstance(node, MemsetNode):
                arenas.add(self.arena(node.destination))
            elif isinstance(node, MemcpyNode):
                arenas |= {self.arena(node.source), self.arena(node.destination)}
        return tuple(sorted(arenas))

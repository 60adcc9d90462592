"""SAVE in one process, LOAD in another: python -m tests.gpu.load_program SCENARIO ARCHIVE

save: the tiny workload, with its graphs' outputs on fixed inputs stored in the archive.
load: eager LOAD, compared with SAVE's graphs and a native capture; release() frees everything.
modes: background and lazy LOAD give the same outputs; a lazy graph restores at its first replay.
prefetch: prefetch() as the first thing the process does (no CUDA context yet), the engine built
    meanwhile, then LOAD at the restore point, eager, background and lazy: the same outputs.
save-streams: the streams workload (memset and memcpy nodes into memory the capture allocated).
prefetch-copies: prefetch() of that archive at process start builds every graph, memsets and
    memcpys included, before the restore point; LOAD then gives SAVE's outputs.
wrong-layout: an engine that allocated one more buffer is refused, and nothing changes.
graph-memory-held: so is a process holding a graph of its own where SAVE's graphs had memory.
refusals: a wrong fingerprint, a missing section, a corrupted blob and a graph the driver refuses,
    each three times on copies of the archive: each raises its error and leaves device memory,
    allocator state and the rest of the process unchanged; a correct LOAD then still works.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import foundry_alloc as fa
import foundry_trace as ft
from foundry_trace.archive import Archive
from foundry_trace.archive.keys import key_order
from foundry_trace.bench import damage
from foundry_trace.bench.verify import saved_references
from foundry_trace.bench.workloads.registry import build_engine

from .save_program import save_tiny


def saved_outputs(path: str) -> dict[str, dict[str, object]]:
    with Archive(path) as archive:
        return saved_references(archive.manifest)


def save(path: str) -> dict[str, object]:
    save_tiny(path, references=True)
    return {"saved": True}


def load(path: str) -> dict[str, object]:
    fa.install()
    from foundry_trace.bench.verify import compare

    model = build_engine("tiny")
    restored = ft.load(path)
    result = compare(model, restored, saved_outputs(path), latency_batches=(1, 8))
    stats_before = fa.stats().live_blocks
    restored.release()
    result["released_blocks"] = stats_before - fa.stats().live_blocks
    result["phases"] = restored.phases
    return result


def _against_saved(model: object, restored: ft.Restored, saved: dict[str, dict[str, object]]) -> dict[str, object]:
    """Every restored graph's output on fixed inputs against SAVE's (replaying restores a lazy one)."""
    from foundry_trace.bench.verify import differing_from_saved, restored_digests

    digests = restored_digests(model, restored)
    return {"equal_saved": not differing_from_saved(digests, saved), "compared": sum(saved[k]["deterministic"] for k in digests)}


def modes(path: str) -> dict[str, object]:
    fa.install()
    import torch

    model = build_engine("tiny")
    saved = saved_outputs(path)
    with Archive(path) as archive:
        graphs = archive.manifest.graphs
    result: dict[str, object] = {}
    for mode in ("background", "lazy"):
        restored = ft.load(path, mode=mode)
        ready_at_return = sum(g.ready() for g in restored.graphs.values())
        started = sorted(restored.pipeline.queued_graphs())  # graphs queued by LOAD itself
        compared = _against_saved(model, restored, saved)
        restored.wait()
        first = min(restored.graphs, key=key_order)
        module_end = {s.what: s.end for s in restored.spans if s.phase == "module"}
        build_start = {s.what: s.start for s in restored.spans if s.phase == "build"}
        after_modules = all(build_start[f"graph {e.key}"] >= module_end[f"module {m}"] for e in graphs for m in e.modules)
        result[mode] = {
            "ready_at_return": ready_at_return, "started": started, "first": first, "order": list(restored.graphs),
            "builds_after_modules": after_modules, **compared,
        }
        restored.release()
        torch.cuda.synchronize()
    return result


def prefetched(path: str) -> dict[str, object]:
    fa.install()
    import torch

    saved = saved_outputs(path)
    result: dict[str, object] = {}
    model = None
    for mode in ("eager", "background", "lazy"):
        early = ft.prefetch(path)  # the first time round, before anything touched the GPU
        model = model or build_engine("tiny")
        restored = ft.load(early, mode=mode)
        result[mode] = _against_saved(model, restored, saved)
        restored.release()
        torch.cuda.synchronize()
    return result


def save_streams(path: str) -> dict[str, object]:
    from foundry_trace.bench.roles import save as save_workload

    return save_workload("streams", path, {})


def prefetched_copies(path: str) -> dict[str, object]:
    fa.install()
    with Archive(path) as archive:
        graphs = len(archive.manifest.graphs)
        copy_arenas = sorted({arena for g in archive.manifest.graphs for arena in g.copy_arenas or ("unrecorded",)})
    early = ft.prefetch(path)
    model = build_engine("streams")
    deadline = time.monotonic() + 120
    while sum(s.phase == "instantiate" for s in early.spans) < graphs and time.monotonic() < deadline:
        time.sleep(0.01)  # the early graphs, given all the time they need
    built_early = sum(s.phase == "instantiate" for s in early.spans)
    restored = ft.load(early)
    result = _against_saved(model, restored, saved_outputs(path))
    restored.release()
    return {**result, "graphs": graphs, "built_early": built_early, "copy_arenas": copy_arenas}


def wrong_layout(path: str) -> dict[str, object]:
    """An engine that allocates one more buffer than at SAVE must be refused, and leave nothing."""
    fa.install()
    import torch

    model = build_engine("tiny")
    extra = torch.empty(1 << 20, device="cuda")
    before = (fa.stats().live_blocks, fa.stats().mapped_bytes)
    try:
        ft.load(path)
    except ft.LayoutMismatchError as error:
        return {"error": str(error), "unchanged": before == (fa.stats().live_blocks, fa.stats().mapped_bytes), "extra": extra.numel() + model.shape.layers}
    return {"error": None}


def graph_memory_held(path: str) -> dict[str, object]:
    """A process that holds a graph of its own (its memory where SAVE's graphs had theirs) must
    be refused with the layout diff, and left as it was: by load(), and by load() after
    prefetch() (which claims the graph memory first, and must step back)."""
    fa.install()
    import torch

    _engine = build_engine("tiny")  # the engine SAVE's layout recorded, alive until the end
    own = torch.cuda.CUDAGraph()
    with torch.cuda.graph(own):
        _held = torch.ones(1 << 16, device="cuda") * 2  # allocated in the graph's pool, held to the end
    result: dict[str, object] = {}
    for way, attempt in (("load", lambda: ft.load(path)), ("prefetch", lambda: ft.load(ft.prefetch(path)))):
        before = (fa.stats().live_blocks, fa.stats().mapped_bytes)
        try:
            attempt()
            result[way] = {"error": None, "raised": None}
        except ft.LayoutMismatchError as error:
            result[way] = {"error": str(error), "unchanged": before == (fa.stats().live_blocks, fa.stats().mapped_bytes)}
        except Exception as error:  # noqa: BLE001 - reported: the test names what was raised instead
            result[way] = {"error": None, "raised": f"{type(error).__name__}: {error}"}
    return result


FAILURES = {
    "fingerprint": (damage.wrong_fingerprint, ft.FingerprintMismatchError, "torch"),
    "missing_section": (damage.missing_section, ft.ArchiveFormatError, "not indexed"),
    "corrupted_blob": (damage.corrupted_graph, ft.ArchiveFormatError, "corrupted"),
    "driver_refusal": (damage.refused_by_driver, ft.DriverCallError, "cuGraphAddNode"),
}


def refusals(path: str) -> dict[str, object]:
    fa.install()
    import torch

    model = build_engine("tiny")
    torch.cuda.synchronize()

    def state() -> tuple[int, int, int]:
        torch.cuda.synchronize()
        stats = fa.stats()
        return stats.live_blocks, stats.mapped_bytes, torch.cuda.mem_get_info()[0]

    ft.load(path).release()  # the driver keeps some memory after a first LOAD: measure from here
    result: dict[str, object] = {}
    before = state()
    for name, (edit, error_class, phrase) in FAILURES.items():
        copy = Path(path).with_name(f"{name}.foundry")
        shutil.copyfile(path, copy)
        edit(copy)
        outcomes = []
        for _ in range(3):
            try:
                ft.load(copy)
                outcomes.append("loaded")
            except error_class as error:
                outcomes.append("refused" if phrase in str(error) else f"wrong message: {error}")
            except Exception as error:  # noqa: BLE001 - reported, the test fails on it
                outcomes.append(f"{type(error).__name__}: {error}")
        after = state()
        result[name] = {"outcomes": outcomes, "unchanged": after == before, "before": before, "after": after}
    restored = ft.load(path)
    restored[1].replay()
    torch.cuda.synchronize()
    restored.release()
    result["retry_loads"] = True
    result["unchanged_after_retry"] = state() == before
    result["layers"] = model.shape.layers
    return result


def trust(path: str) -> dict[str, object]:
    """A signed archive restores with its key trusted; unsigned, by an untrusted key or changed
    after signing, it is refused at open, before any module, event or memory exists."""
    fa.install()
    import torch

    from foundry_trace.archive.signing import generate_key, sign_archive

    model = build_engine("tiny")
    folder = Path(path).parent / "trust"
    folder.mkdir(exist_ok=True)
    release, _ = generate_key(folder / "release.key")
    stranger, _ = generate_key(folder / "stranger.key")
    signed = folder / "signed.foundry"
    shutil.copyfile(path, signed)
    sign_archive(signed, release)
    trusted = [f"{release}.pub"]

    def state() -> tuple[int, int, int]:
        torch.cuda.synchronize()
        return fa.stats().live_blocks, fa.stats().mapped_bytes, torch.cuda.mem_get_info()[0]

    ft.load(signed, trusted_keys=trusted).release()
    before = state()
    restored = ft.load(signed, trusted_keys=trusted)
    result: dict[str, object] = {"signed": _against_saved(model, restored, saved_outputs(path))}
    restored.release()
    tampered = folder / "tampered.foundry"
    shutil.copyfile(signed, tampered)
    with Archive(signed) as archive:
        block = signed.read_bytes()[archive.manifest_end :]

    def change(manifest: dict, _: int) -> bytes:
        manifest["graphs"][0]["nodes"] += 1
        return b""

    damage.rewrite_manifest(tampered, change)
    tampered.write_bytes(tampered.read_bytes() + block)  # the old signature kept
    for name, archive, keys in (("unsigned", path, trusted), ("stranger", signed, [f"{stranger}.pub"]), ("tampered", tampered, trusted)):
        try:
            ft.load(archive, trusted_keys=keys)
            result[name] = "loaded"
        except ft.UntrustedArchiveError as error:
            result[name] = f"refused: {error}"
    result["unchanged"] = state() == before
    return result


def lazy_failure(path: str) -> dict[str, object]:
    """A lazy (and a background) load of an archive whose last graph is corrupted: the good
    graphs restore and replay; the bad one raises at its replay, after the whole load was
    released (the error says what), and the process is as before."""
    fa.install()
    import torch

    model = build_engine("tiny")
    copy = Path(path).with_name("lazy-failure.foundry")
    shutil.copyfile(path, copy)
    damage.corrupted_graph(copy)

    def state() -> tuple[int, int, int]:
        torch.cuda.synchronize()
        return fa.stats().live_blocks, fa.stats().mapped_bytes, torch.cuda.mem_get_info()[0]

    ft.load(path).release()
    before = state()
    result: dict[str, object] = {}
    bad = damage.read_manifest(copy)["graphs"][-1]["key"]  # the graph corrupted_graph() damaged
    for mode in ("lazy", "background"):
        restored = ft.load(copy, mode=mode)
        good = restored[next(key for key in restored.graphs if key != bad)]
        good.replay()
        torch.cuda.synchronize()
        try:
            restored[bad].replay()
            result[mode] = {"error": None}
        except ft.ArchiveFormatError as error:
            try:
                good.replay()
                after_release = "replayed"
            except ft.GraphReleasedError:
                after_release = "refused"
            result[mode] = {"error": str(error), "first_after_release": after_release, "unchanged": state() == before}
    result["layers"] = model.shape.layers
    return result


SCENARIOS = {
    "save": save, "load": load, "modes": modes, "prefetch": prefetched, "save-streams": save_streams,
    "prefetch-copies": prefetched_copies, "wrong-layout": wrong_layout, "graph-memory-held": graph_memory_held, "refusals": refusals,
    "trust": trust, "lazy-failure": lazy_failure,
}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](sys.argv[2])))

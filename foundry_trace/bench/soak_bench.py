"""`foundry bench soak`: every kind of failed LOAD, many times over, must leave the process as
it was; then a good LOAD still restores graphs equal to SAVE's.

A fresh child process builds the engine, then for each failure kind loads a damaged copy of one
archive ITERATIONS times (each raising its own error), with a warm-up of every kind first. It
compares before and after: host memory (resident set), open files, threads, Foundry's live
handles (modules, events, executables, collective graphs), the allocator's arena names, live
blocks and mapped bytes, and the device's free memory. Failure kinds:

    fingerprint      saved for another torch                        refused at open
    missing_section  a node table the manifest does not index       refused at open
    unsigned         no signature, where a key is trusted           refused at open
    tampered         a manifest changed after it was signed         refused at open
    layout           the engine holds one more buffer than at SAVE  refused at the restore point
    corrupted_graph  the last graph's payload fails its checksum    after modules and other graphs
    driver_refusal   a kernel of 0 threads, which the driver refuses after modules and other graphs
    lazy_failure     a lazy load whose corrupted graph is replayed  at that replay
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from foundry_trace.bench.children import child_main, note, phase, run_child
from foundry_trace.bench.results import device_fields
from foundry_trace.bench.roles import run_role

MODULE = "foundry_trace.bench.soak_bench"
ITERATIONS = 1000
HOST_MEMORY_SLACK = 32 << 20  # Python's own heap moves by a few MB over thousands of loads


def _state() -> dict[str, object]:
    import torch

    import foundry_alloc as fa
    from foundry_trace.restore._resources import live_handles

    gc.collect()
    torch.cuda.synchronize()
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    stats = fa.stats()
    return {
        "rss_bytes": int(status["VmRSS"].split()[0]) * 1024,
        "open_files": len(os.listdir("/proc/self/fd")),
        "threads": int(status["Threads"]),
        "python_threads": threading.active_count(),
        "live_handles": live_handles(),
        "arena_names": list(fa.arena_names()),
        "live_blocks": stats.live_blocks,
        "mapped_bytes": stats.mapped_bytes,
        "device_free_bytes": torch.cuda.mem_get_info()[0],
    }


def _unchanged(before: dict[str, object], after: dict[str, object]) -> dict[str, bool]:
    return {
        name: (after[name] - before[name] <= HOST_MEMORY_SLACK) if name == "rss_bytes" else after[name] == before[name]
        for name in before
    }


def child(workload: str, archive: str, iterations: int) -> dict[str, object]:
    import foundry_alloc as fa

    fa.install()
    import torch

    import foundry_trace as ft
    from foundry_trace.archive import Archive, generate_key, sign_archive
    from foundry_trace.bench import damage
    from foundry_trace.bench.verify import differing_from_saved, restored_digests, saved_references
    from foundry_trace.bench.workloads.registry import build_engine

    phase("engine")
    engine = build_engine(workload)
    folder = Path(tempfile.mkdtemp(prefix="foundry-soak-"))
    key, _ = generate_key(folder / "release.key")
    trusted = [f"{key}.pub"]

    def copy(name: str, edit: Callable[[Path], None] | None = None) -> Path:
        path = folder / f"{name}.foundry"
        shutil.copyfile(archive, path)
        if edit is not None:
            edit(path)
        return path

    signed = copy("signed", lambda p: sign_archive(p, key))
    tampered = copy("tampered")

    def change(manifest: dict, _: int) -> bytes:
        manifest["graphs"][0]["nodes"] += 1
        return b""

    with Archive(signed) as opened:
        block = signed.read_bytes()[opened.manifest_end :]
    damage.rewrite_manifest(tampered, change)
    tampered.write_bytes(tampered.read_bytes() + block)
    corrupted = copy("corrupted", damage.corrupted_graph)
    bad_key = damage.read_manifest(corrupted)["graphs"][-1]["key"]  # the graph corrupted_graph() damaged

    def lazy_failure() -> ft.Restored:
        restored = ft.load(corrupted, mode="lazy", threads=2)
        restored[bad_key].replay()
        return restored

    def layout() -> ft.Restored:
        extra = torch.empty(1 << 20, device="cuda")
        try:
            return ft.load(archive, threads=2)
        finally:
            del extra

    kinds: dict[str, tuple[Callable[[], object], type[Exception]]] = {
        "fingerprint": (lambda p=copy("fingerprint", damage.wrong_fingerprint): ft.load(p, threads=2), ft.FingerprintMismatchError),
        "missing_section": (lambda p=copy("missing", damage.missing_section): ft.load(p, threads=2), ft.ArchiveFormatError),
        "unsigned": (lambda: ft.load(archive, threads=2, trusted_keys=trusted), ft.UntrustedArchiveError),
        "tampered": (lambda: ft.load(tampered, threads=2, trusted_keys=trusted), ft.UntrustedArchiveError),
        "layout": (layout, ft.LayoutMismatchError),
        "corrupted_graph": (lambda: ft.load(corrupted, threads=2), ft.ArchiveFormatError),
        "driver_refusal": (lambda p=copy("refused", damage.refused_by_driver): ft.load(p, threads=2), ft.DriverCallError),
        "lazy_failure": (lazy_failure, ft.ArchiveFormatError),
    }

    def attempt(kind: str) -> str:
        run, expected = kinds[kind]
        try:
            loaded = run()
        except expected:
            return "refused"
        except Exception as error:  # noqa: BLE001 - reported: the bench fails on it
            return f"{type(error).__name__}: {str(error)[:300]}"
        loaded.release()  # a load that should have failed: reported, and kept from spoiling the next ones
        return "loaded"

    phase("warm-up")
    ft.load(archive, threads=2).release()  # the driver keeps some memory after a first LOAD
    warm_up = {kind: attempt(kind) for kind in kinds}
    before = _state()
    results = {}
    for kind in kinds:
        phase(kind)
        started = time.perf_counter()
        outcomes = [attempt(kind) for _ in range(iterations)]
        refused = outcomes.count("refused")
        results[kind] = {"refused": refused, "other": sorted(set(o for o in outcomes if o != "refused"))[:3],
                         "seconds": time.perf_counter() - started}
        note(f"{kind}: {refused} of {iterations} refused in {results[kind]['seconds']:.1f} s")
    after = _state()
    phase("good load")
    try:
        restored = ft.load(archive, threads=2)
        mismatched = differing_from_saved(restored_digests(engine, restored), saved_references(restored.archive.manifest))
        graphs = len(restored.graphs)
        restored.release()
    except Exception as error:  # noqa: BLE001 - reported as the bench's result
        mismatched, graphs = [f"{type(error).__name__}: {str(error)[:500]}"], 0
    shutil.rmtree(folder)
    return {
        "iterations": iterations, "warm_up": warm_up, "kinds": results, "before": before, "after": after,
        "unchanged": _unchanged(before, after), "good_load_equal_saved": not mismatched, "good_load_graphs": graphs,
        **device_fields(),
    }


def run(workload: str, output_dir: Path | None, iterations: int = ITERATIONS) -> dict[str, object]:
    from foundry_trace.bench.results import Case, ResultsFile

    with tempfile.TemporaryDirectory(prefix="foundry-soak-") as scratch:
        archive = Path(scratch) / f"{workload}.foundry"
        saved = run_role("save", workload, archive)
        soaked = run_child(MODULE, [workload, str(archive), str(iterations)])
    leak_free = all(soaked["unchanged"].values())
    case = Case(
        name=f"{workload}-soak", graphs=saved["graphs"], iterations=iterations, kinds=soaked["kinds"], warm_up=soaked["warm_up"],
        before=soaked["before"], after=soaked["after"], unchanged=soaked["unchanged"], leak_free=leak_free,
        every_failure_refused=all(k["refused"] == iterations for k in soaked["kinds"].values()),
        good_load_equal_saved=soaked["good_load_equal_saved"], host_memory_slack_bytes=HOST_MEMORY_SLACK,
    )
    results = ResultsFile.of_this_run(
        soaked,
        what="soak", workload=f"{workload}-{iterations}x{len(soaked['kinds'])}",
        workload_desc=f"{saved['description']}; {iterations} failed loads of each of {len(soaked['kinds'])} kinds in one process, then one good load",
        gpus=1, cases=[case],
    )
    if output_dir is not None:
        results.write(output_dir)
    return results.model_dump()


def render(results: dict[str, object]) -> str:
    c = results["cases"][0]
    lines = [f"{results['device']} / {results['workload']}: {c['iterations']} failed loads of each kind, then a good load"]
    for kind, outcome in c["kinds"].items():
        lines.append(f"  {kind:<16} refused {outcome['refused']:>5} of {c['iterations']} ({outcome['seconds']:.1f} s)"
                     + (f"  other outcomes: {outcome['other']}" if outcome["other"] else ""))
    changed = [name for name, same in c["unchanged"].items() if not same]
    lines.append(f"  process unchanged: {not changed}" + (f" (changed: {', '.join(changed)})" if changed else "")
                 + f"; host memory {c['before']['rss_bytes'] / 2**20:.0f} -> {c['after']['rss_bytes'] / 2**20:.0f} MiB")
    lines.append(f"  then a good load equal to SAVE's graphs: {c['good_load_equal_saved']}")
    return "\n".join(lines)


def _run(arguments: argparse.Namespace) -> dict[str, object]:
    return child(arguments.workload, arguments.archive, arguments.iterations)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="the child process of `foundry bench soak`")
    parser.add_argument("workload")
    parser.add_argument("archive")
    parser.add_argument("iterations", type=int)
    return parser


if __name__ == "__main__":
    child_main(_run, _parser())

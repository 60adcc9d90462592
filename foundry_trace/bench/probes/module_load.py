"""What does loading an archive's modules cost the driver alone, against what LOAD's module tasks
take? The parent reads every module image out of the archive (timing the read: checksum, and
inflating where stored compressed); each variant then runs in a fresh process (torch's context
up, as an engine's would be) and loads every module largest first, timing per module
cuModuleLoadData, cuModuleGetFunction of the functions the graphs use, and cuFuncLoad:

  serial      one thread
  smallest-first  one thread, the smallest module first (is the first load a once-a-process
              cost, or the largest module's own?)
  threads-8   8 threads (wall time; the per-module sums include the driver's lock waits)
  side-N      N processes on the same GPU, each on one thread, starting together (as N
              tensor-parallel ranks sharing a GPU load theirs): each process's figures and
              the slowest's wall time; side-1 is serial behind the same start barrier
  eager-V     V with CUDA_MODULE_LOADING=EAGER (torch's default is LAZY): every function's
              code goes to the GPU in cuModuleLoadData instead of at cuModuleGetFunction
  no-debug    serial, each module without its debug sections (.debug_frame and its relocations,
              taken out by binary/compact.py; as stored where that declines): does the load pay
              for the frames of the kernels SAVE took out?

The first line describes the archive's modules: the largest ones' sections by size (what
cuModuleLoadData has to set up: code, constant banks, initialised globals, relocations), their
symbols by kind and relocations by section, and what taking the debug sections out leaves.

  python -m foundry_trace.bench.probes.module_load ARCHIVE [VARIANT ...]   (ARCHIVE from `foundry bench save --archive`)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from foundry_trace.bench.children import run_ranks
from foundry_trace.bench.probes.variants import child_entry, print_variants
from foundry_trace.errors import ChildProcessFailed

MODULE = "foundry_trace.bench.probes.module_load"

VARIANTS = ("serial", "smallest-first", "threads-8", "side-1", "side-4", "side-8", "eager-serial", "eager-side-8", "no-debug")
BARRIER_TIMEOUT_S = 120.0  # the side-by-side processes' start: each builds its context first


def _prepare(archive: str, folder: Path) -> list[dict[str, object]]:
    from foundry_trace.archive.format import Archive

    modules = []
    with Archive(archive) as opened:
        manifest = opened.manifest
        names: dict[int, list[str]] = {}
        for function in manifest.functions:
            names.setdefault(function.module, []).append(function.name)
        for index, record in enumerate(manifest.modules):
            start = time.perf_counter()
            image = opened.blob(record.digest)
            read_s = time.perf_counter() - start
            (folder / str(index)).write_bytes(image)
            stripped = without_debug(image)
            (folder / f"{index}.no-debug").write_bytes(image if isinstance(stripped, str) else stripped)
            codec = manifest.blobs[record.digest].codec
            modules.append({"index": index, "bytes": len(image), "codec": codec, "read_s": read_s, "functions": names.get(index, []),
                            "sections": section_sizes(image), "symbols": symbol_counts(image),
                            "no_debug": stripped if isinstance(stripped, str) else len(stripped)})
    return sorted(modules, key=lambda m: -int(m["bytes"]))


def _elf(image: bytes) -> tuple[list[tuple], list] | str:
    """The image's raw section headers and its sections, names included (the trimmer's bounded
    reader), or what the image is where they cannot be read (a fatbin's cubins are not opened)."""
    from foundry_trace.binary.cubin import ELF_MAGIC
    from foundry_trace.binary.trim import _parse
    from foundry_trace.errors import CubinFormatError

    if not image.startswith(ELF_MAGIC):
        return "not an ELF image (a fatbin)"
    try:
        _header, raw, sections = _parse(image)
    except CubinFormatError as error:
        return f"unreadable ELF: {error}"
    return raw, sections


def section_sizes(image: bytes, shown: int = 8) -> list[tuple[str, int]] | str:
    """The `shown` largest sections of a cubin, (name, bytes), NOBITS ones (.nv.shared.*,
    .nv.global: memory the load reserves, not bytes it reads) named with a trailing " (nobits)";
    what the image is where it is no readable ELF (_elf())."""
    from foundry_trace.binary.cubin import SHT_NOBITS

    elf = _elf(image)
    if isinstance(elf, str):
        return elf
    sized = [(section.name + (" (nobits)" if section.kind == SHT_NOBITS else ""), section.size) for section in elf[1][1:]]
    return sorted(sized, key=lambda pair: -pair[1])[:shown]


def symbol_counts(image: bytes) -> dict[str, object] | str:
    """A cubin's symbols by kind (functions, data objects, sections, other) and the entries of
    each relocation section (what the load resolves), or why they are unreadable."""
    from foundry_trace.binary.cubin import SHT_SYMTAB, STT_FUNC, STT_OBJECT, STT_SECTION, symbol_table
    from foundry_trace.binary.trim import SHT_REL, SHT_RELA
    from foundry_trace.errors import CubinFormatError

    elf = _elf(image)
    if isinstance(elf, str):
        return elf
    raw, sections = elf
    counts = {"functions": 0, "objects": 0, "sections": 0, "other": 0}
    try:
        for index, section in enumerate(sections):
            if section.kind == SHT_SYMTAB:
                for symbol in symbol_table(image, raw, index)[1][1:]:
                    kind = symbol[1] & 0xF
                    counts["functions" if kind == STT_FUNC else "objects" if kind == STT_OBJECT else "sections" if kind == STT_SECTION else "other"] += 1
    except CubinFormatError as error:
        return f"unreadable ELF: {error}"
    relocations = {s.name: s.size // (24 if s.kind == SHT_RELA else 16) for s in sections if s.kind in (SHT_REL, SHT_RELA)}
    return {**counts, "relocations": dict(sorted(relocations.items(), key=lambda pair: -pair[1])[:6])}


def without_debug(image: bytes) -> bytes | str:
    """The cubin without its debug sections and their relocations (binary/compact.py, which
    renumbers what stays), or why not."""
    from foundry_trace.binary.compact import compact_cubin
    from foundry_trace.binary.cubin import ELF_MAGIC
    from foundry_trace.binary.trim import _DEBUG_SECTIONS, _parse
    from foundry_trace.errors import CompactionDeclined, CubinFormatError

    if not image.startswith(ELF_MAGIC):
        return "not an ELF image (a fatbin)"
    try:
        debug = {index for index, section in enumerate(_parse(image)[2]) if index and section.name.startswith(_DEBUG_SECTIONS)}
        stripped = compact_cubin(image, debug)
    except (CompactionDeclined, CubinFormatError) as error:
        return f"kept: {error}"
    return stripped if stripped is not None else "kept: no debug sections"


def _load_one(folder: Path, module: dict[str, object], suffix: str = "") -> dict[str, object]:
    from cuda.bindings import driver

    image = (folder / f"{module['index']}{suffix}").read_bytes()
    start = time.perf_counter()
    error, handle = driver.cuModuleLoadData(image)
    assert error == driver.CUresult.CUDA_SUCCESS, error
    loaded = time.perf_counter()
    functions = []
    for name in module["functions"]:
        error, function = driver.cuModuleGetFunction(handle, str(name).encode())
        assert error == driver.CUresult.CUDA_SUCCESS, (name, error)
        functions.append(function)
    got = time.perf_counter()
    for function in functions:
        (error,) = driver.cuFuncLoad(function)
        assert error == driver.CUresult.CUDA_SUCCESS, error
    return {"index": module["index"], "load_s": loaded - start, "get_s": got - loaded, "func_load_s": time.perf_counter() - got}


def side_by_side(variant: str) -> int:
    """How many processes a variant runs at once (side-N: N; otherwise 1)."""
    base = variant.removeprefix("eager-")
    return int(base.split("-")[1]) if base.startswith("side-") else 1


def _start_together(folder: Path, variant: str, processes: int) -> None:
    """Marks this process ready and returns once `processes` processes of `variant` are."""
    (folder / f"ready-{variant}-{os.getpid()}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(folder.glob(f"ready-{variant}-*"))) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{variant}: {processes} processes did not all start within {BARRIER_TIMEOUT_S:.0f} s")
        time.sleep(0.001)


def child(folder: str, variant: str) -> dict[str, object]:
    import torch
    from cuda.bindings import driver

    torch.zeros(1, device="cuda").add_(1)  # the engine's context and its first kernels
    torch.cuda.synchronize()
    modules = json.loads((Path(folder) / "modules.json").read_text())  # largest first
    _, context = driver.cuCtxGetCurrent()
    base = variant.removeprefix("eager-")
    if base == "smallest-first":
        modules.reverse()
    threads = int(base.split("-")[1]) if base.startswith("threads-") else 1
    if base.startswith("side-"):
        _start_together(Path(folder), variant, side_by_side(variant))
    start = time.perf_counter()
    with ThreadPoolExecutor(threads, initializer=lambda: driver.cuCtxSetCurrent(context)) as pool:
        suffix = ".no-debug" if base == "no-debug" else ""
        per_module = list(pool.map(lambda m: _load_one(Path(folder), m, suffix), modules))
    return {
        "variant": variant, "wall_s": time.perf_counter() - start,
        **{key: sum(m[key] for m in per_module) for key in ("load_s", "get_s", "func_load_s")},
        "slowest": sorted(per_module, key=lambda m: -(m["load_s"] + m["get_s"] + m["func_load_s"]))[:8],
        "first": per_module[0] if per_module else None,  # the process's first module load (in order; threads-8: one of the first)
    }


def main() -> None:
    if sys.argv[1:2] == ["child"]:
        child_entry(child)
        return
    archive, variants = sys.argv[1], sys.argv[2:] or list(VARIANTS)
    with tempfile.TemporaryDirectory() as scratch:
        modules = _prepare(archive, Path(scratch))
        (Path(scratch) / "modules.json").write_text(json.dumps(modules))
        print(json.dumps({
            "modules": len(modules), "bytes": sum(m["bytes"] for m in modules), "read_s": sum(m["read_s"] for m in modules),
            "compressed": sum(m["codec"] != "raw" for m in modules),
            "largest": [{k: m[k] for k in ("index", "bytes", "codec", "read_s", "sections", "symbols", "no_debug")} for m in modules[:8]],
            "no_debug_bytes": sum(m["no_debug"] if isinstance(m["no_debug"], int) else m["bytes"] for m in modules),
        }), flush=True)
        for variant in variants:
            if variant.removeprefix("eager-").startswith("side-"):
                print(json.dumps(_run_side_by_side(scratch, variant)), flush=True)
            else:
                print_variants(MODULE, scratch, [variant], _environments([variant]))


def _environments(variants: list[str]) -> dict[str, dict[str, str]]:
    return {v: {"CUDA_MODULE_LOADING": "EAGER"} for v in variants if v.startswith("eager-")}


def _run_side_by_side(folder: str, variant: str) -> dict[str, object]:
    """side-N: N children at once on the GPU, each loading every module behind a start barrier."""
    count = side_by_side(variant)
    for stale in Path(folder).glob(f"ready-{variant}-*"):  # an earlier round's
        stale.unlink()
    environment = {**os.environ, **_environments([variant]).get(variant, {})}
    try:
        results = run_ranks(MODULE, [["child", folder, variant]] * count, [environment] * count,
                            labels=[f"module_load {variant} process {i}" for i in range(count)])
    except ChildProcessFailed as error:  # printed as the variant's result, as print_variants does
        return {"variant": variant, "error": str(error)[-3000:]}
    return {
        "variant": variant, "processes": count, "wall_s": max(r["wall_s"] for r in results),
        "wall_s_by_process": [r["wall_s"] for r in results],
        **{f"{key}_by_process": [r[key] for r in results] for key in ("load_s", "get_s", "func_load_s")},
    }


if __name__ == "__main__":
    main()

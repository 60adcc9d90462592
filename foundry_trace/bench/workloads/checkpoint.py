"""A workload's random weights as a safetensors checkpoint on disk, written once and loaded by
every bench child the way a serving engine loads its weights: the model built empty (no
initialisation), then each tensor copied from the files into it.

Why from disk: a serving engine's start is dominated by reading tens of GB of weights, and
prefetch() at process start is meant to hide LOAD's work behind that I/O. A random initialisation
on the GPU takes a second or two, which leaves prefetch nothing to hide behind.

The layout is Hugging Face's sharded one (model-00001-of-000NN.safetensors and
model.safetensors.index.json, whose weight_map names each tensor's file), plus MARKER, written
last: it names the checkpoint's identity (the model's name, config, seed and every tensor's name
and shape), so that a checkpoint is reused only by the model that wrote it, and a write cut short
is never taken for a checkpoint. Loading copies into tensors that already exist (safetensors maps
the file; the copy reads it), so it allocates no device memory and the engine's allocations, which
LOAD compares with SAVE's, are the same whatever order the threads copy in.

Where to write it: the full Qwen3-235B rank's 61 GB do not fit the GPU machine's 64 GiB disk beside
the system; its 128 GiB of memory hold them on tmpfs (/dev/shm), which a restart empties.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from foundry_trace.errors import WorkloadError

if TYPE_CHECKING:
    import torch

FORMAT = 1
MARKER = "foundry-checkpoint.json"
INDEX = "model.safetensors.index.json"
SHARD_BYTES = 4 * 2**30  # per file, about what Hugging Face's checkpoints hold (5 GB)
LOAD_THREADS = 4  # shards read at once: reading a file and copying to the GPU overlap
ROOM_MARGIN = 1.02  # safetensors headers and the index, and not filling a disk to its last byte
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model's state dict: what a checkpoint holds for it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch's name without the prefix, e.g. "bfloat16"
    itemsize: int

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.itemsize


def tensor_specs(model: torch.nn.Module) -> list[TensorSpec]:
    """The model's state dict as specs, in its order (a model on the meta device will do)."""
    return [
        TensorSpec(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), tensor.element_size())
        for name, tensor in model.state_dict().items()
    ]


def identity(model: str, config: dict[str, object], seed: int, specs: Iterable[TensorSpec]) -> str:
    """A digest of what decides a checkpoint's contents: the model's name and config, the seed,
    and every tensor's name, shape and type. The writer stores it; the loader compares it."""
    described = {
        "format": FORMAT, "model": model, "config": config, "seed": seed,
        "tensors": [[s.name, list(s.shape), s.dtype] for s in specs],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def shard_plan(specs: list[TensorSpec], shard_bytes: int = SHARD_BYTES) -> list[list[TensorSpec]]:
    """The tensors in order, cut into files of at most `shard_bytes` each (a tensor larger than
    that alone in its file): Hugging Face's sharding, which keeps the writer's host memory to one
    shard and gives the loader's threads files to share out."""
    shards: list[list[TensorSpec]] = []
    size = 0
    for spec in specs:
        if not shards or (size + spec.nbytes > shard_bytes and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def filesystem_of(path: Path, mounts: str) -> str:
    """The type of the filesystem holding `path` (e.g. tmpfs, ext4, xfs), from /proc/mounts'
    text: the mount point that is the longest prefix of the resolved path. "unknown" where none
    matches (no /proc)."""
    resolved = path.resolve()
    best, kind = -1, "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (resolved == point or point in resolved.parents) and len(point.parts) > best:
            best, kind = len(point.parts), fields[2]
    return kind


def filesystem(path: Path) -> str:
    """filesystem_of() on this machine's mounts."""
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        return "unknown"
    return filesystem_of(path, mounts)


def require_room(folder: Path, needed: int, free: int) -> None:
    """Raises WorkloadError, naming tmpfs as the way out, unless `free` bytes hold `needed`."""
    if free < needed * ROOM_MARGIN:
        raise WorkloadError(
            f"the checkpoint needs {needed / 1e9:.1f} GB and {folder} has {free / 1e9:.1f} GB free: choose a folder with room "
            "(--checkpoint DIR), e.g. on tmpfs (/dev/shm), which holds it in memory where the disk is too small"
        )


def read_marker(folder: Path) -> dict[str, object] | None:
    """The marker of a complete checkpoint in `folder`, or None (none there, or cut short)."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def clear_for_writing(folder: Path) -> None:
    """Makes `folder` ready for a new checkpoint: created if missing; files of an earlier
    checkpoint (shards, index, marker) removed; refused where it holds anything else, which this
    bench did not write and must not delete."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = list(folder.iterdir())
    foreign = sorted(e.name for e in entries if not (e.is_file() and (e.name in (MARKER, INDEX) or _SHARD.fullmatch(e.name))))
    if foreign:
        raise WorkloadError(
            f"{folder} holds files that are not a checkpoint of this bench ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}): choose an empty or new folder for --checkpoint"
        )
    (folder / MARKER).unlink(missing_ok=True)  # first: a write cut short is never taken for a checkpoint
    for entry in entries:
        entry.unlink(missing_ok=True)


def write(folder: Path, specs: list[TensorSpec], digest: str, *, seed: int, std: float, device: str) -> dict[str, object]:
    """Writes random weights for `specs` into `folder` unless the checkpoint there has this
    identity already. Values as transformers initialises these models: a vector (a norm's
    weight) ones, every matrix normal(0, std); drawn on `device` from one generator seeded with
    `seed`, in the specs' order. Returns what the results file says of the checkpoint."""
    folder = Path(folder)
    total = sum(s.nbytes for s in specs)
    existing = read_marker(folder)
    if existing is not None and existing.get("identity") == digest:
        return describe(folder, existing, write_s=None, reused=True)
    clear_for_writing(folder)
    require_room(folder, total, shutil.disk_usage(folder).free)
    start = time.perf_counter()
    shards = shard_plan(specs, SHARD_BYTES)
    weight_map = _write_shards(folder, shards, seed=seed, std=std, device=device)
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    marker = {"format": FORMAT, "identity": digest, "bytes": total, "tensors": len(specs), "shards": len(shards), "seed": seed}
    write_s = time.perf_counter() - start
    (folder / MARKER).write_text(json.dumps(marker, indent=1))  # last: the checkpoint is complete
    return describe(folder, marker, write_s=write_s, reused=False)


def _write_shards(folder: Path, shards: list[list[TensorSpec]], *, seed: int, std: float, device: str) -> dict[str, str]:
    """Each shard drawn on the device, copied to the host and written; the weight map."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator(device=device).manual_seed(seed)
    weight_map = {}
    for index, shard in enumerate(shards):
        name = shard_name(index, len(shards))
        tensors = {}
        for spec in shard:
            tensor = torch.empty(spec.shape, dtype=getattr(torch, spec.dtype), device=device)
            if len(spec.shape) == 1:
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, std, generator=generator)
            tensors[spec.name] = tensor.cpu()
            weight_map[spec.name] = name
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
    return weight_map


def describe(folder: Path, marker: dict[str, object], *, write_s: float | None, reused: bool) -> dict[str, object]:
    """The checkpoint as a results file records it: where (and on which filesystem), its size,
    and the seconds its writing took (None where an earlier run's was reused)."""
    return {
        "path": str(folder), "filesystem": filesystem(folder), "bytes": marker["bytes"], "tensors": marker["tensors"],
        "shards": marker["shards"], "write_s": write_s, "reused": reused,
    }


def load(tensors: dict[str, torch.Tensor], folder: Path, digest: str, threads: int = LOAD_THREADS) -> float:
    """Copies the checkpoint in `folder` into `tensors` (a model's state dict: views of its
    parameters and buffers) on `threads` threads, one shard at a time each, as an engine
    loads its weights; returns the wall seconds (every copy finished). Refuses a checkpoint of
    another model or a torn one, naming what differs."""
    import torch

    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None or marker.get("identity") != digest:
        found = "none" if marker is None else "one of another model, config or seed"
        raise WorkloadError(
            f"{folder}: no checkpoint of this model there ({found}): `foundry bench load --checkpoint {folder}` writes it, "
            f"or python -m foundry_trace.bench.workloads.checkpoint WORKLOAD {folder}"
        )
    weight_map: dict[str, str] = json.loads((folder / INDEX).read_text())["weight_map"]
    missing, unexpected = sorted(set(tensors) - set(weight_map)), sorted(set(weight_map) - set(tensors))
    if missing or unexpected:
        raise WorkloadError(f"{folder}: the checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        by_file.setdefault(file, []).append(name)
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="weights") as pool:
        list(pool.map(lambda item: _load_shard(folder / item[0], item[1], tensors), by_file.items()))
    if any(t.is_cuda for t in tensors.values()):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _load_shard(path: Path, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    """One file's tensors, each read through safetensors' map of the file and copied in place."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as opened:
        for name in names:
            stored = opened.get_tensor(name)
            target = tensors[name]
            if stored.shape != target.shape or stored.dtype != target.dtype:
                raise WorkloadError(f"{path}: {name} is {tuple(stored.shape)} {stored.dtype}, the model's {tuple(target.shape)} {target.dtype}")
            target.copy_(stored)


def main() -> None:
    """`python -m foundry_trace.bench.workloads.checkpoint WORKLOAD DIR [--layers N]`: writes the
    workload's checkpoint into DIR (reused where it is there already) and prints what the
    results file says of it, as one JSON line (the load bench runs it as a child)."""
    import argparse

    from foundry_trace.bench.children import child_main
    from foundry_trace.bench.workloads.registry import write_checkpoint

    parser = argparse.ArgumentParser(description="write a workload's random weights as a safetensors checkpoint")
    parser.add_argument("workload")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--layers", type=int)
    child_main(lambda a: write_checkpoint(a.workload, a.folder, **({"layers": a.layers} if a.layers else {})), parser)


if __name__ == "__main__":
    main()

"""Tensors that view a restored graph's recorded output buffers. An output must lie in memory
that the engine or LOAD holds: an archive cannot make a tensor view anything else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from foundry_trace.archive.manifest import OutputTensor
from foundry_trace.errors import ArchiveFormatError

if TYPE_CHECKING:
    import torch


def coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, size) ranges merged where they touch or overlap (a large tensor spans several mappings)."""
    merged: list[list[int]] = []
    for start, size in sorted(ranges):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], start + size - merged[-1][0])
        else:
            merged.append([start, size])
    return [(start, size) for start, size in merged]


def output_view(output: OutputTensor, owned: list[tuple[int, int]]) -> torch.Tensor:
    """A tensor viewing the recorded output buffer, which must lie inside one of `owned`
    (coalesced (start, size) ranges)."""
    import torch

    dtype = getattr(torch, output.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ArchiveFormatError(f"output {output.name!r} has dtype {output.dtype!r}, which torch does not know")
    item = torch.empty((), dtype=dtype).element_size()
    extent = (1 + sum((n - 1) * s for n, s in zip(output.shape, output.stride))) * item if all(output.shape) else 0
    if extent and not any(start <= output.address and output.address + extent <= start + size for start, size in owned):
        raise ArchiveFormatError(
            f"output {output.name!r} at {output.address:#x} (+{extent:#x}) lies outside the recorded memory: the archive is corrupted"
        )

    class _Buffer:
        __cuda_array_interface__ = {"shape": (extent,), "typestr": "|u1", "data": (output.address, False), "version": 3}

    raw = torch.as_tensor(_Buffer(), device="cuda")
    return raw.view(dtype).as_strided(output.shape, output.stride)

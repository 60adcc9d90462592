"""Whether this machine can run a GPU command, checked in the parent before any child starts:
a CPU machine gets one line naming the fix instead of a child's traceback."""

from __future__ import annotations

import os

from foundry_trace.errors import NoGpuError


def require_gpu(command: str) -> None:
    """Returns if torch is a CUDA build and sees a GPU; raises NoGpuError (one line: what is
    missing and how to get it) otherwise. The check creates no CUDA context."""
    try:
        import torch
    except ImportError:
        raise NoGpuError(f"{command} needs torch with CUDA: python -m pip install torch, on a machine with an NVIDIA GPU") from None
    if torch.version.cuda is None:
        raise NoGpuError(
            f"{command} needs an NVIDIA GPU and a CUDA build of torch; this torch {torch.__version__} is CPU-only: "
            "run it on a GPU machine with a CUDA build (https://pytorch.org/get-started/locally)"
        )
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f" (CUDA_VISIBLE_DEVICES={visible!r} hides them)" if visible is not None else ""
        raise NoGpuError(f"{command} needs an NVIDIA GPU and torch sees none{hidden}: run it where `nvidia-smi` lists a GPU")

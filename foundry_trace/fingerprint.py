"""What must match between the SAVE process and a LOAD process: read from the running process,
compared field by field."""

from __future__ import annotations

from pathlib import Path

from cuda.bindings import driver

import foundry_alloc
from foundry_trace._driver import call
from foundry_trace.archive.manifest import Fingerprint
from foundry_trace.errors import FingerprintMismatchError

# Fields LOAD compares before anything else (the layout is compared at the restore point, with a diff).
COMPARED_FIELDS = ("gpu", "compute_capability", "driver", "cuda_driver_api", "torch", "allocator_base", "allocator_size")
_ADDRESS_FIELDS = ("allocator_base", "allocator_size")


def current_fingerprint(restore_layout: foundry_alloc.Layout | None = None) -> Fingerprint:
    """This process's setup; with the engine's layout at the restore point when SAVE records it.
    LOAD checks the setup before the engine exists (prefetch at process start), and compares
    the layout itself, with a diff, at the restore point."""
    import torch

    config = foundry_alloc.installed_config()
    if config is None:
        raise foundry_alloc.NotInstalledError("the fingerprint names the allocator's range: call foundry_alloc.install() first")
    major, minor = torch.cuda.get_device_capability()
    return Fingerprint(
        gpu=torch.cuda.get_device_name(),
        compute_capability=f"{major}.{minor}",
        driver=driver_version(),
        cuda_driver_api=int(call(driver.cuDriverGetVersion)),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        allocator_base=config.base,
        allocator_size=config.size,
        restore_layout=restore_layout.fingerprint() if restore_layout is not None else "",
    )


def check_fingerprint(saved: Fingerprint, current: Fingerprint) -> None:
    """Raises FingerprintMismatchError naming every field that differs (addresses in hex)."""
    differences = [
        f"{name}: saved {_shown(name, getattr(saved, name))}, here {_shown(name, getattr(current, name))}"
        for name in COMPARED_FIELDS
        if getattr(saved, name) != getattr(current, name)
    ]
    if differences:
        raise FingerprintMismatchError(
            "the archive was saved for another setup and would not be valid here ("
            + "; ".join(differences)
            + "): save it again on this setup, or run with the saved setting (FOUNDRY_ALLOC_BASE/SIZE for the range)"
        )


def _shown(name: str, value: object) -> str:
    return f"{value:#x}" if name in _ADDRESS_FIELDS and isinstance(value, int) else repr(value)


def driver_version() -> str | None:
    """The kernel driver's version (e.g. 580.159.04), as the NVIDIA module reports it."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return None

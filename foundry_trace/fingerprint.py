"""What must match between the SAVE process and a LOAD process, read from the running process."""

from __future__ import annotations

from cuda.bindings import driver

import foundry_alloc

from .archive import Fingerprint
from .driver import call
from .results import driver_version


def current_fingerprint(restore_layout: foundry_alloc.Layout | None = None) -> Fingerprint:
    """This process's setup; with the engine's layout at the restore point when SAVE records it.
    LOAD checks the setup before the engine exists (prefetch at process start), and compares
    the layout itself, with a diff, at the restore point."""
    import torch

    config = foundry_alloc.installed_config()
    assert config is not None  # the recording checked
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

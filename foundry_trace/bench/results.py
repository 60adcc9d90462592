"""Benchmark results files: the shape of shared/RESULTS.md, one JSON object per run.

A field that a run did not measure stays None (null): nothing here is ever filled in by guess.
"""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

ENV_COMMIT = "FOUNDRY_COMMIT"
MEASURED_FIELDS = ("device", "torch", "cuda", "cupti", "mps")  # read where the work ran: device_fields()


class Case(BaseModel):
    """One workload (or TP degree, or model) of a run. Extra measured fields are welcome."""

    model_config = ConfigDict(extra="allow")

    name: str
    graphs: int | None = None
    nodes: int | None = None
    native_s: float | None = None
    restore_s: float | None = None
    speedup: float | list[float] | None = None  # tp: one a rank
    instantiate_floor_s: float | None = None
    first_graph_s: float | None = None
    bitwise_equal: bool | None = None
    nondeterministic_native: list[int] | None = None
    replay_delta_pct: dict[str, float] | None = None
    archive_bytes: int | None = None
    peak_ratio: float | None = None


class ResultsFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    what: Literal["alloc", "save", "load", "coverage", "tp", "soak", "e2e"]
    workload: str
    workload_desc: str
    device: str | None
    gpus: int
    driver: str | None
    cuda: str | None
    torch: str
    cupti: str | None = None  # cupti-python's version (recorded since issue 33)
    mps: bool | None = None  # the GPU's contexts shared through MPS (recorded since issue 31); None: no GPU, or not reported
    commit: str | None
    date: str
    command: str
    cases: list[Case]

    @classmethod
    def of_this_run(cls, measured: Mapping[str, object], **fields: object) -> ResultsFile:
        """A results file with the environment of the run filled in, the same way for every
        bench: device, torch and CUDA from `measured` (a child's result holding device_fields()),
        and the kernel driver, the project's commit, today's date and the command line from here."""
        from foundry_trace.fingerprint import driver_version

        environment = {name: measured[name] for name in MEASURED_FIELDS}
        return cls(driver=driver_version(), commit=project_commit(), date=today(), command=command_line(), **environment, **fields)

    def file_name(self) -> str:
        """<what>-<workload>-<backend>-<yyyymmdd>.json, e.g. load-llama8b-67-h100-20261124.json;
        the backend is the GPU's family, `gpu` for another GPU, `host` for a run without one."""
        device = (self.device or "unknown").lower()
        short = "host" if self.gpus == 0 else next((tag for tag in ("h200", "h100", "a100", "l40s", "b200") if tag in device), "gpu")
        return f"{self.what}-{self.workload}-{short}-{self.date.replace('-', '')}.json"

    def write(self, directory: str | Path) -> Path:
        """Writes the file into `directory` and prints its path (stderr): a run says where its results went."""
        path = Path(directory) / self.file_name()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")
        print(f"foundry bench: results in {path.resolve()}", file=sys.stderr, flush=True)
        return path


def device_fields() -> dict[str, str | None]:
    """The environment fields a results file takes from the process that measured (call it
    there, in the child): the GPU's name (the host's, without a GPU), torch's version, its CUDA's,
    cupti-python's (SAVE's tracer; None where it is not installed), and whether the GPU's contexts
    are shared through MPS (processes on one GPU then run side by side instead of taking turns:
    ranks sharing a GPU measure differently with it)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"host ({platform.processor() or platform.machine()})"
    try:
        cupti = version("cupti-python")
    except PackageNotFoundError:
        cupti = None
    return {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "cupti": cupti, "mps": _mps_enabled()}


def _mps_enabled() -> bool | None:
    """Whether contexts on the current GPU are shared through MPS: None without a GPU, or where
    the driver does not report it (a metadata field: no bench fails for it)."""
    import torch

    if not torch.cuda.is_available():
        return None
    from cuda.bindings import driver

    torch.cuda.init()  # the driver initialised, as the attribute query needs
    status, value = driver.cuDeviceGetAttribute(driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MPS_ENABLED, torch.cuda.current_device())
    return bool(value) if status == driver.CUresult.CUDA_SUCCESS else None


def project_commit() -> str | None:
    """The project's commit: FOUNDRY_COMMIT where set (the caller knows which tree it copied: a
    copy may carry a .git whose HEAD is another commit, as the GPU machine's did), else git's
    HEAD when run in a checkout of the project (the current directory's, else the package's
    own), else None."""
    if os.environ.get(ENV_COMMIT, "").strip():
        return os.environ[ENV_COMMIT].strip()
    for place in (Path.cwd(), Path(__file__).parent):
        commit = _checkout_commit(place)
        if commit is not None:
            return commit
    return None


def _checkout_commit(place: Path) -> str | None:
    """HEAD of the git checkout holding `place`, if that checkout is this project's."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True, cwd=place, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2 or not (Path(lines[0]) / "foundry_trace" / "__init__.py").is_file():
        return None
    return lines[1]


def table_text(table: object, width: int) -> str:
    """A rich Table as the text a terminal of `width` columns would show."""
    from rich.console import Console

    console = Console(width=width, record=True)
    with console.capture() as captured:
        console.print(table)
    return captured.get()


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["foundry", *sys.argv[1:]])


def today() -> str:
    return datetime.date.today().isoformat()

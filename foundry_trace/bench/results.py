"""Benchmark results files: the shape of shared/RESULTS.md, one JSON object per run.

A field that a run did not measure stays None (null): nothing here is ever filled in by guess.
"""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

ENV_COMMIT = "FOUNDRY_COMMIT"


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

    what: Literal["alloc", "save", "load", "coverage", "tp", "soak"]
    workload: str
    workload_desc: str
    device: str | None
    gpus: int
    driver: str | None
    cuda: str | None
    torch: str
    commit: str | None
    date: str
    command: str
    cases: list[Case]

    @classmethod
    def of_this_run(cls, **fields: object) -> ResultsFile:
        """A results file with the run's own facts filled in: the kernel driver, the project's
        commit, today's date and the command line."""
        from foundry_trace.fingerprint import driver_version

        return cls(driver=driver_version(), commit=project_commit(), date=today(), command=command_line(), **fields)

    def file_name(self) -> str:
        """<what>-<workload>-<device>-<yyyymmdd>.json, e.g. load-llama8b-67-h100-20261124.json."""
        device = (self.device or "unknown").lower()
        short = next((tag for tag in ("h200", "h100", "a100", "l40s", "b200") if tag in device), "gpu")
        return f"{self.what}-{self.workload}-{short}-{self.date.replace('-', '')}.json"

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / self.file_name()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


def project_commit() -> str | None:
    """The project's commit: FOUNDRY_COMMIT where the tree was copied without .git, else git."""
    if os.environ.get(ENV_COMMIT):
        return os.environ[ENV_COMMIT]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


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

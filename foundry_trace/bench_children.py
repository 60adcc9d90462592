"""The child processes of the benchmarks: each measures in a fresh process (so that nothing the
parent did warms the driver) and prints its result as one JSON line. The parent passes the
engine options on the command line; here both sides of that, and the call that reads a child."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def option_arguments(options: dict[str, object]) -> list[str]:
    """Engine options (attention, layers, batch_sizes) as a child's command-line flags."""
    arguments = []
    if options.get("attention") is not None:
        arguments += ["--attention", str(options["attention"])]
    if options.get("layers") is not None:
        arguments += ["--layers", str(options["layers"])]
    if options.get("batch_sizes") is not None:
        arguments += ["--batch-sizes", ",".join(str(b) for b in options["batch_sizes"])]
    return arguments


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attention")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--batch-sizes", type=lambda text: tuple(int(b) for b in text.split(",")))


def parsed_options(arguments: argparse.Namespace) -> dict[str, object]:
    """The engine options a child was given (those left out stay the engine's defaults)."""
    options = {"attention": arguments.attention, "layers": arguments.layers, "batch_sizes": arguments.batch_sizes}
    return {k: v for k, v in options.items() if v is not None}


def run_child(
    module: str, arguments: list[str], environment: dict[str, str] | None = None, *,
    cwd: Path | None = None, timeout: float | None = None,
) -> dict[str, object]:
    """Runs `python -m module arguments...` and returns the JSON of its last output line."""
    completed = subprocess.run(
        [sys.executable, "-m", module, *arguments], capture_output=True, text=True, env=environment, cwd=cwd, timeout=timeout,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{module} child {arguments[0]} failed:\n{completed.stderr[-5000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])

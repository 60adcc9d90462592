"""The child processes of the benchmarks: each measures in a fresh process (so that nothing the
parent did warms the driver) and prints its result as one JSON line. The parent passes the
engine options on the command line; here both sides of that, the call that runs a child, and the
progress lines a child writes so that a long bench shows where its time goes."""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

_STARTED = time.monotonic()
ERROR_TAIL_LINES = 60


def note(what: str) -> None:
    """A child's progress line on stderr: seconds since the child started, and what it did."""
    print(f"{time.monotonic() - _STARTED:8.1f} s  {what}", file=sys.stderr, flush=True)


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
    """Runs `python -m module arguments...` and returns the JSON of its last output line. The
    child's stderr passes through to ours as it comes, each line tagged with its role (a bench of
    minutes stays readable, and a run cut short shows how far it got); its tail goes into the
    error when the child fails."""
    label = f"{module.rsplit('.', 1)[-1]} {arguments[0]}"
    process = subprocess.Popen(
        [sys.executable, "-m", module, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=cwd,
    )
    output: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=ERROR_TAIL_LINES)

    def forward_errors() -> None:
        for line in process.stderr:
            tail.append(line)
            sys.stderr.write(f"[{label}] {line}")

    readers = [threading.Thread(target=forward_errors, daemon=True), threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"{label} child did not finish in {timeout:.0f} s; its last lines:\n{''.join(tail)}") from None
    finally:
        for reader in readers:
            reader.join()
    if returncode != 0:
        raise RuntimeError(f"{label} child failed (exit {returncode}):\n{''.join(tail)}")
    lines = "".join(output).strip().splitlines()
    if not lines:
        raise RuntimeError(f"{label} child printed no result; its last lines:\n{''.join(tail)}")
    return json.loads(lines[-1])

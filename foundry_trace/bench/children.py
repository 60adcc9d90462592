"""The child processes of the benchmarks and probes: each measures in a fresh process (so that
nothing the parent did warms the driver) and prints its result as one JSON line. Here both sides
of that: the parent's runner (one child, or the N ranks of a tensor-parallel step) and the
child's entry point.

Every child runs under a watchdog. The child itself: faulthandler dumps every thread's stack and
exits the process when its time-out passes (the process's exit frees its GPU memory, whatever
NCCL or the driver was waiting for). The parent: it waits no longer than the same time-out plus
a grace period, kills every rank when one fails or stalls, and raises ChildProcessFailed naming
the rank, the phase it was in (the last progress line it wrote), its last line and its log file.

A child's stderr goes whole into its log file (CHILD_LOGS); the terminal gets its progress, not
its tracebacks or stack dumps, which the error names by that file: a traceback is printed once,
into the log, never twice.

Children import the installed package whatever the current directory is: they start with
Python's -P, which leaves the current directory off sys.path (a source tree there has no
compiled libraries).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from foundry_trace.errors import ChildProcessFailed

ENV_TIMEOUT = "FOUNDRY_CHILD_TIMEOUT"
DEFAULT_TIMEOUT_S = 900.0
GRACE_S = 15.0  # the parent's wait beyond a child's own time-out, for its stack dump
PHASE_PREFIX = "phase: "
CHILD_LOGS = Path(tempfile.gettempdir()) / "foundry-logs"
# First lines of what goes to the log alone: a traceback, faulthandler's dump at a time-out or a crash.
LOG_ONLY_FROM = ("Traceback (most recent call last):", "Timeout (", "Fatal Python error", "Thread 0x", "Current thread 0x")
_STARTED = time.monotonic()


def note(what: str) -> None:
    """A child's progress line on stderr: seconds since the child started, and what it did."""
    print(f"{time.monotonic() - _STARTED:8.1f} s  {what}", file=sys.stderr, flush=True)


def phase(name: str) -> None:
    """Marks the phase a child enters: the parent names it if the child fails or stalls there."""
    print(f"{PHASE_PREFIX}{name}", file=sys.stderr, flush=True)


def child_main(run: Callable[[argparse.Namespace], dict[str, object]], parser: argparse.ArgumentParser) -> None:
    """A child's entry point: arms the watchdog (FOUNDRY_CHILD_TIMEOUT seconds, set by the
    parent), parses the arguments, runs, and prints the result as the last line of stdout."""
    timeout = float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))
    faulthandler.dump_traceback_later(timeout, exit=True)  # every thread's stack, then exit(1)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks for stacks before a kill
    result = run(parser.parse_args())
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps(result), flush=True)


@dataclass
class _Child:
    label: str
    process: subprocess.Popen
    log: Path
    last_line: str = ""
    output: list[str] = field(default_factory=list)
    phase: str = "start"
    readers: list[threading.Thread] = field(default_factory=list)

    def read(self) -> None:
        def errors(log: TextIO) -> None:
            to_terminal = True
            for line in self.process.stderr:
                log.write(line)
                log.flush()
                if line.strip():
                    self.last_line = line.strip()
                if line.startswith(PHASE_PREFIX):
                    self.phase = line[len(PHASE_PREFIX) :].strip()
                to_terminal = to_terminal and not line.startswith(LOG_ONLY_FROM)
                if to_terminal:
                    sys.stderr.write(f"[{self.label}] {line}")
            log.close()

        log = self.log.open("w")
        self.readers = [
            threading.Thread(target=errors, args=(log,), daemon=True),
            threading.Thread(target=lambda: self.output.extend(self.process.stdout), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def result(self) -> dict[str, object]:
        for reader in self.readers:
            reader.join(timeout=GRACE_S)
        lines = "".join(self.output).strip().splitlines()
        if not lines:
            raise ChildProcessFailed(f"{self.label} printed no result (last phase: {self.phase}): {self.last_line}; its output: {self.log}")
        return json.loads(lines[-1])


def _log_path(label: str) -> Path:
    """A fresh log file for the child `label`, kept after the run (a failure names it)."""
    CHILD_LOGS.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in label).strip("-")
    handle, name = tempfile.mkstemp(prefix=f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log", dir=CHILD_LOGS)
    os.close(handle)
    return Path(name)


def run_child(
    module: str, arguments: Sequence[str], environment: dict[str, str] | None = None, *, timeout: float = DEFAULT_TIMEOUT_S,
    grace: float = GRACE_S, label: str | None = None,
) -> dict[str, object]:
    """Runs `python -P -m module arguments...` under the watchdog and returns the JSON of its
    last output line. Its stderr goes to its log file, and its progress to ours as it comes, each
    line tagged."""
    return run_ranks(module, [list(arguments)], [environment], timeout=timeout, grace=grace, labels=[label or _label(module, arguments)])[0]


def run_ranks(
    module: str, arguments: Sequence[Sequence[str]], environments: Sequence[dict[str, str] | None], *, timeout: float = DEFAULT_TIMEOUT_S,
    grace: float = GRACE_S, labels: Sequence[str] | None = None,
) -> list[dict[str, object]]:
    """Runs one child per entry of `arguments` at once (the ranks of a step), each with its own
    environment, and returns their results in order. Each child's own watchdog fires at
    `timeout`; the parent's `grace` seconds later. The first failure or stall ends them all:
    every other child is asked for its stacks and killed, and ChildProcessFailed names the rank
    that failed (or every one still running at the time-out) and its phase."""
    labels = list(labels or [f"rank {rank}" for rank in range(len(arguments))])
    commands = [[sys.executable, "-P", "-m", module, *argv] for argv in arguments]
    return [child.result() for child in _run_commands(commands, environments, labels, timeout, grace)]


def run_program(
    command: Sequence[str], *, label: str, timeout: float = DEFAULT_TIMEOUT_S, grace: float = GRACE_S,
    environment: dict[str, str] | None = None,
) -> str:
    """Runs a program that is not a bench child (an example script, which users run as it is:
    no watchdog of its own, no JSON line) under the parent's watchdog, its stderr in its log
    file and its progress on ours, and returns its stdout. A failure or stall raises
    ChildProcessFailed naming the log, as for a child."""
    [child] = _run_commands([list(command)], [environment], [label], timeout, grace)
    for reader in child.readers:
        reader.join(timeout=GRACE_S)
    return "".join(child.output)


def _run_commands(
    commands: Sequence[Sequence[str]], environments: Sequence[dict[str, str] | None], labels: Sequence[str], timeout: float,
    grace: float,
) -> list[_Child]:
    """Starts every command at once and waits for all of them (run_ranks says how failures end them)."""
    children: list[_Child] = []
    try:
        for label, command, environment in zip(labels, commands, environments):
            env = dict(environment if environment is not None else os.environ)
            env[ENV_TIMEOUT] = str(timeout)
            env.setdefault("PYTHONUNBUFFERED", "1")
            process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            children.append(_Child(label, process, _log_path(label)))
            children[-1].read()
        _wait_all(children, time.monotonic() + timeout + grace, timeout)
        return children
    finally:
        _end(children)


def _wait_all(children: list[_Child], deadline: float, timeout: float) -> None:
    running = list(children)
    while running:
        for child in list(running):
            code = child.process.poll()
            if code is None:
                continue
            running.remove(child)
            if code != 0:
                for reader in child.readers:
                    reader.join(timeout=GRACE_S)
                others = f"; {', '.join(c.label for c in running)} stopped too" if running else ""
                raise ChildProcessFailed(
                    f"{child.label} failed (exit {code}) in phase '{child.phase}': {child.last_line}{others}; its output: {child.log}"
                )
        if running and time.monotonic() > deadline:
            stalled = ", ".join(f"{c.label} in phase '{c.phase}'" for c in running)
            _end(running)
            logs = ", ".join(str(c.log) for c in running)
            raise ChildProcessFailed(f"stalled past the time-out of {timeout:.0f} s: {stalled}; every child was stopped; their output: {logs}")
        time.sleep(0.05)


def _end(children: list[_Child]) -> None:
    """Asks every live child for its stacks, then kills it: none outlives the run."""
    live = [c for c in children if c.process.poll() is None]
    for child in live:
        if hasattr(signal, "SIGUSR1"):
            child.process.send_signal(signal.SIGUSR1)
    if live:
        time.sleep(1.0)
    for child in live:
        child.process.kill()
    for child in children:
        try:
            child.process.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        for reader in child.readers:
            reader.join(timeout=1.0)


def _label(module: str, arguments: Sequence[str]) -> str:
    return f"{module.rsplit('.', 1)[-1]} {arguments[0]}" if arguments else module.rsplit(".", 1)[-1]


ENGINE_OPTIONS = ("attention", "layers", "batch_sizes", "split_every", "checkpoint")


def option_arguments(options: dict[str, object]) -> list[str]:
    """Engine options (ENGINE_OPTIONS) as a child's command-line flags."""
    arguments = []
    for name in ENGINE_OPTIONS:
        value = options.get(name)
        if value is not None:
            flag = "--" + name.replace("_", "-")
            arguments += [flag, ",".join(str(b) for b in value) if isinstance(value, (tuple, list)) else str(value)]
    return arguments


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attention")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--batch-sizes", type=lambda text: tuple(int(b) for b in text.split(",")))
    parser.add_argument("--split-every", type=int)
    parser.add_argument("--checkpoint", help="a folder of workloads/checkpoint.py: the engine loads its weights from it")


def child_parser(description: str, roles: tuple[str, ...]) -> argparse.ArgumentParser:
    """The command line every bench child takes: ROLE WORKLOAD ARCHIVE [THREADS] and the engine
    options."""
    from foundry_trace.restore import DEFAULT_THREADS

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("role", choices=roles)
    parser.add_argument("workload")
    parser.add_argument("archive")
    parser.add_argument("threads", nargs="?", type=int, default=DEFAULT_THREADS)
    add_option_flags(parser)
    return parser


def parsed_options(arguments: argparse.Namespace) -> dict[str, object]:
    """The engine options a child was given (those left out stay the engine's defaults)."""
    options = {name: getattr(arguments, name) for name in ENGINE_OPTIONS}
    return {k: v for k, v in options.items() if v is not None}

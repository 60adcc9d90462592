"""Cost as a fuzzing oracle: an input of any content must be handled in time and memory that
grow with its size (docs/security.md, "Cost bounds"). A target wrapped by `bounded` fails
(CostBoundExceeded, a finding like a crash) on an input that takes more CPU time or raises the
process's peak memory more than its size allows, and records the slowest input it has seen
relative to its allowance, so a run reports how close it came.

CPU time, not wall time: the fuzzer shares its cores, and waiting for a core is not the input's
cost. Peak memory is the process's high-water mark (VmHWM), read once per input: an input that
raises it past the allowance fails, whatever ran before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

SECONDS_BASE = 0.5  # any input, however small, may take this long (imports warm up, caches fill)
SECONDS_PER_MB = 2.0  # docs/security.md: an archive of 1 MB opens and inspects in under 2 s
MEMORY_BASE = 200 << 20  # above the peak once the target is set up: caches, the fuzzer's corpus
MEMORY_PER_BYTE = 500  # docs/security.md: an archive of 1 MB opens and inspects in under 500 MB
ENV_REPORT = "FOUNDRY_FUZZ_COST_REPORT"  # where the slowest input's figures go (JSON)


class CostBoundExceeded(AssertionError):
    """An input cost more time or memory than its size allows: a finding."""


def allowed_seconds(size: int) -> float:
    return SECONDS_BASE + SECONDS_PER_MB * size / (1 << 20)


def allowed_peak_bytes(size: int, baseline: int) -> int:
    """The highest peak an input of `size` bytes may leave, over a `baseline` peak."""
    return baseline + MEMORY_BASE + MEMORY_PER_BYTE * size


def _peak_rss_bytes() -> int:
    """This process's own peak resident memory (VmHWM; getrusage's ru_maxrss would count the
    parent's peak from before exec)."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) << 10  # in KiB
    raise RuntimeError("/proc/self/status has no VmHWM: the cost oracle needs Linux")


class _Slowest:
    """The input with the highest time over allowance seen so far, written to ENV_REPORT as it
    changes (libFuzzer ends the process with exit(), past Python's atexit)."""

    def __init__(self, report: Path | None) -> None:
        self.report = report
        self.ratio = 0.0
        self.executions = 0

    def note(self, data: bytes, seconds: float) -> None:
        self.executions += 1
        ratio = seconds / allowed_seconds(len(data))
        if ratio <= self.ratio:
            return
        self.ratio = ratio
        if self.report is not None:
            figures = {"seconds": round(seconds, 4), "bytes": len(data), "fraction_of_allowance": round(ratio, 4),
                       "sha256": hashlib.sha256(data).hexdigest(), "peak_rss_bytes": _peak_rss_bytes(),
                       "after_executions": self.executions}
            self.report.write_text(json.dumps(figures) + "\n")


def bounded(one_input: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """`one_input` under the cost oracle."""
    slowest = _Slowest(Path(os.environ[ENV_REPORT]) if os.environ.get(ENV_REPORT) else None)
    baseline = _peak_rss_bytes()  # the interpreter and the modules the target imported

    def checked(data: bytes) -> None:
        started = time.process_time()
        one_input(data)
        seconds = time.process_time() - started
        slowest.note(data, seconds)
        if seconds > allowed_seconds(len(data)):
            raise CostBoundExceeded(f"an input of {len(data)} bytes took {seconds:.2f} s of CPU (allowed {allowed_seconds(len(data)):.2f} s)")
        peak = _peak_rss_bytes()
        if peak > allowed_peak_bytes(len(data), baseline):
            raise CostBoundExceeded(
                f"an input of {len(data)} bytes raised peak memory to {peak >> 20} MB (allowed {allowed_peak_bytes(len(data), baseline) >> 20} MB)"
            )

    return checked

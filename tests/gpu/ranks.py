"""What the GPU tests of several ranks share: a rank killed as it enters LOAD."""

from __future__ import annotations

import signal
import subprocess
import time


def kill_rank_one_at_load(processes: list[subprocess.Popen], timeout: float) -> tuple[float, int, str]:
    """Kills rank 1 once it prints that it enters LOAD, then waits for rank 0 to end by itself
    (at most `timeout` seconds): returns how long that took, rank 0's exit status and its
    stderr. Every process is killed and reaped on the way out, whatever happened."""
    try:
        for line in processes[1].stderr:
            if line.startswith("phase: load"):
                break
        processes[1].send_signal(signal.SIGKILL)
        start = time.monotonic()
        _, errors = processes[0].communicate(timeout=timeout)
        return time.monotonic() - start, processes[0].returncode, errors
    finally:
        for process in processes:
            process.kill()
            process.wait()

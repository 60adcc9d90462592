"""The fuzzers' cost oracle (fuzz/cost.py): an input that takes more CPU time or peak memory
than its size allows is a finding, and the slowest input relative to its allowance is recorded."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz.cost import ENV_REPORT, CostBoundExceeded, allowed_seconds, bounded

ROOT = Path(__file__).resolve().parents[1]


def _spin(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_an_input_past_its_time_allowance_is_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_REPORT, str(tmp_path / "slowest.json"))
    target = bounded(lambda data: _spin(allowed_seconds(len(data)) * 1.2 if data == b"slow" else 0.0))
    target(b"fast")
    with pytest.raises(CostBoundExceeded, match="an input of 4 bytes took"):
        target(b"slow")
    slowest = json.loads((tmp_path / "slowest.json").read_text())
    assert slowest["bytes"] == 4 and slowest["fraction_of_allowance"] > 1 and slowest["after_executions"] == 2


def test_an_input_past_its_memory_allowance_is_a_finding() -> None:
    """In a fresh process: the oracle compares with the peak before the first input, and this
    one's peak is whatever the suite reached."""
    program = """
from fuzz.cost import MEMORY_BASE, CostBoundExceeded, _peak_rss_bytes, bounded
def hungry(data):
    held = b"x" * (MEMORY_BASE + (128 << 20))  # written: every page resident
    del held
target = bounded(hungry)
try:
    target(b"x")
    print("no finding; peak", _peak_rss_bytes() >> 20, "MB")
except CostBoundExceeded as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "raised peak memory" in done.stdout, done.stdout

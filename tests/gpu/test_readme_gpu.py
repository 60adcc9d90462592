"""The README's quick start, verbatim: SAVE in one process, LOAD in a fresh one, the same output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import clean_environment

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def quick_start() -> str:
    """The first Python block of the README's Quick start section."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_quick_start_saves_and_restores_the_same_output(tmp_path: Path) -> None:
    (tmp_path / "quickstart.py").write_text(quick_start())
    printed = []
    for mode in ("save", "load"):
        run = subprocess.run([sys.executable, "quickstart.py", mode], cwd=tmp_path, capture_output=True, text=True,
                             env=clean_environment(), timeout=600)
        assert run.returncode == 0, run.stderr[-4000:]
        printed.append(run.stdout.strip().splitlines()[-1])
    assert printed[0] == printed[1]

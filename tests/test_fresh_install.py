"""What a new user does: a fresh checkout (no build products in it), `pip install .` (not
editable) into a fresh environment, then a `foundry` command run from the checkout's root that
starts child processes. The children must import the installed package, not the source tree
in the current directory, which has no compiled libraries."""

from __future__ import annotations

import subprocess
from pathlib import Path


def test_a_non_editable_install_runs_a_child_starting_command_from_the_checkouts_root(regular_install: tuple[Path, Path]) -> None:
    checkout, python = regular_install
    assert not list(checkout.glob("foundry_*/_lib*.so")), "the build wrote into the checkout"
    run = subprocess.run(
        [str(python.parent / "foundry"), "bench", "alloc", "--backend", "host", "--no-write"],
        cwd=checkout, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "placed alike in two fresh processes: True" in run.stdout

"""Fuzz targets: each module has one_input(data: bytes) and runs under atheris as a script."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_atheris(one_input: Callable[[bytes], None]) -> None:
    """Coverage-guided fuzzing of `one_input` with atheris (pip install atheris)."""
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()

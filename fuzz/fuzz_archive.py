"""Fuzz target for the archive reader: archives come from other machines and from disk.

Any file must open as an Archive (and verify) or raise ArchiveFormatError: never another
exception, a crash, a hang or a huge allocation (decompression is bounded by declared sizes).
    python -m fuzz.fuzz_archive [atheris options]     coverage-guided, with atheris installed
The CPU suite runs the same target under hypothesis (tests/test_fuzz_targets.py).
"""

from __future__ import annotations

import os
import tempfile

from foundry_trace.archive.format import Archive
from foundry_trace.errors import ArchiveFormatError
from fuzz import run_atheris


def one_input(data: bytes) -> None:
    handle, path = tempfile.mkstemp(suffix=".foundry")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        try:
            with Archive(path) as archive:
                archive.verify()
                for entry in archive.manifest.graphs:
                    archive.graph(entry)
        except ArchiveFormatError:
            pass
    finally:
        os.unlink(path)


if __name__ == "__main__":
    run_atheris(one_input)

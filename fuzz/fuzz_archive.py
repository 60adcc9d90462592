"""Fuzz target for the archive reader: archives come from other machines and from disk.

Any file must open as an Archive (and verify) or raise ArchiveFormatError: never another
exception, a crash, a hang or a huge allocation (decompression is bounded by declared sizes).
LOAD's native reader (native.read_blob) must agree with Archive.blob on every blob.
    python -m fuzz.fuzz_archive [atheris options]     coverage-guided, with atheris installed
The CPU suite runs the same target under hypothesis (tests/test_fuzz_targets.py).
"""

from __future__ import annotations

import os
import tempfile

from foundry_trace import _native as native
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
                for digest in archive.manifest.blobs:
                    _read_both_ways(archive, digest)
                archive.verify()
                for entry in archive.manifest.graphs:
                    archive.graph(entry)
        except ArchiveFormatError:
            pass
    finally:
        os.unlink(path)


def _read_both_ways(archive: Archive, digest: str) -> None:
    """LOAD's native reader must give the bytes Archive.blob gives, or refuse the same blob."""
    try:
        expected = archive.blob(digest)
    except ArchiveFormatError:
        expected = None
    try:
        got = native.read_blob(archive.fileno(), archive.locate(digest))
    except ArchiveFormatError:
        got = None
    if got != expected:
        raise AssertionError(f"blob {digest[:12]}: the native reader and Archive.blob disagree")


if __name__ == "__main__":
    run_atheris(one_input)

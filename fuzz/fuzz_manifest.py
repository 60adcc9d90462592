"""Fuzz target for everything that reads a manifest, past the checksums: the fuzzer's bytes
become the manifest of a real archive (tests/data/micro.foundry, saved on an H100), compressed
and re-sealed with a correct checksum, so mutated manifests reach the model, the cross-field
checks and LOAD's steps (host_load.py) instead of stopping at the checksum.

Any manifest must be refused with ArchiveFormatError, or open and go through the host LOAD
steps raising only the project's own errors: never another exception, a crash, a hang.
    python -m fuzz.fuzz_manifest [atheris options]     coverage-guided, with atheris installed
    the seed: python -m fuzz.fuzz_manifest --seed DIR  writes the real manifest there
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import zlib
from pathlib import Path

from foundry_alloc import FoundryAllocError
from foundry_trace.archive.format import HEADER, MAGIC, Archive
from foundry_trace.archive.manifest import FORMAT_VERSION
from foundry_trace.errors import ArchiveFormatError, FoundryTraceError
from fuzz import host_load, run_atheris

SEED = Path(__file__).resolve().parents[1] / "tests" / "data" / "micro.foundry"
_SEED_BYTES = SEED.read_bytes()
_, _, _, _OFFSET, _LENGTH, _ = HEADER.unpack_from(_SEED_BYTES, 0)
_BLOBS = _SEED_BYTES[HEADER.size : _OFFSET]
SCRATCH = Path(os.environ.get("FOUNDRY_FUZZ_SCRATCH", "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()))


def seed_manifest() -> bytes:
    """The real archive's manifest, as JSON: the corpus's seed."""
    return zlib.decompress(_SEED_BYTES[_OFFSET : _OFFSET + _LENGTH])


def sealed(manifest: bytes) -> bytes:
    """An archive of the seed's blobs and `manifest`, with a checksum that matches."""
    payload = zlib.compress(manifest, 1)
    header = HEADER.pack(MAGIC, FORMAT_VERSION, 0, HEADER.size + len(_BLOBS), len(payload), hashlib.sha256(payload).digest())
    return header + _BLOBS + payload


def one_input(data: bytes) -> None:
    descriptor, path = tempfile.mkstemp(suffix=".foundry", dir=SCRATCH)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(sealed(data.replace(b'"version":2', b'"version":3')))
        try:
            with Archive(path) as archive:
                host_load.run(archive)
        except (ArchiveFormatError, FoundryTraceError, FoundryAllocError):
            pass
    finally:
        os.unlink(path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--seed"]:
        Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
        (Path(sys.argv[2]) / "micro-manifest.json").write_bytes(seed_manifest())
    else:
        run_atheris(one_input)

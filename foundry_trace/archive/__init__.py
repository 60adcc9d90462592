"""The archive: a versioned file of content-addressed blobs, a JSON manifest and signatures.
Public: reading an archive (Archive, its Manifest, each GraphEntry, the Fingerprint LOAD checks)
and signing one (generate_key, sign_archive, verify_signatures, TrustPolicy). The node-table codec
(_node_table.py), the records it encodes (records.py), the writer SAVE uses (format.ArchiveWriter)
and what `foundry inspect` shows (summary.py) are the library's own. Nothing here calls the CUDA
driver or needs the compiled restore library."""

from foundry_trace.archive.format import Archive
from foundry_trace.archive.manifest import Fingerprint, GraphEntry, Manifest
from foundry_trace.archive.signing import TrustPolicy, generate_key, sign_archive, verify_signatures

__all__ = ["Archive", "Fingerprint", "GraphEntry", "Manifest", "TrustPolicy", "generate_key", "sign_archive", "verify_signatures"]

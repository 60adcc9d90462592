"""Authentication of archives: an archive is code. Restoring one runs its GPU code: module
binaries go to the driver as code, argument bytes become kernel arguments, and memset, memcpy
and collective nodes write to the addresses they name. Checksums only catch accidents; anyone
who can write the file can recompute them. So a fleet trusts an archive by its digest (the
SHA-256 of its manifest, which names every blob's SHA-256) or by an Ed25519 signature of that
digest from a key the operator trusts, and refuses anything else before a byte of it reaches
the driver.

    foundry keygen --out release.key             # release.key (private, 0600) and release.key.pub
    foundry sign model.foundry --key release.key
    FOUNDRY_TRUSTED_KEYS=/etc/foundry/release.key.pub   # LOAD: signed archives only
    FOUNDRY_ARCHIVE_DIGEST=sha256:...                  # LOAD: this archive only

Keys: Ed25519 through `cryptography`; private keys as unencrypted PKCS#8 PEM files, public keys
as PEM (SubjectPublicKeyInfo) or OpenSSH ("ssh-ed25519 AAAA...") lines.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from foundry_trace.archive.format import Archive, Signature, signature_block
from foundry_trace.errors import ArchiveFormatError, UntrustedArchiveError

ENV_TRUSTED_KEYS = "FOUNDRY_TRUSTED_KEYS"
ENV_ARCHIVE_DIGEST = "FOUNDRY_ARCHIVE_DIGEST"
ENVIRONMENT_VARIABLES: dict[str, str] = {
    ENV_TRUSTED_KEYS: "public key files (or folders of *.pub), separated by ':': LOAD then restores only archives "
    "signed by one of them (foundry sign).",
    ENV_ARCHIVE_DIGEST: "sha256:<hex>: LOAD restores only the archive with this digest (foundry inspect prints it).",
}
SIGNED_MESSAGE_TAG = b"foundry-archive-digest-v1\0"  # domain separation: these keys sign nothing else


def _ed25519():  # noqa: ANN202 - the cryptography module
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise UntrustedArchiveError("signatures need the `cryptography` package: pip install cryptography") from None
    return ed25519


def signed_message(digest: str) -> bytes:
    """What a signature signs: a tag and the archive's digest."""
    return SIGNED_MESSAGE_TAG + bytes.fromhex(digest)


def key_id(public_key: bytes) -> str:
    """A short name for a public key in messages: the start of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def parse_digest(text: str) -> str:
    """'sha256:<64 hex>' or '<64 hex>' -> the hex digest; ValueError otherwise."""
    value = text.strip().lower().removeprefix("sha256:")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{text!r} is not an archive digest: write sha256: and 64 hex digits, as foundry inspect prints it")
    return value


def generate_key(path: str | Path) -> tuple[Path, Path]:
    """Writes a new Ed25519 private key to `path` (mode 0600) and its public key beside it
    (`path`.pub); returns both paths. Refuses to overwrite a key."""
    from cryptography.hazmat.primitives import serialization

    private_path, public_path = Path(path), Path(str(path) + ".pub")
    for existing in (private_path, public_path):
        if existing.exists():
            raise UntrustedArchiveError(f"{existing} exists: choose another name, or remove it if you meant to replace the key")
    key = _ed25519().Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: str | Path):  # noqa: ANN201 - Ed25519PrivateKey
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise UntrustedArchiveError(f"cannot read the private key {path}: {error}: give an Ed25519 PEM key (foundry keygen writes one)") from None
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise UntrustedArchiveError(f"{path} is not an Ed25519 private key: foundry keygen writes one")
    return key


def raw_public_key(private_key) -> bytes:  # noqa: ANN001 - Ed25519PrivateKey
    """The raw 32 bytes of a private key's public half (what signatures carry, key_id names)."""
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(path: str | Path) -> bytes:
    """The raw 32 bytes of an Ed25519 public key file (PEM or OpenSSH)."""
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
        key = serialization.load_ssh_public_key(data) if data.startswith(b"ssh-") else serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as error:
        raise UntrustedArchiveError(f"cannot read the public key {path}: {error}: give an Ed25519 key in PEM or OpenSSH form") from None
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise UntrustedArchiveError(f"{path} is not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def trusted_key_paths(environ: Mapping[str, str] | None = None) -> list[str]:
    """The entries of FOUNDRY_TRUSTED_KEYS (key files or folders), empty ones skipped."""
    env = os.environ if environ is None else environ
    return [entry for entry in env.get(ENV_TRUSTED_KEYS, "").split(os.pathsep) if entry.strip()]


def public_keys_from(entries: Iterable[str | Path]) -> tuple[bytes, ...]:
    """Public keys from files, and from every *.pub file of the folders among `entries`."""
    keys = []
    for entry in entries:
        path = Path(entry)
        files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
        if not files:
            raise UntrustedArchiveError(f"{path} holds no *.pub key: a trusted-keys folder must hold the keys LOAD accepts")
        keys += [load_public_key(file) for file in files]
    return tuple(keys)


def sign_archive(path: str | Path, private_key_path: str | Path) -> str:
    """Adds a signature of the archive's digest by the key (replacing an earlier one by the same
    key), after checking every blob; the file is rewritten atomically. Returns the digest."""
    key = load_private_key(private_key_path)
    public = raw_public_key(key)
    path = Path(path)
    with Archive(path) as archive:
        if archive.version < 3:
            raise ArchiveFormatError(f"{path} is format {archive.version}, which holds no signatures: save it again with this Foundry")
        archive.verify()  # sign only what is intact
        signatures = [s for s in archive.signatures if s.public_key != public]
        signatures.append(Signature(public, key.sign(signed_message(archive.digest))))
        end, digest = archive.manifest_end, archive.digest
    partial = path.with_name(path.name + ".signing")
    try:
        with open(path, "rb") as source, open(partial, "wb") as target:
            shutil.copyfileobj(source, target)
            target.truncate(end)
            target.seek(end)
            target.write(signature_block(signatures))
            target.flush()
            os.fsync(target.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return digest


@dataclass(frozen=True)
class TrustPolicy:
    """What LOAD accepts: with `digest`, only the archive of that digest; with `trusted_keys`,
    only archives signed by one of them (a signature by a trusted key that does not verify is a
    tampered archive: refused). Neither: any intact archive (checksums only)."""

    digest: str | None = None
    trusted_keys: tuple[bytes, ...] = field(default=())

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> TrustPolicy:
        """FOUNDRY_ARCHIVE_DIGEST and FOUNDRY_TRUSTED_KEYS (UntrustedArchiveError naming a bad one)."""
        env = os.environ if environ is None else environ
        digest = None
        if env.get(ENV_ARCHIVE_DIGEST, "").strip():
            try:
                digest = parse_digest(env[ENV_ARCHIVE_DIGEST])
            except ValueError as error:
                raise UntrustedArchiveError(f"{ENV_ARCHIVE_DIGEST}: {error}") from None
        return cls(digest=digest, trusted_keys=public_keys_from(trusted_key_paths(env)))

    def with_arguments(self, digest: str | None, trusted_keys: Iterable[str | Path] | None) -> TrustPolicy:
        """This policy with load()'s own arguments, which win."""
        return TrustPolicy(
            digest=parse_digest(digest) if digest is not None else self.digest,
            trusted_keys=public_keys_from(trusted_keys) if trusted_keys is not None else self.trusted_keys,
        )

    def check(self, archive: Archive) -> None:
        """Refuses (UntrustedArchiveError) an archive this policy does not accept."""
        where = str(archive.path)
        if self.digest is not None and archive.digest != self.digest:
            raise UntrustedArchiveError(
                f"{where} has digest sha256:{archive.digest}, not the pinned sha256:{self.digest}: it is another archive, or "
                f"it was changed; restore the pinned one or pin this one ({ENV_ARCHIVE_DIGEST} / load(digest=...))"
            )
        if not self.trusted_keys:
            return
        ed25519 = _ed25519()
        message, verified = signed_message(archive.digest), []
        for signature in archive.signatures:
            if signature.public_key not in self.trusted_keys:
                continue
            try:
                ed25519.Ed25519PublicKey.from_public_bytes(signature.public_key).verify(signature.signature, message)
            except Exception:  # noqa: BLE001 - cryptography's InvalidSignature, or a malformed key
                raise UntrustedArchiveError(
                    f"{where}: its signature by trusted key {key_id(signature.public_key)} does not match its contents: "
                    "the archive was changed after it was signed; do not restore it"
                ) from None
            verified.append(key_id(signature.public_key))
        if not verified:
            signers = ", ".join(key_id(s.public_key) for s in archive.signatures) or "nobody"
            raise UntrustedArchiveError(
                f"{where} is signed by {signers}, and only archives signed by a trusted key "
                f"({', '.join(key_id(k) for k in self.trusted_keys)}) are restored here: sign it with `foundry sign` and a trusted key"
            )


def verify_signatures(path: str | Path, trusted_keys: Iterable[str | Path]) -> list[str]:
    """`foundry verify-signature`: checks the archive's blobs and its signature by one of the
    trusted keys; returns the ids of the trusted keys whose signatures verified."""
    policy = TrustPolicy(trusted_keys=public_keys_from(trusted_keys))
    with Archive(path) as archive:
        policy.check(archive)
        archive.verify()
        return [key_id(s.public_key) for s in archive.signatures if s.public_key in policy.trusted_keys]


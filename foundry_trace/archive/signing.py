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

import errno
import hashlib
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from foundry_trace.archive.format import Archive, Signature, signature_block
from foundry_trace.errors import ArchiveFormatError, TrustSettingError, UntrustedArchiveError

ENV_TRUSTED_KEYS = "FOUNDRY_TRUSTED_KEYS"
ENV_ARCHIVE_DIGEST = "FOUNDRY_ARCHIVE_DIGEST"
ENVIRONMENT_VARIABLES: dict[str, str] = {
    ENV_TRUSTED_KEYS: "public key files (or folders of *.pub), separated by ':': LOAD then restores only archives "
    "signed by one of them (foundry sign).",
    ENV_ARCHIVE_DIGEST: "sha256:<hex>: LOAD restores only the archive with this digest (foundry inspect prints it).",
}
SIGNED_MESSAGE_TAG = b"foundry-archive-digest-v1\0"  # domain separation: these keys sign nothing else
VERIFIED, INVALID, UNVERIFIED = "verified", "does not verify", "unverified"  # a signature block, as inspect shows it


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
    (`path`.pub, mode 0644 whatever the umask); returns both paths. Each file is created new
    (O_EXCL, O_NOFOLLOW): an existing file or a link, dangling or not, is refused, never
    followed or overwritten. On any failure nothing is left behind, the private key least of
    all, and UntrustedArchiveError says what failed and what to do."""
    from cryptography.hazmat.primitives import serialization

    private_path, public_path = Path(path), Path(str(path) + ".pub")
    key = _ed25519().Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    written: list[Path] = []
    try:
        for target, data, mode in ((private_path, pem, 0o600), (public_path, public, 0o644)):
            _write_new(target, data, mode)
            written.append(target)
    except OSError as error:
        for done in written:
            done.unlink(missing_ok=True)
        raise UntrustedArchiveError(f"cannot write the key pair: {_write_problem(error)}; nothing was written") from None
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Creates `path` (never through a link, never over a file) with exactly `mode`; a partly
    written file is removed."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(descriptor, mode)  # the umask narrowed the mode open() applied
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_problem(error: OSError) -> str:
    """An OSError of generate_key as the problem and its fix."""
    where = error.filename
    if error.errno == errno.EEXIST:
        return f"{where} exists (as a file or a link): choose another name, or remove it if you meant to replace the key"
    if error.errno == errno.ENOENT:
        return f"the folder of {where} does not exist: create it or choose another --out"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where} cannot be written ({error.strerror}): choose a folder you can write"
    return f"{where}: {error.strerror}"


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
    """The entries of FOUNDRY_TRUSTED_KEYS (key files or folders); none where it is unset.
    Set, it must name something: a blank value or an empty entry (" ", ":", "a::b") is a
    TrustSettingError, since read as nothing it would switch the check off."""
    env = os.environ if environ is None else environ
    if ENV_TRUSTED_KEYS not in env:
        return []
    entries = env[ENV_TRUSTED_KEYS].split(os.pathsep)
    if any(not entry.strip() for entry in entries):
        raise TrustSettingError(
            f"{ENV_TRUSTED_KEYS}={env[ENV_TRUSTED_KEYS]!r} has an empty entry: give public key files or folders of *.pub, "
            f"separated by '{os.pathsep}', or unset it to restore unsigned archives"
        )
    return entries


def key_entries(entries: Iterable[str | Path] | str | Path, what: str) -> list[str | Path]:
    """The key files or folders a caller named (one path, or several), each non-empty: an empty
    string would read as the working directory and trust every *.pub there, and an empty list
    would trust nothing by accident. TrustSettingError names `what` otherwise."""
    listed = [entries] if isinstance(entries, (str, Path)) else list(entries)
    if not listed or any(isinstance(entry, str) and not entry.strip() for entry in listed):
        raise TrustSettingError(
            f"{what}={entries!r} names no key file: give public key files or folders of *.pub (None leaves the check "
            f"to {ENV_TRUSTED_KEYS})"
        )
    return listed


def public_keys_from(entries: Iterable[str | Path]) -> tuple[bytes, ...]:
    """Public keys from files, and from every *.pub file of the folders among `entries`."""
    keys = []
    for entry in key_entries(entries, "trusted keys"):
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
    tampered archive: refused). Neither: any intact archive (checksums only).

    A policy is the union of what is configured: load()'s arguments add to the environment's
    (with_arguments), never take from it, so no argument can switch a fleet's check off."""

    digest: str | None = None
    trusted_keys: tuple[bytes, ...] = field(default=())

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> TrustPolicy:
        """FOUNDRY_ARCHIVE_DIGEST and FOUNDRY_TRUSTED_KEYS. Unset, each checks nothing; set, each
        must be well formed (TrustSettingError naming it otherwise, also for a blank value)."""
        env = os.environ if environ is None else environ
        digest = None
        if ENV_ARCHIVE_DIGEST in env:
            try:
                digest = parse_digest(env[ENV_ARCHIVE_DIGEST])
            except ValueError as error:
                raise TrustSettingError(f"{ENV_ARCHIVE_DIGEST}: {error}, or unset it to restore any archive") from None
        paths = trusted_key_paths(env)
        return cls(digest=digest, trusted_keys=public_keys_from(paths) if paths else ())

    def with_arguments(self, digest: str | None, trusted_keys: Iterable[str | Path] | str | Path | None) -> TrustPolicy:
        """This policy and load()'s own arguments: a digest pins the archive (one that differs
        from the environment's pins none: refused), trusted keys join the environment's."""
        pinned = self.digest
        if digest is not None:
            try:
                pinned = parse_digest(digest)
            except ValueError as error:
                raise TrustSettingError(f"digest: {error}") from None
            if self.digest is not None and pinned != self.digest:
                raise TrustSettingError(
                    f"digest=sha256:{pinned} and {ENV_ARCHIVE_DIGEST}=sha256:{self.digest} pin different archives, and an "
                    "archive must match both: pass the same digest, or none"
                )
        added = public_keys_from(key_entries(trusted_keys, "trusted_keys")) if trusted_keys is not None else ()
        return TrustPolicy(digest=pinned, trusted_keys=self.trusted_keys + tuple(k for k in added if k not in self.trusted_keys))

    def covers(self, other: TrustPolicy) -> bool:
        """Whether an archive this policy accepted is one `other` would accept: the same pinned
        digest where `other` pins one, and where `other` wants a signature, one required here by
        keys `other` trusts too."""
        digest_covered = other.digest is None or other.digest == self.digest
        keys_covered = not other.trusted_keys or (bool(self.trusted_keys) and set(self.trusted_keys) <= set(other.trusted_keys))
        return digest_covered and keys_covered

    def describe(self) -> str:
        """The policy in a few words, for messages."""
        parts = [f"digest sha256:{self.digest}"] if self.digest else []
        parts += [f"a signature by {', '.join(key_id(k) for k in self.trusted_keys)}"] if self.trusted_keys else []
        return " and ".join(parts) or "checksums only"

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
        verified = []
        for key, status in signature_status(archive, self.trusted_keys):
            if status == INVALID:
                raise UntrustedArchiveError(
                    f"{where}: its signature by trusted key {key} does not match its contents: "
                    "the archive was changed after it was signed; do not restore it"
                )
            if status == VERIFIED:
                verified.append(key)
        if not verified:
            signers = ", ".join(key_id(s.public_key) for s in archive.signatures) or "nobody"
            raise UntrustedArchiveError(
                f"{where} is signed by {signers}, and only archives signed by a trusted key "
                f"({', '.join(key_id(k) for k in self.trusted_keys)}) are restored here: sign it with `foundry sign` and a trusted key"
            )


def signature_status(archive: Archive, trusted_keys: tuple[bytes, ...]) -> list[tuple[str, str]]:
    """Each signature block's key id and what is known of it: VERIFIED or INVALID against the
    trusted key it names, UNVERIFIED where it names no trusted key (never checked: its key id
    is only what the block claims)."""
    message, statuses = signed_message(archive.digest), []
    for signature in archive.signatures:
        status = UNVERIFIED
        if signature.public_key in trusted_keys:
            try:
                _ed25519().Ed25519PublicKey.from_public_bytes(signature.public_key).verify(signature.signature, message)
                status = VERIFIED
            except Exception:  # noqa: BLE001 - cryptography's InvalidSignature, or a malformed key
                status = INVALID
        statuses.append((key_id(signature.public_key), status))
    return statuses


def verify_signatures(path: str | Path, trusted_keys: Iterable[str | Path]) -> list[str]:
    """`foundry verify-signature`: checks the archive's blobs and its signature by one of the
    trusted keys; returns the ids of the trusted keys whose signatures verified."""
    policy = TrustPolicy(trusted_keys=public_keys_from(trusted_keys))
    with Archive(path) as archive:
        policy.check(archive)
        archive.verify()
        return [key_id(s.public_key) for s in archive.signatures if s.public_key in policy.trusted_keys]


"""Archives a fleet can trust: the digest SAVE prints, pinned by LOAD; Ed25519 signatures by
keys the operator trusts; an unsigned, tampered or foreign archive refused at open, by the
same check LOAD runs before any of the archive reaches the driver."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from foundry_trace.archive.format import Archive
from foundry_trace.archive.signing import (
    TrustPolicy,
    generate_key,
    key_id,
    load_public_key,
    sign_archive,
    verify_signatures,
)
from foundry_trace.bench.damage import corrupt_blob, read_manifest, rewrite_manifest
from foundry_trace.cli import main
from foundry_trace.errors import ArchiveFormatError, UntrustedArchiveError

from .archive_samples import fixed_contents, write_archive


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    manifest, blobs = fixed_contents()
    return write_archive(tmp_path / "sample.foundry", manifest, blobs)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    release, _ = generate_key(tmp_path / "release.key")
    other, _ = generate_key(tmp_path / "other.key")
    return {"release": release, "other": other}


def _policy(*public: Path) -> TrustPolicy:
    return TrustPolicy().with_arguments(None, [str(p) for p in public])


def test_a_signed_archive_is_accepted_by_its_key_and_refused_by_others(sample: Path, keys: dict[str, Path]) -> None:
    with Archive(sample) as archive:
        digest = archive.digest
    assert sign_archive(sample, keys["release"]) == digest, "signing does not change the digest"
    release_pub, other_pub = Path(f"{keys['release']}.pub"), Path(f"{keys['other']}.pub")
    with Archive(sample) as archive:
        assert [key_id(s.public_key) for s in archive.signatures] == [key_id(load_public_key(release_pub))]
        _policy(release_pub).check(archive)
        with pytest.raises(UntrustedArchiveError, match="only archives signed by a trusted key"):
            _policy(other_pub).check(archive)
        archive.verify()  # the signature block does not disturb the blobs
    assert verify_signatures(sample, [release_pub]) == [key_id(load_public_key(release_pub))]


def test_signing_again_replaces_the_keys_signature_and_keeps_the_others(sample: Path, keys: dict[str, Path]) -> None:
    sign_archive(sample, keys["release"])
    sign_archive(sample, keys["other"])
    sign_archive(sample, keys["release"])
    with Archive(sample) as archive:
        signers = sorted(key_id(s.public_key) for s in archive.signatures)
    assert signers == sorted(key_id(load_public_key(Path(f"{k}.pub"))) for k in keys.values())


def test_an_unsigned_archive_is_refused_when_keys_are_trusted(sample: Path, keys: dict[str, Path]) -> None:
    with Archive(sample) as archive, pytest.raises(UntrustedArchiveError, match="is signed by nobody"):
        _policy(Path(f"{keys['release']}.pub")).check(archive)


def test_a_manifest_changed_after_signing_is_refused(sample: Path, keys: dict[str, Path]) -> None:
    sign_archive(sample, keys["release"])
    signed = sample.read_bytes()
    with Archive(sample) as archive:
        end = archive.manifest_end

    def change(manifest: dict, _: int) -> bytes:
        manifest["graphs"][0]["nodes"] += 1
        return b""

    rewrite_manifest(sample, change)  # a new manifest, checksums recomputed: the old signature kept
    sample.write_bytes(sample.read_bytes() + signed[end:])
    with Archive(sample) as archive, pytest.raises(UntrustedArchiveError, match="changed after it was signed"):
        _policy(Path(f"{keys['release']}.pub")).check(archive)


def test_a_blob_changed_after_signing_fails_its_checksum_before_use(sample: Path, keys: dict[str, Path]) -> None:
    sign_archive(sample, keys["release"])
    corrupt_blob(sample, read_manifest(sample)["modules"][0]["digest"])
    with Archive(sample) as archive:
        _policy(Path(f"{keys['release']}.pub")).check(archive)  # the manifest is what was signed
        with pytest.raises(ArchiveFormatError, match="checksum mismatch"):
            archive.blob(archive.manifest.modules[0].digest)  # but the changed bytes never reach a caller


def test_bytes_appended_to_an_archive_are_refused(sample: Path, keys: dict[str, Path]) -> None:
    sample.write_bytes(sample.read_bytes() + b"extra")
    with pytest.raises(ArchiveFormatError, match="unexpected bytes after the manifest"):
        Archive(sample)
    manifest, blobs = fixed_contents()
    signed = write_archive(sample.with_name("signed.foundry"), manifest, blobs)
    sign_archive(signed, keys["release"])
    signed.write_bytes(signed.read_bytes()[:-3])
    with pytest.raises(ArchiveFormatError, match="not a signature block"):
        Archive(signed)


def test_the_digest_pins_one_archive(sample: Path) -> None:
    with Archive(sample) as archive:
        TrustPolicy(digest=archive.digest).check(archive)
        TrustPolicy().with_arguments(f"sha256:{archive.digest}", None).check(archive)
        with pytest.raises(UntrustedArchiveError, match="not the pinned sha256:" + "0" * 64):
            TrustPolicy(digest="0" * 64).check(archive)


def test_the_environment_sets_the_policy(tmp_path: Path, keys: dict[str, Path]) -> None:
    folder = tmp_path / "trusted"
    folder.mkdir()
    (folder / "release.pub").write_bytes(Path(f"{keys['release']}.pub").read_bytes())
    policy = TrustPolicy.from_environment({"FOUNDRY_TRUSTED_KEYS": f"{folder}{os.pathsep}{keys['other']}.pub", "FOUNDRY_ARCHIVE_DIGEST": "sha256:" + "ab" * 32})
    assert len(policy.trusted_keys) == 2 and policy.digest == "ab" * 32
    with pytest.raises(UntrustedArchiveError, match="FOUNDRY_ARCHIVE_DIGEST: 'nope' is not an archive digest"):
        TrustPolicy.from_environment({"FOUNDRY_ARCHIVE_DIGEST": "nope"})
    with pytest.raises(UntrustedArchiveError, match="cannot read the public key"):
        TrustPolicy.from_environment({"FOUNDRY_TRUSTED_KEYS": str(tmp_path / "absent.pub")})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UntrustedArchiveError, match="holds no \\*.pub key"):
        TrustPolicy.from_environment({"FOUNDRY_TRUSTED_KEYS": str(empty)})


def test_keys_are_not_overwritten_and_the_private_key_is_private(keys: dict[str, Path]) -> None:
    assert keys["release"].stat().st_mode & 0o777 == 0o600
    with pytest.raises(UntrustedArchiveError, match="exists"):
        generate_key(keys["release"])


def test_the_cli_signs_verifies_and_inspect_shows_digest_and_signers(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "cli.key"
    assert main(["keygen", "--out", str(key)]) == 0
    assert main(["sign", str(sample), "--key", str(key)]) == 0
    assert main(["verify-signature", str(sample), "--trusted-keys", f"{key}.pub"]) == 0
    assert main(["inspect", str(sample), "--trusted-keys", f"{key}.pub"]) == 0
    out = capsys.readouterr().out
    with Archive(sample) as archive:
        assert f"digest sha256:{archive.digest}, signed by {key_id(load_public_key(Path(f'{key}.pub')))} (verified)" in out
    other = tmp_path / "other-cli.key"
    main(["keygen", "--out", str(other)])
    assert main(["verify-signature", str(sample), "--trusted-keys", f"{other}.pub"]) == 2
    assert "only archives signed by a trusted key" in capsys.readouterr().err

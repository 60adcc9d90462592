"""A trust policy nothing switches off by accident: load()'s arguments add to the environment's
policy and never remove it, a blank or malformed setting is an error naming it, a prefetch
carries the policy it checked, `foundry inspect` shows only what it verified and prints an
archive's strings escaped, and `foundry keygen` leaves either a whole key pair or nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import foundry_alloc as fa
from foundry_trace.archive.format import Archive
from foundry_trace.archive.signing import TrustPolicy, generate_key, key_id, load_public_key, sign_archive
from foundry_trace.archive.summary import render, summarize
from foundry_trace.bench.damage import rewrite_manifest
from foundry_trace.cli import main
from foundry_trace.errors import TrustSettingError, UntrustedArchiveError
from foundry_trace.restore.load import load
from foundry_trace.restore.restored import Restored

from .archive_samples import fixed_contents, write_archive


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    manifest, blobs = fixed_contents()
    return write_archive(tmp_path / "sample.foundry", manifest, blobs)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A public key the environment trusts in these tests (its private key beside it)."""
    return generate_key(tmp_path / "release.key")[1]


@pytest.mark.parametrize("keys", [[], (), "", [""], ["  "]])
def test_an_argument_naming_no_key_is_an_error_not_no_check(sample: Path, release: Path, keys: object) -> None:
    """trusted_keys=[] used to replace the environment's keys with none and accept an unsigned
    archive; "" or an empty entry read as "." and trusted every *.pub in the working directory."""
    environment = TrustPolicy.from_environment({"FOUNDRY_TRUSTED_KEYS": str(release)})
    with pytest.raises(TrustSettingError, match="names no key file"):
        environment.with_arguments(None, keys)  # type: ignore[arg-type]
    with pytest.raises(TrustSettingError, match="names no key file"):
        TrustPolicy().with_arguments(None, keys)  # type: ignore[arg-type]


def test_arguments_add_to_the_environments_policy(sample: Path, release: Path, tmp_path: Path) -> None:
    other = generate_key(tmp_path / "other.key")[1]
    with Archive(sample) as archive:
        digest = archive.digest
    environment = TrustPolicy.from_environment({"FOUNDRY_TRUSTED_KEYS": str(release), "FOUNDRY_ARCHIVE_DIGEST": f"sha256:{digest}"})
    policy = environment.with_arguments(f"sha256:{digest}", [str(other)])
    assert policy.digest == digest and set(policy.trusted_keys) == {load_public_key(release), load_public_key(other)}
    with Archive(sample) as archive, pytest.raises(UntrustedArchiveError, match="signed by nobody"):
        policy.check(archive)  # the environment's requirement of a signature still holds
    with pytest.raises(TrustSettingError, match="pin different archives"):
        environment.with_arguments("sha256:" + "0" * 64, None)
    sign_archive(sample, tmp_path / "other.key")
    with Archive(sample) as archive:
        policy.check(archive)  # signed by the key the argument added


@pytest.mark.parametrize(
    ("variable", "value"),
    [("FOUNDRY_TRUSTED_KEYS", " "), ("FOUNDRY_TRUSTED_KEYS", ":"), ("FOUNDRY_TRUSTED_KEYS", "\t"), ("FOUNDRY_TRUSTED_KEYS", ""),
     ("FOUNDRY_ARCHIVE_DIGEST", " "), ("FOUNDRY_ARCHIVE_DIGEST", ""), ("FOUNDRY_ARCHIVE_DIGEST", "sha256:zz")],
)
def test_a_blank_or_malformed_trust_variable_is_a_config_error_naming_it(variable: str, value: str) -> None:
    with pytest.raises(fa.ConfigError, match=variable):
        TrustPolicy.from_environment({variable: value})


def test_an_empty_entry_among_keys_is_an_error(release: Path) -> None:
    with pytest.raises(TrustSettingError, match="empty entry"):
        TrustPolicy.from_environment({"FOUNDRY_TRUSTED_KEYS": f"{release}{os.pathsep}"})


@pytest.mark.parametrize(
    ("variable", "value"),
    [("FOUNDRY_TRUSTED_KEYS", " "), ("FOUNDRY_TRUSTED_KEYS", ":"), ("FOUNDRY_ARCHIVE_DIGEST", " "), ("FOUNDRY_ALLOC_SIZE", "abc"),
     ("FOUNDRY_ALLOC_BASE", "0x1")],
)
def test_foundry_env_checks_every_variable_whatever_else_is_set(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("FOUNDRY_ALLOC", "FOUNDRY_MODE", "FOUNDRY_TRUSTED_KEYS", "FOUNDRY_ARCHIVE_DIGEST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert main(["env"]) == 2
    assert variable in capsys.readouterr().out


def test_start_up_refuses_a_blank_trust_variable(tmp_path: Path) -> None:
    from foundry_trace.mode import mode_from_environment

    with pytest.raises(fa.ConfigError, match="FOUNDRY_TRUSTED_KEYS"):
        mode_from_environment({"FOUNDRY_MODE": "load", "FOUNDRY_ARCHIVE": str(tmp_path / "a.foundry"), "FOUNDRY_TRUSTED_KEYS": " "})


class _Prefetched(Restored):
    """What prefetch() returns, as far as load() looks before it restores: the open archive and
    the policy it was checked with (no GPU: release() only records that it ran)."""

    def __init__(self, archive: Archive, policy: TrustPolicy) -> None:  # noqa: D107 - no resources to hold
        self.archive, self.policy, self.release_ran = archive, policy, False

    def release(self, wait: bool = True) -> None:  # noqa: ARG002 - nothing to wait for
        self.release_ran = True


def test_load_of_a_prefetch_refuses_a_check_the_prefetch_did_not_make(sample: Path, release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load(prefetch(path), digest=...) used to ignore both arguments: a prefetch made without a
    policy restored an unpinned, unsigned archive."""
    monkeypatch.delenv("FOUNDRY_TRUSTED_KEYS", raising=False)
    monkeypatch.delenv("FOUNDRY_ARCHIVE_DIGEST", raising=False)
    with Archive(sample) as archive:
        for digest, keys in ((archive.digest, None), (None, [str(release)])):
            early = _Prefetched(archive, TrustPolicy())
            with pytest.raises(TrustSettingError, match="prefetch\\(\\) checked checksums only"):
                load(early, digest=digest, trusted_keys=keys)
            assert early.release_ran, "a refused prefetch is released"
        early = _Prefetched(archive, TrustPolicy(digest="0" * 64))
        with pytest.raises(TrustSettingError, match="prefetch\\(\\) checked digest"):
            load(early, digest=archive.digest)
        early = _Prefetched(archive, TrustPolicy())
        with pytest.raises(TrustSettingError, match="names no key file"):
            load(early, trusted_keys=[])
        assert early.release_ran, "a prefetch given a bad setting is released"
        checked = TrustPolicy(digest=archive.digest)
        assert checked.covers(TrustPolicy().with_arguments(archive.digest, None)) and checked.covers(TrustPolicy())


def test_inspect_names_a_signer_only_when_its_signature_verified(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A signature block of 64 zero bytes after a real public key used to show as "signed by"."""
    key, public = generate_key(tmp_path / "release.key")
    sign_archive(sample, key)
    data = bytearray(sample.read_bytes())
    data[-64:] = bytes(64)  # the one signature's bytes; its public key stays
    sample.write_bytes(bytes(data))
    trusted = (load_public_key(public),)
    unchecked, checked = summarize(sample), summarize(sample, trusted)
    assert unchecked["signed_by"] == [] and unchecked["signatures"] == [{"key": key_id(trusted[0]), "status": "unverified"}]
    assert checked["signed_by"] == [] and checked["signatures"][0]["status"] == "does not verify"
    assert "DOES NOT VERIFY" in render(checked) and "signed by" not in render(unchecked)
    assert main(["inspect", str(sample), "--trusted-keys", str(public)]) == 0
    assert "DOES NOT VERIFY" in capsys.readouterr().out


def test_inspect_prints_an_archives_strings_escaped(sample: Path) -> None:
    hostile = "\x1b[2J\x1b[H digest verified \u202e\x9b31m"

    def rename(manifest: dict, _: int) -> bytes:
        manifest["functions"][0]["name"] = hostile
        manifest["created"] = hostile
        manifest["fingerprint"]["gpu"] = hostile
        return b""

    rewrite_manifest(sample, rename)
    text = render(summarize(sample))
    assert not any(c in text for c in "\x1b\u202e\x9b"), text
    assert "\\x1b[2J" in text and "\\u202e" in text and "\\x9b31m" in text


def test_keygen_writes_the_public_key_0644_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        private, public = generate_key(tmp_path / "open.key")
    finally:
        os.umask(previous)
    assert private.stat().st_mode & 0o777 == 0o600 and public.stat().st_mode & 0o777 == 0o644


def test_keygen_follows_no_link_and_leaves_nothing_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "elsewhere.pub"
    (tmp_path / "linked.key.pub").symlink_to(target)  # dangling
    assert main(["keygen", "--out", str(tmp_path / "linked.key")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "exists (as a file or a link)" in error, error
    assert not target.exists() and not (tmp_path / "linked.key").exists(), "no key written, no link followed"


def test_keygen_into_a_missing_folder_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path / "absent" / "release.key")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "does not exist: create it" in error, error
    assert not (tmp_path / "absent").exists()


def test_keygen_leaves_no_private_key_when_the_public_one_cannot_be_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "release.key.pub").mkdir()  # the public key's name is taken
    assert main(["keygen", "--out", str(tmp_path / "release.key")]) == 2
    assert "release.key.pub exists" in capsys.readouterr().err
    assert not (tmp_path / "release.key").exists(), "no orphan private key"


def test_verify_signature_with_an_empty_key_entry_trusts_nothing(sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--trusted-keys ""` used to read as "." and trust every *.pub in the working directory."""
    key, _ = generate_key(tmp_path / "anyone.key")
    sign_archive(sample, key)
    monkeypatch.chdir(tmp_path)
    assert main(["verify-signature", str(sample), "--trusted-keys", ""]) == 2
    assert "names no key file" in capsys.readouterr().err

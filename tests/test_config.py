"""Allocator settings and their environment variables."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

import foundry_alloc as fa
from foundry_alloc.config import SIZE_UNIT, parse_address, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4T", 4 << 40), ("512GiB", 512 << 30), ("256m", 256 << 20), ("268435456", 1 << 28), ("0x10000000", 1 << 28)],
)
def test_sizes_parse(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@given(st.integers(min_value=0, max_value=1 << 46), st.sampled_from(["", "K", "M", "G", "T"]))
def test_size_text_round_trips(count: int, suffix: str) -> None:
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[suffix]
    assert parse_size(f"{count}{suffix}") == count * scale


@pytest.mark.parametrize("text", ["", "big", "-4T", "4P", "1.5G"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_addresses_parse() -> None:
    assert parse_address(" 0x200000000000 ") == 0x200000000000
    assert parse_address("35184372088832") == 0x200000000000
    with pytest.raises(ValueError, match="not an address"):
        parse_address("0xnope")


def test_defaults() -> None:
    config = fa.AllocatorConfig.create()
    assert (config.base, config.size) == (fa.DEFAULT_BASE, fa.DEFAULT_SIZE)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"base": 0x200000000001}, "multiple of 2 MiB"),
        ({"size": SIZE_UNIT + 1}, "multiple of 256 MiB"),
        ({"size": 0}, "greater than or equal"),
        ({"base": 0x7F0000000000, "size": 4 << 40}, "past the 128 TiB"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_configurations_name_the_problem(values: dict[str, object], problem: str) -> None:
    with pytest.raises(fa.ConfigError, match=problem):
        fa.AllocatorConfig.create(**values)


def test_environment_off_means_no_configuration() -> None:
    assert fa.AllocatorConfig.from_environment({}) is None
    assert fa.AllocatorConfig.from_environment({"FOUNDRY_ALLOC": "0", "FOUNDRY_ALLOC_SIZE": "1T"}) is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [("FOUNDRY_ALLOC_SIZE", "abc"), ("FOUNDRY_ALLOC_SIZE", " "), ("FOUNDRY_ALLOC_BASE", "0x1"), ("FOUNDRY_ALLOC_BASE", ""), ("FOUNDRY_ALLOC_VERBOSE", "maybe")],
)
@pytest.mark.parametrize("enabled", [{}, {"FOUNDRY_ALLOC": "0"}, {"FOUNDRY_ALLOC": "1"}])
def test_a_bad_allocator_variable_is_an_error_whether_or_not_the_allocator_is_on(variable: str, value: str, enabled: dict[str, str]) -> None:
    """install() reads these variables whatever FOUNDRY_ALLOC says, so a bad one is an error
    then too (it used to pass unnoticed until an explicit install() met it)."""
    with pytest.raises(fa.ConfigError, match=variable):
        fa.AllocatorConfig.from_environment({**enabled, variable: value})


def test_environment_configuration() -> None:
    config = fa.AllocatorConfig.from_environment(
        {"FOUNDRY_ALLOC": "1", "FOUNDRY_ALLOC_BASE": "0x300000000000", "FOUNDRY_ALLOC_SIZE": "1T", "FOUNDRY_ALLOC_VERBOSE": "yes"}
    )
    assert config == fa.AllocatorConfig(base=0x300000000000, size=1 << 40, verbose=True)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"FOUNDRY_ALLOC": "maybe"}, "FOUNDRY_ALLOC='maybe' is not a switch"),
        ({"FOUNDRY_ALLOC": "1", "FOUNDRY_ALLOC_SIZE": "lots"}, "FOUNDRY_ALLOC_SIZE: 'lots' is not a size"),
        ({"FOUNDRY_ALLOC": "1", "FOUNDRY_ALLOC_BASE": "here"}, "FOUNDRY_ALLOC_BASE: 'here' is not an address"),
        ({"FOUNDRY_ALLOC": "1", "FOUNDRY_ALLOC_BASE": "0x201234"}, "multiple of 2 MiB"),
        ({"FOUNDRY_ALLOC": "1", "FOUNDRY_ALLOC_VERBOSE": "loud"}, "FOUNDRY_ALLOC_VERBOSE='loud'"),
    ],
)
def test_invalid_environment_values_name_the_variable(env: dict[str, str], problem: str) -> None:
    with pytest.raises(fa.ConfigError, match=problem.replace("(", r"\(")):
        fa.AllocatorConfig.from_environment(env)


def test_every_variable_is_documented() -> None:
    assert set(fa.ENVIRONMENT_VARIABLES) == {
        "FOUNDRY_ALLOC", "FOUNDRY_ALLOC_BASE", "FOUNDRY_ALLOC_SIZE", "FOUNDRY_ALLOC_VERBOSE", "FOUNDRY_ALLOC_PEER_BASE",
        "FOUNDRY_ALLOC_PEER_STRIDE",
    }


def test_messages_give_addresses_in_hex() -> None:
    with pytest.raises(fa.ConfigError) as raised:
        fa.AllocatorConfig.create(base=0x200000000001)
    assert "0x200000000001" in str(raised.value) and "35184372088833" not in str(raised.value)
    with pytest.raises(fa.ConfigError, match=r"base 0x1000: Input should be greater than or equal to 0x200000"):
        fa.AllocatorConfig.create(base=0x1000)


def test_an_explicit_install_takes_the_range_variables_and_its_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from foundry_alloc.config import requested_config

    monkeypatch.delenv("FOUNDRY_ALLOC", raising=False)
    monkeypatch.setenv("FOUNDRY_ALLOC_BASE", "0x300000000000")
    monkeypatch.setenv("FOUNDRY_ALLOC_SIZE", "1T")
    assert requested_config() == fa.AllocatorConfig(base=0x300000000000, size=1 << 40)
    assert requested_config(size=2 << 40) == fa.AllocatorConfig(base=0x300000000000, size=2 << 40)
    monkeypatch.setenv("FOUNDRY_ALLOC_BASE", "nowhere")
    with pytest.raises(fa.ConfigError, match="FOUNDRY_ALLOC_BASE: 'nowhere' is not an address"):
        requested_config()


def test_a_given_configuration_wins_and_names_the_variables_it_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    from foundry_alloc.config import requested_config

    monkeypatch.setenv("FOUNDRY_ALLOC_BASE", "0x300000000000")
    monkeypatch.delenv("FOUNDRY_ALLOC_SIZE", raising=False)
    given = fa.AllocatorConfig()
    with pytest.warns(UserWarning, match="FOUNDRY_ALLOC_BASE set but not used: install\\(\\) was given a configuration"):
        assert requested_config(given) == given
    monkeypatch.setenv("FOUNDRY_ALLOC_BASE", hex(fa.DEFAULT_BASE))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert requested_config(given) == given  # the variable says what the configuration says


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"FOUNDRY_MODE": "restore", "FOUNDRY_ARCHIVE": "a.foundry"}, "FOUNDRY_MODE='restore' is not a mode"),
        ({"FOUNDRY_MODE": "load"}, "FOUNDRY_MODE=load needs FOUNDRY_ARCHIVE"),
        ({"FOUNDRY_MODE": "load", "FOUNDRY_ARCHIVE": "/nowhere/a.foundry"}, "FOUNDRY_ARCHIVE=/nowhere/a.foundry does not exist"),
        ({"FOUNDRY_MODE": "save", "FOUNDRY_ARCHIVE": "/nowhere/a.foundry"}, "its folder does not exist"),
        ({"FOUNDRY_MODE": "save", "FOUNDRY_ARCHIVE": "a.foundry", "FOUNDRY_ALLOC_SIZE": "lots"}, "FOUNDRY_ALLOC_SIZE: 'lots'"),
    ],
)
def test_the_mode_variables_are_validated_together(env: dict[str, str], problem: str) -> None:
    from foundry_trace.mode import mode_from_environment

    with pytest.raises(fa.ConfigError, match=problem):
        mode_from_environment(env)


def test_foundry_env_checks_the_mode_variables(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from foundry_trace.cli import main

    monkeypatch.setenv("FOUNDRY_MODE", "load")
    monkeypatch.setenv("FOUNDRY_ARCHIVE", "/nowhere/model.foundry")
    assert main(["env"]) == 2
    assert "FOUNDRY_ARCHIVE=/nowhere/model.foundry does not exist" in capsys.readouterr().out
    monkeypatch.setenv("FOUNDRY_MODE", "save")
    monkeypatch.setenv("FOUNDRY_ARCHIVE", "model.foundry")
    assert main(["env"]) == 0
    assert "FOUNDRY_MODE=save: writes model.foundry" in capsys.readouterr().out

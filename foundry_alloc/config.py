"""Allocator settings and their environment variables (FOUNDRY_ALLOC_*), validated in one place."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# 32 TiB: below position-independent executables (0x55..) and far below shared libraries and the
# driver's own reservations (0x7f..); honoured in fresh processes on the H100 we measured.
DEFAULT_BASE = 0x200000000000
# Eight arenas of 512 GiB each: room for any current GPU's memory in any one arena.
DEFAULT_SIZE = 4 * TiB
# The range must be a whole number of 2 MiB granules for each of the 8 arenas' 16 zone granules.
SIZE_UNIT = 256 * MiB
BASE_ALIGNMENT = 2 * MiB
USER_SPACE_END = 1 << 47
# The peer window of tensor-parallel ranks (foundry_trace.parallel): a range of its own, right
# after the allocator's unless placed elsewhere, where rank r's buffer is mapped at
# base + (r + 1) * stride in every process.
DEFAULT_PEER_STRIDE = 1 * GiB
PEER_SLOTS = 9  # the process's own buffer, then up to 8 ranks

ENV_ENABLE = "FOUNDRY_ALLOC"
ENV_BASE = "FOUNDRY_ALLOC_BASE"
ENV_SIZE = "FOUNDRY_ALLOC_SIZE"
ENV_VERBOSE = "FOUNDRY_ALLOC_VERBOSE"
ENV_PEER_BASE = "FOUNDRY_ALLOC_PEER_BASE"
ENV_PEER_STRIDE = "FOUNDRY_ALLOC_PEER_STRIDE"

ENVIRONMENT_VARIABLES: dict[str, str] = {
    ENV_ENABLE: "1 installs the allocator when the program imports torch; 0 or unset leaves PyTorch's own.",
    ENV_BASE: f"start of the fixed range, hex or decimal (default {DEFAULT_BASE:#x}); same in SAVE and LOAD.",
    ENV_SIZE: "virtual bytes per device, e.g. 4T, 512G or a byte count (default 4T); a multiple of 256M.",
    ENV_VERBOSE: "1 prints one line to stderr when the allocator is installed.",
    ENV_PEER_BASE: "start of the peer window of tensor-parallel ranks (default: where the range ends); same in SAVE and every rank.",
    ENV_PEER_STRIDE: "bytes between two ranks' buffers in the peer window, e.g. 1G (default); a multiple of 2M.",
}

VARIABLE_OF_SETTING = {"base": ENV_BASE, "size": ENV_SIZE, "verbose": ENV_VERBOSE, "peer_base": ENV_PEER_BASE, "peer_stride": ENV_PEER_STRIDE}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_SIZE_SUFFIXES = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parses '4T', '512GiB', '268435456' or '0x10000000' into bytes (binary units)."""
    if text.strip().lower().startswith("0x"):
        return int(text.strip(), 16)
    match = _SIZE_PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size: write bytes or a number with K, M, G or T")
    return int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).lower()]


def parse_address(text: str) -> int:
    """Parses a hexadecimal (0x...) or decimal address."""
    stripped = text.strip()
    try:
        return int(stripped, 16) if stripped.lower().startswith("0x") else int(stripped, 10)
    except ValueError:
        raise ValueError(f"{text!r} is not an address: write it in hex (0x200000000000) or decimal") from None


def parse_flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={text!r} is not a switch: use 1 to turn it on or 0 to turn it off")


class AllocatorConfig(BaseModel):
    """Where the fixed range lies. A SAVE run and its LOAD runs must use equal configurations."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: Annotated[int, Field(ge=BASE_ALIGNMENT, lt=USER_SPACE_END)] = DEFAULT_BASE
    size: Annotated[int, Field(ge=SIZE_UNIT, lt=USER_SPACE_END)] = DEFAULT_SIZE
    verbose: bool = False
    peer_base: Annotated[int, Field(ge=BASE_ALIGNMENT, lt=USER_SPACE_END)] | None = None  # None: base + size
    peer_stride: Annotated[int, Field(ge=BASE_ALIGNMENT, lt=USER_SPACE_END)] = DEFAULT_PEER_STRIDE

    @field_validator("base", "peer_base", "peer_stride")
    @classmethod
    def _aligned(cls, value: int | None, info) -> int | None:  # noqa: ANN001 - pydantic's ValidationInfo
        if value is not None and value % BASE_ALIGNMENT:
            raise ValueError(f"{info.field_name} {value:#x} is not a multiple of 2 MiB (the mapping granularity)")
        return value

    @property
    def peer_window_base(self) -> int:
        """Where the peer window starts: peer_base, or right after the allocator's range."""
        return self.peer_base if self.peer_base is not None else self.base + self.size

    @property
    def peer_window_size(self) -> int:
        return PEER_SLOTS * self.peer_stride

    @field_validator("size")
    @classmethod
    def _size_whole_units(cls, size: int) -> int:
        if size % SIZE_UNIT:
            raise ValueError(f"size {size} is not a multiple of 256 MiB (8 arenas x 16 granules of 2 MiB)")
        return size

    @classmethod
    def create(cls, **values: object) -> AllocatorConfig:
        """Builds a configuration, turning validation failures into one ConfigError (addresses
        and sizes in hex, as everywhere in Foundry's messages)."""
        try:
            config = cls(**values)
        except ValidationError as error:
            problems = "; ".join(_problem(e) for e in error.errors())
            raise ConfigError(f"invalid allocator configuration: {problems}") from None
        if config.base + config.size > USER_SPACE_END:
            raise ConfigError(
                f"the range [{config.base:#x}, {config.base + config.size:#x}) ends past the 128 TiB of "
                "user address space: lower the base or the size"
            )
        window_base = config.peer_window_base
        window_end = window_base + config.peer_window_size
        if window_end > USER_SPACE_END:
            raise ConfigError(
                f"the peer window [{window_base:#x}, {window_end:#x}) ends past the 128 TiB of user address space: "
                f"lower {ENV_PEER_BASE} or {ENV_PEER_STRIDE}"
            )
        if window_base < config.base + config.size and config.base < window_end:
            raise ConfigError(
                f"the peer window [{window_base:#x}, {window_end:#x}) overlaps the allocator's range "
                f"[{config.base:#x}, {config.base + config.size:#x}): move {ENV_PEER_BASE} past the range"
            )
        return config

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> AllocatorConfig | None:
        """The configuration FOUNDRY_ALLOC_* asks for, or None when FOUNDRY_ALLOC is off (the
        other variables are validated either way: ConfigError names a bad one)."""
        env = os.environ if environ is None else environ
        settings = environment_settings(env)  # checked even when off: an explicit install() reads them
        if not parse_flag(ENV_ENABLE, env.get(ENV_ENABLE, "")):
            return None
        return cls.create(**settings)


def environment_settings(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The settings that FOUNDRY_ALLOC_BASE, _SIZE, _VERBOSE, _PEER_BASE and _PEER_STRIDE give,
    whether or not FOUNDRY_ALLOC is on (an explicit install() takes them too); ConfigError names
    the variable whose value is unusable, a set but blank one included (unset means default)."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    settings = ((ENV_BASE, "base", parse_address), (ENV_SIZE, "size", parse_size), (ENV_PEER_BASE, "peer_base", parse_address),
                (ENV_PEER_STRIDE, "peer_stride", parse_size))
    for name, key, parse in settings:
        if name in env:
            try:
                values[key] = parse(env[name])
            except ValueError as error:
                raise ConfigError(f"{name}: {error}, or unset it for the default") from None
    if ENV_VERBOSE in env:
        values["verbose"] = parse_flag(ENV_VERBOSE, env[ENV_VERBOSE])
    try:
        AllocatorConfig.create(**values)
    except ConfigError as error:
        raise ConfigError(f"{error} (from {', '.join(VARIABLE_OF_SETTING[k] for k in values)})") from None
    return values


def _problem(error: dict) -> str:
    """One pydantic error as text, its numbers in hex (a base of 0x200000000000 reads as one)."""
    where = ".".join(map(str, error["loc"]))
    context = error.get("ctx") or {}
    bound = next((v for k, v in context.items() if k in ("ge", "gt", "le", "lt") and isinstance(v, int)), None)
    message = error["msg"]
    if bound is not None:
        message = message.replace(str(bound), f"{bound:#x}")
    value = error.get("input")
    return f"{where} {value:#x}: {message}" if isinstance(value, int) and not isinstance(value, bool) else f"{where}: {message}"


def requested_config(config: AllocatorConfig | None = None, **overrides: object) -> AllocatorConfig:
    """The configuration install() uses: `config` as given (a warning names any FOUNDRY_ALLOC_*
    variable set to something else, since the caller may have expected it to apply), or the
    FOUNDRY_ALLOC_BASE/SIZE/VERBOSE variables where set, whether or not FOUNDRY_ALLOC is; the
    keyword arguments that are not None win over both."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if config is None:
        return AllocatorConfig.create(**{**environment_settings(), **given})
    ignored = _variables_not_applied(config)
    if ignored:
        warnings.warn(
            f"{', '.join(ignored)} set but not used: install() was given a configuration, which wins; pass "
            "base=/size= instead of config= to have the variables fill in what you leave out",
            stacklevel=3,
        )
    return AllocatorConfig.create(**{**config.model_dump(), **given}) if given else config


def _variables_not_applied(config: AllocatorConfig) -> list[str]:
    """The FOUNDRY_ALLOC_* variables set to something other than `config` holds."""
    try:
        settings = environment_settings()
    except ConfigError:
        return sorted(name for name in VARIABLE_OF_SETTING.values() if os.environ.get(name, "").strip())
    return sorted(VARIABLE_OF_SETTING[key] for key, value in settings.items() if getattr(config, key) != value)

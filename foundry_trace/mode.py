"""SAVE or LOAD, chosen by FOUNDRY_MODE for a program that does not call Foundry itself:

    FOUNDRY_MODE=save FOUNDRY_ARCHIVE=model.foundry python serve.py
    FOUNDRY_MODE=load FOUNDRY_ARCHIVE=model.foundry python serve.py

When the program imports torch, the allocator is installed (FOUNDRY_ALLOC_* apply; FOUNDRY_ALLOC
itself is implied). save: the tracer starts and a recording opens whose restore point is the
start of the first stream capture (or an explicit restore_point() call); the archive is written
when the program exits; graphs are keyed by the order of their instantiation. load: a program
that opts in calls restore_point() where its state is complete, and gets the restored graphs
instead of capturing (None under save, so one program serves both).

This module sits above both SAVE (save/) and LOAD (restore/): it is the one place that chooses.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from foundry_trace.errors import TracerStateError

if TYPE_CHECKING:
    from foundry_alloc import AllocatorConfig
    from foundry_trace.restore.restored import Restored
    from foundry_trace.save.recording import Recording

ENV_MODE = "FOUNDRY_MODE"
ENV_ARCHIVE = "FOUNDRY_ARCHIVE"
MODES = ("save", "load")
OFF = ("", "off")
ENVIRONMENT_VARIABLES: dict[str, str] = {
    ENV_MODE: "save records the graphs the program captures; load restores them at foundry_trace.restore_point() "
    "(both imply FOUNDRY_ALLOC=1); unset or off does nothing.",
    ENV_ARCHIVE: "the archive FOUNDRY_MODE=save writes when the program exits, or FOUNDRY_MODE=load restores.",
}
_load_archive: str | None = None  # set under FOUNDRY_MODE=load
_activated = False


@dataclass(frozen=True)
class ModeSetting:
    """What FOUNDRY_MODE and FOUNDRY_ARCHIVE ask for (mode None: neither SAVE nor LOAD)."""

    mode: Literal["save", "load"] | None
    archive: str | None
    allocator: AllocatorConfig | None


def mode_from_environment(environ: Mapping[str, str] | None = None) -> ModeSetting:
    """Validates FOUNDRY_MODE, FOUNDRY_ARCHIVE, the trust variables and the allocator's variables
    together; raises ConfigError naming the variable and the fix (used at start-up and by
    `foundry env`)."""
    from foundry_alloc import AllocatorConfig, ConfigError
    from foundry_trace.archive.signing import TrustPolicy

    env = os.environ if environ is None else environ
    TrustPolicy.from_environment(env)  # a blank or malformed trust variable fails at start-up, not at the first LOAD
    mode = env.get(ENV_MODE, "").strip().lower()
    archive = env.get(ENV_ARCHIVE, "").strip()
    if mode in OFF:
        return ModeSetting(None, archive or None, None)
    if mode not in MODES:
        raise ConfigError(f"{ENV_MODE}={env[ENV_MODE]!r} is not a mode: use {' or '.join(MODES)} (or unset it)")
    if not archive:
        raise ConfigError(f"{ENV_MODE}={mode} needs {ENV_ARCHIVE}, the path of the archive to {'write' if mode == 'save' else 'restore'}")
    if mode == "load" and not os.path.isfile(archive):
        raise ConfigError(f"{ENV_ARCHIVE}={archive} does not exist: save it first (FOUNDRY_MODE=save) or fix the path")
    if mode == "save" and not Path(archive).resolve().parent.is_dir():
        raise ConfigError(f"{ENV_ARCHIVE}={archive}: its folder does not exist, so SAVE could not write it: create the folder or fix the path")
    return ModeSetting(mode, archive, AllocatorConfig.from_environment({**env, "FOUNDRY_ALLOC": "1"}))  # type: ignore[arg-type]


def activate_from_environment() -> None:
    """Arranges SAVE or LOAD as FOUNDRY_MODE asks, right after the program imports torch (the
    start-up hook foundry_alloc.pth calls this only when FOUNDRY_MODE is set). A bad setting
    fails that import with ConfigError: a server must not start without what it asked for.
    Runs once per process: the hook can be met twice (a package that re-runs site processing
    while foundry_trace is imported processes every .pth file again)."""
    from foundry_alloc import ConfigError
    from foundry_alloc._startup import run_after_torch_import

    global _activated
    if _activated:
        return
    _activated = True

    try:
        setting = mode_from_environment()
    except ConfigError as error:
        message = f"foundry_trace (environment activation): {error}"

        def refuse() -> None:
            raise ConfigError(message)

        run_after_torch_import(refuse)
        return
    if setting.mode is None:
        return

    def start_saving() -> None:
        import foundry_alloc
        from foundry_trace.save.recording import open_recording

        foundry_alloc.install(setting.allocator)
        recording = open_recording(setting.archive, restore_point_now=False)
        atexit.register(_finish, recording)

    def prepare_loading() -> None:
        import foundry_alloc

        global _load_archive
        foundry_alloc.install(setting.allocator)
        _load_archive = setting.archive

    run_after_torch_import(start_saving if setting.mode == "save" else prepare_loading)


def restore_point() -> Restored | None:
    """Where a program's state is complete. Under FOUNDRY_MODE=load: restores FOUNDRY_ARCHIVE and
    returns the graphs (the program replays them instead of capturing). Otherwise marks the
    restore point of the open recording and returns None (FOUNDRY_MODE=save takes it at the
    first capture when the program never calls this).

    Example:
        >>> restored = foundry_trace.restore_point()
        >>> if restored is None:            # SAVE (or a plain run): capture as usual
        ...     capture_all()
    """
    from foundry_trace.save.recording import current_recording

    if _load_archive is not None:
        from foundry_trace.restore.load import load

        return load(_load_archive)
    recording = current_recording()
    if recording is None:
        raise TracerStateError("no recording is open: use foundry_trace.record(...), FOUNDRY_MODE=save or FOUNDRY_MODE=load")
    recording.restore_point()
    return None


def _finish(recording: Recording) -> None:
    from foundry_trace.save.recording import close_recording

    if not close_recording(recording):
        return  # closed by the program already
    try:
        recording.finish()  # prints the path and the digest
    except Exception as error:  # noqa: BLE001 - at exit: report, never hide
        print(f"foundry_trace: the archive {recording.path} was not written: {error}", file=sys.stderr)

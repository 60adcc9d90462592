"""Environment activation of SAVE and LOAD:

    FOUNDRY_MODE=save FOUNDRY_ARCHIVE=model.foundry python serve.py
    FOUNDRY_MODE=load FOUNDRY_ARCHIVE=model.foundry python serve.py

When the program imports torch, the allocator is installed (FOUNDRY_ALLOC_* apply; FOUNDRY_ALLOC
itself is implied). save: the tracer starts and a recording opens whose restore point is the
start of the first stream capture (or an explicit foundry_trace.restore_point() call); the
archive is written when the program exits; graphs are keyed by the order of their
instantiation. load: a program that opts in calls foundry_trace.restore_point() where its state
is complete, and gets the restored graphs instead of capturing (None under save, so one program
serves both).
"""

from __future__ import annotations

import atexit
import os
import sys

ENV_MODE = "FOUNDRY_MODE"
ENV_ARCHIVE = "FOUNDRY_ARCHIVE"
MODES = ("save", "load")
ENVIRONMENT_VARIABLES: dict[str, str] = {
    ENV_MODE: "save records the graphs the program captures; load restores them at foundry_trace.restore_point() "
    "(both imply FOUNDRY_ALLOC=1); unset does nothing.",
    ENV_ARCHIVE: "the archive FOUNDRY_MODE=save writes when the program exits, or FOUNDRY_MODE=load restores.",
}
_load_archive: str | None = None  # set under FOUNDRY_MODE=load


def load_requested() -> str | None:
    """The archive FOUNDRY_MODE=load asks to restore, if any."""
    return _load_archive


def activate_from_environment() -> None:
    from foundry_alloc import AllocatorConfig, ConfigError
    from foundry_alloc._startup import run_after_torch_import

    mode = os.environ.get(ENV_MODE, "").strip().lower()
    archive = os.environ.get(ENV_ARCHIVE, "").strip()
    problem = None
    if mode not in MODES:
        problem = f"{ENV_MODE}={mode!r} is not a mode: use {' or '.join(MODES)} (or unset it)"
    elif not archive:
        problem = f"{ENV_MODE}={mode} needs {ENV_ARCHIVE}, the path of the archive to {'write' if mode == 'save' else 'restore'}"
    elif mode == "load" and not os.path.isfile(archive):
        problem = f"{ENV_ARCHIVE}={archive} does not exist: save it first (FOUNDRY_MODE=save) or fix the path"
    else:
        try:
            config = AllocatorConfig.from_environment({**os.environ, "FOUNDRY_ALLOC": "1"})
        except ConfigError as error:
            problem = str(error)
    if problem is not None:
        message = f"foundry_trace (environment activation): {problem}"

        def refuse() -> None:
            raise ConfigError(message)

        run_after_torch_import(refuse)
        return

    def start_saving() -> None:
        import foundry_alloc

        from .recording import Recording, start_tracing

        foundry_alloc.install(config)
        session = start_tracing()
        session.recording = Recording(archive, session, restore_point_now=False)
        atexit.register(_finish, session)

    def prepare_loading() -> None:
        import foundry_alloc

        global _load_archive
        foundry_alloc.install(config)
        _load_archive = archive

    run_after_torch_import(start_saving if mode == "save" else prepare_loading)


def _finish(session) -> None:  # noqa: ANN001 - recording.Session
    recording, session.recording = session.recording, None
    if recording is None:
        return
    try:
        path = recording.finish()
    except Exception as error:  # noqa: BLE001 - at exit: report, never hide
        print(f"foundry_trace: the archive {recording.path} was not written: {error}", file=sys.stderr)
        return
    print(f"foundry_trace: wrote {path}", file=sys.stderr)

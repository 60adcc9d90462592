"""Environment activation: with FOUNDRY_ALLOC=1, an unmodified program gets the allocator.

The package installs `foundry_alloc.pth` into site-packages; its one line imports this module at
interpreter start-up only when FOUNDRY_ALLOC is set. Importing torch here would slow every Python
process in the container, so the allocator is installed right after the program imports torch
(before any CUDA tensor can exist). A bad setting fails that import with the setting's error:
a server must not silently start without the layout it was saved with.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Sequence
from types import ModuleType


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs the queued actions once, in order, right after module `name` has been executed."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.actions: list[Callable[[], None]] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self._name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        execute = loader.exec_module
        actions = self.actions

        def exec_module(module: ModuleType) -> None:
            execute(module)
            for action in actions:
                action()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_torch_hook: _AfterImport | None = None


def run_after_torch_import(action: Callable[[], None]) -> None:
    """Runs `action` right after the program imports torch (now, if it already has). Actions
    queued by several start-up hooks run in the order they were queued."""
    global _torch_hook
    if "torch" in sys.modules:
        action()
        return
    if _torch_hook is None or _torch_hook not in sys.meta_path:
        _torch_hook = _AfterImport("torch")
        sys.meta_path.insert(0, _torch_hook)
    _torch_hook.actions.append(action)


_activated = False


def activate_from_environment() -> None:
    """Arranges for install() to run when torch is imported, if FOUNDRY_ALLOC asks for it. Runs
    once per process (the start-up hook can be met twice, see foundry_trace.mode)."""
    from .config import AllocatorConfig
    from .errors import ConfigError

    global _activated
    if _activated:
        return
    _activated = True

    try:
        config = AllocatorConfig.from_environment()
    except ConfigError as error:
        problem = error

        def refuse() -> None:
            raise ConfigError(f"foundry_alloc (environment activation): {problem}")

        run_after_torch_import(refuse)
        return
    if config is None:
        return

    def install() -> None:
        from .install import install as install_allocator

        install_allocator(config)

    run_after_torch_import(install)

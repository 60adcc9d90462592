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
    """Runs `action` once, right after module `name` has been executed."""

    def __init__(self, name: str, action: Callable[[], None]) -> None:
        self._name = name
        self._action = action

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
        action = self._action

        def exec_module(module: ModuleType) -> None:
            execute(module)
            action()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def activate_from_environment() -> None:
    """Arranges for install() to run when torch is imported, if FOUNDRY_ALLOC asks for it."""
    from .config import AllocatorConfig
    from .errors import ConfigError

    try:
        config = AllocatorConfig.from_environment()
    except ConfigError as error:
        problem = error

        def refuse() -> None:
            raise ConfigError(f"foundry_alloc (environment activation): {problem}")

        _run_after_torch_import(refuse)
        return
    if config is None:
        return

    def install() -> None:
        from .install import install as install_allocator

        install_allocator(config)

    _run_after_torch_import(install)


def _run_after_torch_import(action: Callable[[], None]) -> None:
    if "torch" in sys.modules:
        action()
    else:
        sys.meta_path.insert(0, _AfterImport("torch", action))

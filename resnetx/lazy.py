"""Heavy libraries imported on first use, so `resnetx --help` and option parsing need none of them."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["lazy_import"]


class _LazyModule(ModuleType):
    """Stands for a module until an attribute is read; then imports it (Polygraphy's lazy_import, smaller)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._target: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        if self._target is None:
            self._target = importlib.import_module(self.__name__)
        return getattr(self._target, attr)


def lazy_import(name: str) -> Any:
    """A stand-in for `import name` that imports it when first used."""
    return _LazyModule(name)

"""A package's public names, imported on first use (PEP 562).

Importing one module of a package then does not import them all: `carbonhook events list`
must not load the web server or the workers to print a table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[list[str], Callable[[str], Any]]:
    """`__all__` and a module `__getattr__` for `exports` (name → the module defining it)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return sorted(exports), __getattr__

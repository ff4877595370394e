"""Lazy package exports (PEP 562): a name is imported from its module on first access, so that
importing one light module of a package does not import its heavy siblings (Lightning, timm)."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, list[str]],
                 namespace: dict[str, Any]) -> tuple[list[str], Callable[[str], Any]]:
    """(`__all__`, module `__getattr__`) for `package`, whose `exports` map module -> names; a
    resolved name is cached in the package's `namespace` (its `globals()`)."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name]), name)
        namespace[name] = value
        return value

    return sorted(module_of), __getattr__

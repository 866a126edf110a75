"""Register-where-you-define registries (timm's ``@register_model`` pattern).

Every pluggable component - models, activations, datasets, schedules,
optimisers, presets, and later attacks, rules and experiments - is looked up
by ``(kind, name)``. There is no hand-kept parallel list: a component exists
for the CLI and the tests as soon as its module is imported.

Example::

    from lenetlab.registry import register, get
    @register("activation", "cube")
    def cube(): ...
    get("activation", "cube")
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from lenetlab.errors import LenetlabError

T = TypeVar("T")

# kind -> name -> object. Populated at import time only (decorators); nothing
# mutates it afterwards, so it behaves as a constant table.
_TABLES: dict[str, dict[str, Any]] = {}


def register(kind: str, name: str | None = None) -> Callable[[T], T]:
    """Decorator: register ``obj`` under ``kind``/``name`` (default: its __name__)."""

    def deco(obj: T) -> T:
        key = name or obj.__name__
        table = _TABLES.setdefault(kind, {})
        if key in table and table[key] is not obj:
            raise RuntimeError(f"duplicate {kind} registration: {key!r}")
        table[key] = obj
        return obj

    return deco


def get(kind: str, name: str) -> Any:
    """Return the registered object, or fail naming the valid choices."""
    _ensure_loaded()
    table = _TABLES.get(kind, {})
    if name not in table:
        valid = ", ".join(sorted(table)) or "(none)"
        raise LenetlabError(f"unknown {kind} {name!r}; choose from: {valid}")
    return table[name]


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    _ensure_loaded()
    return sorted(_TABLES.get(kind, {}))


def kinds() -> list[str]:
    _ensure_loaded()
    return sorted(_TABLES)


def _ensure_loaded() -> None:
    # Importing the packages runs their @register decorators.
    # capability packages that register components (rules, attacks, fault models, ...)
    import importlib

    import lenetlab.data  # noqa: F401
    import lenetlab.models  # noqa: F401
    import lenetlab.train  # noqa: F401
    from lenetlab.experiments import load_all

    for pkg in OPTIONAL_PACKAGES:
        try:
            importlib.import_module(pkg)
        except ModuleNotFoundError as e:   # that capability is not in this build
            if e.name != pkg:
                raise
    load_all()


OPTIONAL_PACKAGES = ("lenetlab.rules", "lenetlab.attacks", "lenetlab.faults", "lenetlab.compress", "lenetlab.quant")

"""Register-where-you-define registries (timm's ``@register_model`` pattern).

Every pluggable component - models, activations, datasets, schedules,
optimisers, presets, learning rules, trainer plugins, attacks, fault models,
compressors, exporters, experiments - is looked up by ``(kind, name)``. A
component registers itself where it is defined; there is no hand-kept
parallel list of components.

Discovery, the first time :func:`get` or :func:`names` is asked for a kind
(never at import time - importing this module loads no other lenetlab module):

1. the built-in modules that register that kind (:data:`lenetlab.catalogue.KINDS`;
   ``lenetlab train`` so imports what training needs and not the attacks,
   exporters or experiments, about 0.2 s of its start); :func:`kinds` and a
   kind the catalogue does not know import every built-in module
   (:data:`lenetlab.catalogue.BUILTINS`);
2. then, once, every outside plugin: a Python entry point in the group
   ``lenetlab.plugins`` naming a module (importing it registers its
   components) or a function (called with no arguments to register them).
   Where there are any, every built-in module is imported first, so a plugin
   can rely on all of them. A plugin that fails to load is one
   :class:`~lenetlab.errors.LenetlabError` line naming the entry point.

An outside package declares, in its ``pyproject.toml``::

    [project.entry-points."lenetlab.plugins"]
    my_models = "my_package.lenetlab_plugin"

Example::

    from lenetlab.registry import register, get
    @register("activation", "cube")
    class Cube(torch.nn.Module): ...
    get("activation", "cube")
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")

PLUGIN_GROUP = "lenetlab.plugins"

# kind -> name -> object. Filled by the @register decorators as modules are imported (the built-ins, then
# the plugins, once); nothing mutates it afterwards, so it behaves as a constant table.
_TABLES: dict[str, dict[str, Any]] = {}
# discovery state: None (not yet), "loading", "done", or the LenetlabError a plugin raised (raised again on
# every later call, rather than re-importing a half-registered plugin)
_discovery: list[Any] = [None]


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
    _ensure_loaded(kind)
    table = _TABLES.get(kind, {})
    if name not in table:
        from lenetlab.errors import LenetlabError

        valid = ", ".join(sorted(table)) or "(none)"
        raise LenetlabError(f"unknown {kind} {name!r}; choose from: {valid}")
    return table[name]


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    _ensure_loaded(kind)
    return sorted(_TABLES.get(kind, {}))


def kinds() -> list[str]:
    """Sorted kinds that have at least one registered component."""
    _ensure_loaded(None)
    return sorted(_TABLES)


# the kinds whose built-in modules are imported ("*": all of them)
_LOADED: set[str] = set()


def _ensure_loaded(kind: str | None) -> None:
    state = _discovery[0]
    if state == "loading":   # a module being imported asked; it sees what exists so far
        return
    if isinstance(state, Exception):
        raise state
    if state == "done" and ("*" in _LOADED or (kind is not None and kind in _LOADED)):
        return
    _discovery[0] = "loading"
    try:
        first = state is None
        if first and _plugin_entry_points():
            kind = None          # outside plugins may build on any built-in: all of them first
        _load_builtins(kind)
        if first:
            _load_plugins()
    except BaseException as e:
        _discovery[0] = e if _is_plugin_error(e) else None
        raise
    _discovery[0] = "done"


def _load_builtins(kind: str | None) -> None:
    import importlib

    from lenetlab.catalogue import BUILTINS, KINDS

    every = kind is None or kind not in KINDS
    for module in BUILTINS if every else KINDS[kind]:
        importlib.import_module(module)
    _LOADED.add("*" if every else kind)


def _plugin_entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: (ep.name, ep.value))


def _load_plugins() -> None:
    from lenetlab.errors import LenetlabError

    for ep in _plugin_entry_points():
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()              # a registration function; a module registered on import
        except Exception as e:
            detail = (str(e).strip().splitlines() or [""])[0]
            err = LenetlabError(f"plugin {ep.name!r} (entry point {ep.value!r}, group {PLUGIN_GROUP}) failed "
                                f"to load: {type(e).__name__}: {detail}")
            err.plugin = ep.name
            raise err from e


def _is_plugin_error(e: BaseException) -> bool:
    return getattr(e, "plugin", None) is not None

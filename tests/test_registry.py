"""The registry: importing it loads nothing; one catalogue of built-ins, complete and checked; clear errors."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from lenetlab import catalogue, registry
from lenetlab.errors import LenetlabError

SRC = Path(registry.__file__).resolve().parent


def test_importing_the_registry_loads_no_other_lenetlab_module():
    code = ("import sys, lenetlab.registry\n"
            "print(sorted(m for m in sys.modules if m == 'lenetlab' or m.startswith('lenetlab.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["['lenetlab',", "'lenetlab.registry']"]


def test_the_catalogue_imports_nothing_and_hides_nothing():
    for path in (SRC / "catalogue.py", SRC / "registry.py"):
        tree = ast.parse(path.read_text())
        top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                       and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
        if path.name == "catalogue.py":
            assert top_imports == []
        else:    # the registry's own imports are the standard library only
            assert all(not (getattr(n, "module", None) or n.names[0].name).startswith("lenetlab") for n in top_imports)
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in n.handlers)]


def _registering_modules() -> set[str]:
    """Modules whose code registers a named component: ``register("kind", "name")`` or ``register_model("name")``."""
    found = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if path.name in ("registry.py",) or not re.search(r"\bregister(_model)?\s*\(", text):   # no call: skip
            continue
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            consts = [a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if (fn == "register" and len(consts) >= 2) or (fn == "register_model" and consts):
                found.add(".".join(("lenetlab", *path.relative_to(SRC).with_suffix("").parts)))
                break
    return found


def test_every_registering_module_is_in_the_catalogue():
    found = _registering_modules()
    assert {"lenetlab.deploy.web", "lenetlab.models.lenet5", "lenetlab.experiments.abs"} <= found   # the scan works
    assert sorted(found - set(catalogue.BUILTINS)) == []
    assert len(set(catalogue.BUILTINS)) == len(catalogue.BUILTINS)


_WHO_REGISTERS = r'''
import importlib, json, sys
import lenetlab.registry as R
from lenetlab.catalogue import BUILTINS
seen = {}
real = R.register
def register(kind, name=None):
    deco = real(kind, name)
    def spy(obj):
        f = sys._getframe(1)
        while f is not None and f.f_code.co_name != "<module>":   # the module whose own code registers
            f = f.f_back
        seen.setdefault(kind, set()).add(f.f_globals["__name__"])
        return deco(obj)
    return spy
R.register = register
for m in BUILTINS:
    importlib.import_module(m)
print(json.dumps({k: sorted(v) for k, v in seen.items()}))
'''


def test_the_kinds_table_names_exactly_the_modules_that_register_each_kind():
    """lenetlab.registry imports only catalogue.KINDS[kind] for a kind: in a fresh process, the modules whose
    own code registers each kind's components are exactly those."""
    r = subprocess.run([sys.executable, "-c", _WHO_REGISTERS], capture_output=True, text=True, check=True)
    seen = json.loads(r.stdout)
    assert set(seen) == set(catalogue.KINDS)
    for kind, modules in seen.items():
        assert sorted(catalogue.KINDS[kind]) == modules, kind
        assert set(modules) <= set(catalogue.BUILTINS)


def test_one_kind_imports_only_its_modules():
    """Asking for presets imports the training modules, not the attacks, exporters or experiments; what it
    lists equals what the full catalogue lists."""
    code = """
import sys
from lenetlab.registry import kinds, names
print(names("preset"))
print(sorted(m for m in sys.modules if m.startswith(("lenetlab.experiments", "lenetlab.attacks", "lenetlab.deploy"))))
kinds()
print(names("preset"))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lazy, heavy, full = r.stdout.splitlines()
    assert lazy == full and "sprint" in lazy
    assert heavy == "[]"


def test_every_catalogued_module_imports_and_commands_exist():
    import importlib

    for mod in catalogue.BUILTINS:
        importlib.import_module(mod)
    for mod in catalogue.COMMANDS:
        assert callable(importlib.import_module(mod).add_commands)


def test_all_four_exporters_are_registered():
    """Regression: `lenetlab list exporters` printed an empty table (exporter modules were never imported)."""
    assert registry.names("exporter") == ["c", "flat", "onnx", "web"]
    r = run_cli("list", "exporters", check=True)
    rows = [ln.split("│")[1].strip() for ln in r.stdout.splitlines() if ln.startswith("│") and ln.split("│")[1].strip()]
    assert rows == ["c", "flat", "onnx", "web"]


def test_list_shows_every_kind_and_rejects_an_unknown_one():
    r = run_cli("list", check=True)
    for kind in registry.kinds():
        assert f"{kind}s" in r.stdout
    r = run_cli("list", "widgets")
    assert r.returncode == 2 and "nothing to list as 'widgets'; choose from: activations, attacks" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(LenetlabError, match=r"unknown exporter 'tflite'; choose from: c, flat, onnx, web"):
        registry.get("exporter", "tflite")
    with pytest.raises(LenetlabError, match=r"unknown gizmo 'x'; choose from: \(none\)"):
        registry.get("gizmo", "x")


def test_duplicate_registration_is_refused():
    obj = registry.get("activation", "relu")
    assert registry.register("activation", "relu")(obj) is obj        # the same object again: harmless
    with pytest.raises(RuntimeError, match="duplicate activation registration: 'relu'"):
        registry.register("activation", "relu")(object())

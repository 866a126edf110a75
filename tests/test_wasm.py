"""The page's WebAssembly runtime (deploy/web/lenet5.wasm): the committed module is what lenet5.c builds to,
it imports nothing, and rebuilding without a compiler is one clear error. (That it computes what the NumPy
runtime computes, kernel by kernel and on the test set, is tests/test_web_fast.py's ?runtime=wasm cases.)"""

from __future__ import annotations

import sys

import pytest

from lenetlab.deploy import wasm
from lenetlab.errors import LenetlabError


def _leb(b: bytes, i: int) -> tuple[int, int]:
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def sections(b: bytes) -> dict[int, bytes]:
    """The module's sections by id (a minimal reader of the binary format)."""
    assert b[:8] == b"\0asm\x01\0\0\0"
    out, i = {}, 8
    while i < len(b):
        sid = b[i]
        n, i = _leb(b, i + 1)
        out[sid] = b[i:i + n]
        i += n
    return out


def names(payload: bytes, imports: bool) -> list[str]:
    count, i = _leb(payload, 0)
    found = []
    for _ in range(count):
        if imports:
            n, i = _leb(payload, i)
            i += n                                   # module name
        n, i = _leb(payload, i)
        found.append(payload[i:i + n].decode())
        i += n
        kind = payload[i]
        i += 1
        assert not imports or kind == 0, "only function imports are parsed here"
        _, i = _leb(payload, i)
    return found


def test_the_committed_module_imports_nothing_and_exports_the_runtime():
    s = sections(wasm.TARGET.read_bytes())
    assert 2 not in s or names(s[2], imports=True) == []
    exported = set(names(s[7], imports=False))
    assert {"memory", *wasm.EXPORTS} <= exported


@pytest.mark.slow   # a clang for wasm32 compiling lenet5.c (~30 s)
def test_the_committed_module_is_what_the_source_builds_to(tmp_path):
    pytest.importorskip("ziglang", reason="rebuilding lenet5.wasm needs the ziglang package (the wasm extra)")
    built = wasm.build(tmp_path / "lenet5.wasm")
    assert built.read_bytes() == wasm.TARGET.read_bytes(), \
        "deploy/web/lenet5.wasm is stale: run python -m lenetlab.deploy.wasm and commit it"


def test_building_without_a_compiler_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ziglang", None)        # import ziglang -> ImportError
    with pytest.raises(LenetlabError, match="pip install ziglang"):
        wasm.build(tmp_path / "x.wasm")
    assert not (tmp_path / "x.wasm").exists()
    assert wasm.main(["--out", str(tmp_path / "y.wasm")]) == 2

"""Contract over the exporter registry: every registered exporter (an outside plugin's too) writes
non-empty files for a trained run, in float32 and int8, into the directory it was given."""

from __future__ import annotations

import pytest

from lenetlab.deploy.export import export
from lenetlab.errors import LenetlabError
from lenetlab.registry import names


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
@pytest.mark.parametrize("fmt", names("exporter"))
def test_every_exporter_writes_its_files(small_run, tmp_path, fmt, int8):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="the onnx extra is not installed")
    out = tmp_path / fmt
    try:
        files = export(small_run, fmt, int8=int8, out=out)
    except LenetlabError as e:    # a format may not support a dtype: one clear line, nothing written
        assert "\n" not in str(e) and "int8" in str(e)
        assert not any(out.glob("*")), list(out.glob("*"))
        return
    assert files, f"exporter {fmt!r} wrote nothing"
    for f in files:
        assert f.is_file() and f.stat().st_size > 0, f
        assert out in f.parents or f.parent == out, f"{f} written outside {out}"

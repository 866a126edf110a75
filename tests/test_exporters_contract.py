"""Contract over the exporter registry: every registered exporter (an outside plugin's too) writes
non-empty files for a trained run, in float32 and int8, into the directory it was given.

The exports are conftest.deploy_export's: ``lenetlab.deploy.export.export`` on the trained lenet5_classic run
(LeNet-5 1998: connection table, subsampling, RBF output), once per session for each (format, dtype), so the
ONNX parity test (tests/test_deploy_onnx.py) checks the very files this contract sees instead of tracing the
model with torch.export a second time."""

from __future__ import annotations

import pytest

from lenetlab.registry import names


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
@pytest.mark.parametrize("fmt", names("exporter"))
def test_every_exporter_writes_its_files(deploy_export, fmt, int8):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="the onnx extra is not installed")
    out, files = deploy_export("lenet5_classic", fmt, int8)
    if isinstance(files, str):    # a format may not support a dtype: one clear line, nothing written
        assert "\n" not in files and "int8" in files
        assert not any(out.glob("*")), list(out.glob("*"))
        return
    assert files, f"exporter {fmt!r} wrote nothing"
    for f in files:
        assert f.is_file() and f.stat().st_size > 0, f
        assert out in f.parents or f.parent == out, f"{f} written outside {out}"

"""benchmarks/run_all.py and benchmarks/_record.py: the merged JSON of `make bench`, with fake benchmarks.

The fake scripts are a few lines each (no torch), written into tmp_path and handed to run_all.main through its
``benchmarks`` argument: one that measures (through _record, as the real scripts do), one that crashes, one
that is skipped, one that exits 0 without a record. The real benchmarks are never run here."""

from __future__ import annotations

import importlib
import json
import math
import re
import textwrap
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"

# The format documented in run_all.py's docstring (and README.md, Performance).
TOP_KEYS = {"format", "date", "commit", "dirty", "quick", "machine", "benchmarks"}
MACHINE_KEYS = {"platform", "machine", "python", "torch", "cpu_count", "load_start", "load_end"}
ENTRY_KEYS = {"status", "seconds", "returncode", "reason", "options", "load_start", "load_end", "benchmark", "argv",
              "ratios", "goals", "notes", "checks", "values", "skipped"}
GOAL_KEYS = {"name", "value", "target", "op", "met"}


@pytest.fixture
def bench(monkeypatch):
    """(run_all, _record), imported from benchmarks/ as the scripts import them."""
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    return importlib.import_module("run_all"), importlib.import_module("_record")


MEASURES = """
import sys
sys.path.insert(0, {bench_dir!r})
import argparse
from _record import Record, add_json_option

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=100)
add_json_option(p)
a = p.parse_args()
print("measuring size", a.size)
rec = Record("measures")
rec.ratio("new_vs_old", a.size / 25)
rec.goal("new >= 2x old", a.size / 25, 2.0)
rec.goal("bytes <= 10", 12, 10, "<=")
rec.check("identical", True)
rec.value("size", a.size)
rec.note("a note")
rec.write(a.json)
"""

CRASHES = """
import sys
print("started")
print("Traceback (most recent call last):", file=sys.stderr)
print("RuntimeError: boom", file=sys.stderr)
sys.exit(3)
"""

SKIPPED = """
import json, sys
path = sys.argv[sys.argv.index("--json") + 1]
print("skipped: chromium is not installed")
with open(path, "w") as f:
    json.dump({"benchmark": "skipped", "argv": sys.argv, "ratios": {}, "goals": [], "notes": [],
               "skipped": "chromium is not installed"}, f)
"""

SILENT = """
print("forgot the record")
"""


def fake_table(run_all, tmp_path: Path) -> dict:
    scripts = {"measures": MEASURES.format(bench_dir=str(BENCH_DIR)), "crashes": CRASHES, "skipped": SKIPPED,
               "silent": SILENT}
    table = {}
    for name, text in scripts.items():
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(text))
        full, quick = (("--size", "100"), ("--size", "10")) if name == "measures" else ((), ())
        table[name] = run_all.Bench(path, full, quick)
    return table


def test_merge_records_ok_failed_skipped(bench, tmp_path, capsys):
    run_all, _ = bench
    out = tmp_path / "sub" / "results.json"
    rc = run_all.main(["--out", str(out)], benchmarks=fake_table(run_all, tmp_path))
    assert rc == 1                                          # one failed (two, with the silent one)
    captured = capsys.readouterr()
    assert "measuring size 100" in captured.out             # streamed
    assert "RuntimeError: boom" in captured.err

    res = json.loads(out.read_text())
    assert set(res) == TOP_KEYS
    assert res["format"] == 1 and res["quick"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", res["date"])
    assert res["commit"] is None or re.fullmatch(r"[0-9a-f]{4,40}", res["commit"])
    assert set(res["machine"]) == MACHINE_KEYS
    assert res["machine"]["cpu_count"] >= 1
    assert list(res["benchmarks"]) == ["measures", "crashes", "skipped", "silent"]    # the table's order
    for e in res["benchmarks"].values():
        assert set(e) == ENTRY_KEYS
        assert e["seconds"] >= 0 and isinstance(e["returncode"], int)

    ok = res["benchmarks"]["measures"]
    assert (ok["status"], ok["returncode"], ok["reason"]) == ("ok", 0, None)
    assert ok["options"] == ["--size", "100"]
    assert ok["argv"][1:3] == ["--size", "100"] and ok["argv"][3] == "--json"
    assert ok["ratios"] == {"new_vs_old": 4.0}
    assert ok["goals"] == [{"name": "new >= 2x old", "value": 4.0, "target": 2.0, "op": ">=", "met": True},
                           {"name": "bytes <= 10", "value": 12.0, "target": 10.0, "op": "<=", "met": False}]
    assert ok["checks"] == {"identical": True} and ok["values"] == {"size": 100} and ok["notes"] == ["a note"]

    bad = res["benchmarks"]["crashes"]
    assert (bad["status"], bad["returncode"]) == ("failed", 3)
    assert bad["reason"].startswith("exit status 3") and "RuntimeError: boom" in bad["reason"]
    assert bad["benchmark"] == "crashes" and bad["ratios"] == {} and bad["goals"] == []

    skip = res["benchmarks"]["skipped"]
    assert (skip["status"], skip["returncode"], skip["reason"]) == ("skipped", 0, "chromium is not installed")

    silent = res["benchmarks"]["silent"]
    assert silent["status"] == "failed" and silent["returncode"] == 0 and "no --json record" in silent["reason"]

    table = captured.out[captured.out.index("benchmark "):]
    assert "new >= 2x old: 4 >= 2: met" in table and "bytes <= 10: 12 <= 10: NOT met" in table
    assert "4 benchmarks: 1 ok, 2 failed, 1 skipped; goals met 1/2" in table


def test_quick_and_only(bench, tmp_path):
    run_all, _ = bench
    out = tmp_path / "r.json"
    rc = run_all.main(["--quick", "--only", "skipped,measures", "--out", str(out)],
                      benchmarks=fake_table(run_all, tmp_path))
    assert rc == 0                                          # skipped is not failed
    res = json.loads(out.read_text())
    assert res["quick"] is True
    assert list(res["benchmarks"]) == ["skipped", "measures"]
    e = res["benchmarks"]["measures"]
    assert e["options"] == ["--size", "10"] and e["ratios"] == {"new_vs_old": 0.4}
    assert e["goals"][0]["met"] is False


def test_only_unknown_name_exits_2_naming_the_valid_ones(bench, tmp_path, capsys):
    run_all, _ = bench
    out = tmp_path / "r.json"
    for only, says in (("measures,nope", "unknown benchmark 'nope'"), ("", "--only names no benchmark")):
        assert run_all.main(["--only", only, "--out", str(out)], benchmarks=fake_table(run_all, tmp_path)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and "valid: measures, crashes, skipped, silent" in err[0]
    assert not out.exists()


def test_record_goals_and_non_finite_numbers(bench, tmp_path):
    _, record = bench
    rec = record.Record("x", argv=["x.py"])
    assert rec.goal("a", 3, 2) is True and rec.goal("b", 3, 2, "<=") is False
    assert rec.goal("c", math.nan, 1) is False
    with pytest.raises(ValueError):
        rec.goal("d", 1, 1, ">")
    rec.ratio("inf", math.inf)
    rec.value("nested", {"v": [1.5, math.nan], "t": (1, 2)})
    rec.write(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["goals"][2] == {"name": "c", "value": None, "target": 1.0, "op": ">=", "met": False}
    assert data["ratios"] == {"inf": None}
    assert data["values"] == {"nested": {"v": [1.5, None], "t": [1, 2]}}
    rec.write(None)                                         # no --json: nothing written, no error


def test_write_json_is_atomic(bench, tmp_path):
    _, record = bench
    path = tmp_path / "r.json"
    record.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        record.write_json(path, {"a": object()})             # fails half-way: the old file stays whole
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]     # no temporary file left


def test_real_table_and_documented_format(bench):
    """Every real benchmark script is in the table and writes --json; the docstring names every key."""
    run_all, _ = bench
    scripts = {p.stem for p in BENCH_DIR.glob("*.py")} - {"run_all", "_record", "reference_lenet5"}
    assert set(run_all.BENCHMARKS) == scripts
    for name, b in run_all.BENCHMARKS.items():
        src = b.script.read_text()
        assert b.script.parent == BENCH_DIR and f'Record("{name}")' in src and "add_json_option(" in src, name
        assert src.count(".write(a.json)") >= 1, name
    doc = run_all.__doc__
    for key in TOP_KEYS | MACHINE_KEYS | ENTRY_KEYS | GOAL_KEYS:
        assert f'"{key}"' in doc, key
    readme = (BENCH_DIR.parent / "README.md").read_text()
    assert "make bench" in readme and "benchmarks/results.json" in readme

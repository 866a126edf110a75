"""``reproduce all --tiny`` twice (issue 22): the same files, byte for byte, but for the files of clock readings.

Two runs into two folders, one started with ``OMP_NUM_THREADS=1`` and one with 2 - what a 1-core and a 2-core
machine start with (:mod:`lenetlab.determinism` pins torch to 2 threads and NumPy's BLAS to 1 whatever they
start with). Every file both write must be byte-identical - each experiment's result.json, cells.jsonl,
report.md, run.json, figures and trained models, and the suite's report.md, report.html and manifest.json -
except the files below, each excluded for the reason next to it. Clock readings (wall times, per-cell times,
the deploy experiment's latencies and the claims decided from them, ZO's time per step) are kept in files of
their own, :data:`CLOCK` (checked for being whole, and a timings.jsonl for timing the same cells or epochs); a
training run inside an experiment keeps its epochs' times in its own timings.jsonl, not in its metrics.jsonl,
summary.json or checkpoint (:func:`lenetlab.train.trainer.clock_apart`), so those are compared byte for byte
like everything else. Any other difference is a bug. Slow: two tiny reproductions of every experiment (~3 min
CPU each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_kill_anywhere import HANG_S, _env, files

# files of clock readings, by name (anywhere) or by path: measured on the machine, they vary run to run
CLOCK = {
    "timings.json": "an experiment's wall time and the tables, claims, figures and metrics it computed from clock "
                    "readings; at the top, reproduce all's wall time per experiment",
    "timings.jsonl": "each cell's clock readings: training seconds, latencies, ms per step",
    "timings.md": "timings.json as a report (the experiment's; at the top, reproduce all's)",
    "timings.html": "reproduce all's clock readings as a self-contained page (embeds deploy/latency.png)",
    "deploy/latency.png": "a plot of the measured per-image latencies (listed in deploy/timings.json)",
}
def excluded(rel: str, root: Path) -> str | None:
    """Why ``rel`` may differ between the two runs (None: it must not)."""
    name = rel.rsplit("/", 1)[-1]
    if rel in CLOCK or name in CLOCK:
        return CLOCK.get(rel) or CLOCK[name]
    return None


def _whole(path: Path) -> None:
    if path.suffix == ".json":
        json.loads(path.read_bytes())
    elif path.suffix == ".jsonl":
        for ln in path.read_bytes().splitlines():
            json.loads(ln)


def _timed(path: Path) -> list[str]:
    """What a timings.jsonl times: an experiment's cell keys, or a training run's epochs (and the run)."""
    rows = [json.loads(ln) for ln in path.read_bytes().splitlines()]
    return sorted({str(r.get("key", r.get("epoch", "run"))) for r in rows})


@pytest.mark.slow   # two tiny reproductions of every experiment
def test_reproduce_all_tiny_twice_gives_the_same_files(tmp_path):
    outs = []
    for threads in ("1", "2"):
        out = tmp_path / f"omp{threads}"
        r = subprocess.run([sys.executable, "-m", "lenetlab", "reproduce", "all", "--tiny", "-q", "--out", str(out)],
                           capture_output=True, text=True, env=_env(OMP_NUM_THREADS=threads), timeout=4 * HANG_S)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        outs.append(out)
    a, b = files(outs[0]), files(outs[1])
    assert sorted(a) == sorted(b)
    assert {"manifest.json", "report.md", "report.html", "timings.json", "timings.md", "timings.html"} <= set(a)
    names = [e["name"] for e in json.loads(a["manifest.json"].read_text())["experiments"]]
    assert all(e["status"] == "ran" for e in json.loads(a["manifest.json"].read_text())["experiments"])
    for name in names:
        must = {f"{name}/{f}" for f in ("result.json", "cells.jsonl", "report.md", "run.json")}
        assert must <= set(a) and not any(excluded(rel, outs[0]) for rel in must)
        assert {f"{name}/{f}" for f in ("timings.json", "timings.md")} <= set(a)
    same, clock, differ = [], [], []
    for rel in a:
        if a[rel].read_bytes() == b[rel].read_bytes():
            same.append(rel)
            continue
        why = excluded(rel, outs[0])
        if why is None:
            differ.append(rel)
        else:                                         # clock readings: whole, and timing the same cells
            _whole(a[rel])
            _whole(b[rel])
            if a[rel].suffix == ".jsonl":
                keys = [_timed(p) for p in (a[rel], b[rel])]
                assert keys[0] == keys[1], f"{rel}: not the same cells (or epochs) timed"
            clock.append(rel)
    runs = [rel for rel in a if rel.endswith("/metrics.jsonl")]
    print(f"{len(a)} files: {len(same)} byte-identical (with {len(runs)} training runs), {len(clock)} files of "
          f"clock readings not compared ({len({r.rsplit('/', 1)[-1] for r in clock})} names)")
    assert not differ, f"differ beyond the excluded files of clock readings: {differ}"
    # the result files proper are all byte-identical
    for rel in a:
        if rel.rsplit("/", 1)[-1] in ("result.json", "cells.jsonl", "report.md", "report.html", "manifest.json",
                                      "run.json") or (rel.endswith(".png") and rel not in CLOCK):
            assert rel in same, rel
    # and so are the training runs' own files; their clock readings are in the timings.jsonl beside them
    assert runs
    for m in runs:
        d = m.rsplit("/", 1)[0]
        assert f"{d}/timings.jsonl" in a, d
        for f in ("metrics.jsonl", "summary.json", "checkpoint.safetensors", "model.safetensors"):
            assert f"{d}/{f}" not in a or f"{d}/{f}" in same, f"{d}/{f}"
        assert not any(k in a[m].read_text() for k in ('"epoch_seconds"', '"unix_time"', '"wall_seconds"')), m

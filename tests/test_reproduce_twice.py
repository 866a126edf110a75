"""``reproduce all --tiny`` twice (issue 22): the same files, byte for byte, but for the files of clock readings.

Two runs into two folders, one started with ``OMP_NUM_THREADS=1`` and one with 2 - what a 1-core and a 2-core
machine start with (:mod:`lenetlab.determinism` pins torch to 2 threads and NumPy's BLAS to 1 whatever they
start with). Every file both write must be byte-identical - each experiment's result.json, cells.jsonl,
report.md, run.json, figures and trained models, and the suite's report.md, report.html and manifest.json -
except the files below, each excluded for the reason next to it. Clock readings (wall times, per-cell times,
the deploy experiment's latencies and the claims decided from them, ZO's time per step) are kept in files of
their own, :data:`CLOCK` (checked for being whole, and a timings.jsonl for timing the same cells); a training
run's own files record its epochs' times (``lenetlab train``'s run format), :data:`TRAIN_RUN`, and are compared
with those times masked. Any other difference is a bug. Slow: two tiny reproductions of every experiment (~3 min
CPU each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_kill_anywhere import HANG_S, _env, files, normal

# files of clock readings, by name (anywhere) or by path: measured on the machine, they vary run to run
CLOCK = {
    "timings.json": "an experiment's wall time and the tables, claims, figures and metrics it computed from clock "
                    "readings; at the top, reproduce all's wall time per experiment",
    "timings.jsonl": "each cell's clock readings: training seconds, latencies, ms per step",
    "timings.md": "timings.json as a report (the experiment's; at the top, reproduce all's)",
    "timings.html": "reproduce all's clock readings as a self-contained page (embeds deploy/latency.png)",
    "deploy/latency.png": "a plot of the measured per-image latencies (listed in deploy/timings.json)",
}
# the files of a training run inside an experiment (beside its config.json), compared with its times masked
TRAIN_RUN = {
    "summary.json": "a training run's summary records its wall_seconds",
    "metrics.jsonl": "a training run's metrics line per epoch records epoch_seconds, wall_seconds and unix_time",
    "checkpoint.safetensors": "a training run's checkpoint carries its last metrics line (with those times) in "
                              "its metadata",
}


def excluded(rel: str, root: Path) -> str | None:
    """Why ``rel`` may differ between the two runs (None: it must not)."""
    name = rel.rsplit("/", 1)[-1]
    if rel in CLOCK or name in CLOCK:
        return CLOCK.get(rel) or CLOCK[name]
    if name in TRAIN_RUN and (root / rel).parent.joinpath("config.json").is_file():
        return TRAIN_RUN[name]
    return None


def _whole(path: Path) -> None:
    if path.suffix == ".json":
        json.loads(path.read_bytes())
    elif path.suffix == ".jsonl":
        for ln in path.read_bytes().splitlines():
            json.loads(ln)


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
    same, clock, masked, differ = [], [], [], []
    for rel in a:
        if a[rel].read_bytes() == b[rel].read_bytes():
            same.append(rel)
            continue
        why = excluded(rel, outs[0])
        if why is None:
            differ.append(rel)
        elif rel.rsplit("/", 1)[-1] in TRAIN_RUN:     # a training run's file: equal once its times are masked
            (masked if normal(a[rel], outs[0]) == normal(b[rel], outs[1]) else differ).append(rel)
        else:                                         # clock readings: whole, and timing the same cells
            _whole(a[rel])
            _whole(b[rel])
            if a[rel].suffix == ".jsonl":
                keys = [sorted({json.loads(ln)["key"] for ln in p.read_bytes().splitlines()}) for p in (a[rel], b[rel])]
                assert keys[0] == keys[1], f"{rel}: not the same cells timed"
            clock.append(rel)
    print(f"{len(a)} files: {len(same)} byte-identical, {len(masked)} training-run files equal with their times "
          f"masked, {len(clock)} files of clock readings not compared ({', '.join(sorted(clock))})")
    assert not differ, f"differ beyond the excluded files of clock readings: {differ}"
    # the result files proper are all byte-identical
    for rel in a:
        if rel.rsplit("/", 1)[-1] in ("result.json", "cells.jsonl", "report.md", "report.html", "manifest.json",
                                      "run.json") or (rel.endswith(".png") and rel not in CLOCK):
            assert rel in same, rel

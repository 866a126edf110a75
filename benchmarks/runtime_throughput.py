"""Throughput of every LeNet-5 runtime, measured in one run (issue 3's performance goals).

Runtimes: PyTorch eager, ONNX Runtime (1 and 2 intra-op threads), the NumPy
runtime (fast path), the generated C runtime in float32 and int8, single-
threaded and with 2 threads (``lenet5_eval --threads 2``: the batch split
across POSIX threads). Each is timed at batch 1 (single-image latency) and
batch 256 (the 2-thread C rows at batch 256 only: one image is never split),
on real MNIST test images; the C runtime is timed by its own ``lenet5_eval``
(wall clock inside the process, so process start-up is excluded, as it is for
the others). Every timing is the best of ``--rounds`` rounds (the machine is
noisy).

Goals: C float32 single-image latency <= ONNX Runtime's; C float32 at batch
256 >= ONNX Runtime with the same number of threads (1 and 2); C int8
throughput >= 1.5x C float32; the int8 flat file about 4x smaller than the
float32 one.

    python benchmarks/runtime_throughput.py [--run RUN_DIR] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _record import Record, add_json_option
from lenetlab.data.datasets import load_raw
from lenetlab.data.idx import write_idx
from lenetlab.data.transforms import to_model_input
from lenetlab.deploy import runtime
from lenetlab.deploy.export import build_flat, export
from lenetlab.rundir import load_model


def best_of(rounds: int, fn) -> float:
    """Best images/s over ``rounds`` calls of ``fn() -> images/s``."""
    return max(fn() for _ in range(rounds))


def timed(n_images: int, fn) -> float:
    t = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - t)


def c_images_per_s(binary: Path, images: Path, labels: Path, batch: int, repeat: int, threads: int = 1) -> float:
    r = subprocess.run([str(binary), str(images), str(labels), "--batch", str(batch), "--repeat", str(repeat),
                        "--threads", str(threads)], capture_output=True, text=True, check=True)
    fields = r.stdout.split()
    return float(fields[fields.index("images_per_s") + 1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a trained lenet5 run dir (default: train one with --preset fast)")
    p.add_argument("--rounds", type=int, default=3)
    add_json_option(p)
    a = p.parse_args()
    rec = Record("runtime_throughput")
    work = Path(tempfile.mkdtemp(prefix="lenetlab_rt_"))
    run = Path(a.run) if a.run else work / "run"
    if not a.run:
        from lenetlab.train import fit
        from lenetlab.train.presets import resolve

        print("training lenet5 (--preset fast) ...", flush=True)
        fit(resolve("fast", "lenet5"), out=run, log=None, progress=False)
    model, cfg = load_model(run)
    model.eval()
    _, _, test_x, test_y = load_raw("mnist")
    write_idx(work / "images.idx", test_x)
    write_idx(work / "labels.idx", test_y)
    x_norm = to_model_input(torch.from_numpy(test_x), cfg.data)
    n1, nb = 2000, 10000          # images timed at batch 1 / batch 256
    rows: dict[str, dict[str, float | None]] = {}

    # PyTorch eager
    def torch_b1() -> None:
        with torch.inference_mode():
            for i in range(n1):
                model(x_norm[i:i + 1])

    def torch_bb() -> None:
        with torch.inference_mode():
            for i in range(0, nb, 256):
                model(x_norm[i:i + 256])

    rows["PyTorch eager"] = {"b1": best_of(a.rounds, lambda: timed(n1, torch_b1)),
                             "b256": best_of(a.rounds, lambda: timed(nb, torch_bb))}

    # ONNX Runtime
    try:
        import onnxruntime as ort

        onnx_dir = work / "onnx"
        export(run, "onnx", out=onnx_dir)
        x_np = x_norm.numpy()
        for label, threads in (("ONNX Runtime 1 thread", 1), ("ONNX Runtime 2 threads", 2)):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sess = ort.InferenceSession(str(onnx_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name

            def ort_b1(sess=sess, name=name) -> None:
                for i in range(n1):
                    sess.run(None, {name: x_np[i:i + 1]})

            def ort_bb(sess=sess, name=name) -> None:
                for i in range(0, nb, 256):
                    sess.run(None, {name: x_np[i:i + 256]})

            rows[label] = {"b1": best_of(a.rounds, lambda f=ort_b1: timed(n1, f)),
                           "b256": best_of(a.rounds, lambda f=ort_bb: timed(nb, f))}
    except ImportError:
        print("onnxruntime not installed: ONNX rows skipped (pip install 'lenetlab[onnx]')")
        rec.note("onnxruntime not installed: ONNX rows and the goals against it skipped")

    # NumPy runtime (fast path)
    fm = build_flat(model, cfg, int8=False)
    n_np1 = 300
    rows["NumPy runtime"] = {
        "b1": best_of(a.rounds, lambda: timed(n_np1, lambda: [runtime.run(fm, test_x[i:i + 1]) for i in range(n_np1)])),
        "b256": best_of(a.rounds, lambda: timed(nb, lambda: runtime.run(fm, test_x[:nb], batch_size=256)))}

    # C runtime, float32 and int8 (generated project, its own Makefile: -O3 -march=native, POSIX threads)
    sizes = {}
    idx_files = (work / "images.idx", work / "labels.idx")
    for label, int8 in (("C float32", False), ("C int8", True)):
        d = work / ("c_int8" if int8 else "c_f32")
        export(run, "c", int8=int8, out=d)
        subprocess.run(["make", "-s", "-C", str(d)], check=True)
        binary = d / "lenet5_eval"
        rows[label] = {
            "b1": best_of(a.rounds, lambda b=binary: c_images_per_s(b, *idx_files, 1, 1)),
            "b256": best_of(a.rounds, lambda b=binary: c_images_per_s(b, *idx_files, 256, 1))}
        rows[f"{label} 2 threads"] = {
            "b1": None, "b256": best_of(a.rounds, lambda b=binary: c_images_per_s(b, *idx_files, 256, 1, threads=2))}
        sizes[label] = next(d.glob("*.flat")).stat().st_size

    print(f"\nmachine: {torch.get_num_threads()} torch threads, numpy {np.__version__}, "
          f"{len(test_x)} MNIST test images, best of {a.rounds} rounds\n")
    print(f"{'runtime':24s} {'batch 1 img/s':>14s} {'latency us':>11s} {'batch 256 img/s':>16s}")
    for label, r in rows.items():
        b1 = f"{r['b1']:14,.0f} {1e6 / r['b1']:11.1f}" if r["b1"] else f"{'-':>14s} {'-':>11s}"
        print(f"{label:24s} {b1} {r['b256']:16,.0f}")
    f32, i8 = sizes["C float32"], sizes["C int8"]
    print(f"\nmodel bytes: float32 {f32:,}  int8 {i8:,}  ratio {f32 / i8:.2f}x")
    rec.value("images_per_s", {label: dict(r) for label, r in rows.items()})
    rec.value("model_bytes", {"float32": f32, "int8": i8})
    rec.value("rounds", a.rounds)
    ort_keys = [k for k in rows if k.startswith("ONNX")]
    if ort_keys:
        best_ort = max(rows[k]["b1"] for k in ort_keys)
        ratio = rows["C float32"]["b1"] / best_ort
        print(f"goal C float32 latency <= ONNX Runtime's (best of its thread settings): "
              f"{1e6 / rows['C float32']['b1']:.1f} us vs {1e6 / best_ort:.1f} us -> C is {ratio:.2f}x faster "
              f"[{'met' if ratio >= 1 else 'NOT met'}]")
        rec.ratio("c_f32_vs_ort_b1", ratio)
        rec.goal("C float32 latency <= ONNX Runtime's (best of its thread settings), as ONNX/C latency", ratio, 1.0)
        for threads, c_key, ort_key in ((1, "C float32", "ONNX Runtime 1 thread"),
                                        (2, "C float32 2 threads", "ONNX Runtime 2 threads")):
            c, o = rows[c_key]["b256"], rows[ort_key]["b256"]
            print(f"goal C float32 batch 256 >= ONNX Runtime, {threads} thread{'s' if threads > 1 else ''} each: "
                  f"{c:,.0f} vs {o:,.0f} img/s -> {c / o:.2f}x [{'met' if c >= o else 'NOT met'}]")
            rec.ratio(f"c_f32_vs_ort_b256_{threads}t", c / o)
            rec.goal(f"C float32 batch 256 >= ONNX Runtime, {threads} thread{'s' if threads > 1 else ''} each",
                     c / o, 1.0)
    for label in ("C float32", "C int8"):
        speedup = rows[label + " 2 threads"]["b256"] / rows[label]["b256"]
        print(f"{label} 2 threads / 1 thread at batch 256: {speedup:.2f}x")
        rec.ratio(f"{'c_f32' if label == 'C float32' else 'c_int8'}_2t_vs_1t_b256", speedup)
    for b in ("b256", "b1"):
        ratio = rows["C int8"][b] / rows["C float32"][b]
        print(f"goal C int8 >= 1.5x C float32 throughput ({b}): {ratio:.2f}x [{'met' if ratio >= 1.5 else 'NOT met'}]")
        rec.ratio(f"c_int8_vs_f32_{b}", ratio)
        rec.goal(f"C int8 >= 1.5x C float32 throughput ({b})", ratio, 1.5)
    print(f"goal int8 file ~4x smaller: {f32 / i8:.2f}x [{'met' if f32 / i8 >= 3.5 else 'NOT met'}]")
    rec.ratio("f32_vs_int8_file_bytes", f32 / i8)
    rec.goal("int8 file ~4x smaller (met at >= 3.5x)", f32 / i8, 3.5)
    rec.write(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

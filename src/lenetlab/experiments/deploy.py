"""``lenetlab reproduce deploy``: LeNet-5 deployed as a flat 1-D model (the HoloLens work, docs/papers/deploy.md).

"Methodology to Deploy CNN-Based Computer Vision Models on Immersive Wearable
Devices" (2024) trains LeNet-5 with PyTorch on a PC and runs it on a HoloLens
without a deep-learning framework, the image and every layer rewritten as 1-D
arrays addressed by index arithmetic; the deployed model keeps about 98%
accuracy, like on the PC, in real time.

Per training seed (``lenet5``, the ``fast`` recipe) this experiment exports the
network to the flat file (:mod:`lenetlab.deploy.flat`, float32 and int8) and runs
it in three framework-free runtimes - NumPy (:mod:`lenetlab.deploy.runtime`),
C (:mod:`lenetlab.deploy.c_eval`, the exported C99 runtime compiled with gcc)
and the web page's JavaScript in headless Chromium
(:mod:`lenetlab.deploy.browser`) - on every test image, and measures:

- top-1 agreement of each float32 runtime with PyTorch, image by image, and
  bit-identical int8 logits across the runtimes;
- model bytes (float32 and int8 files);
- per-image latency (one image per call) of each runtime and of PyTorch eager,
  timed side by side in interleaved repetitions (:mod:`lenetlab.deploy.latency`);
- the int8 accuracy change against float32 on the same images.

Claims (rules from :mod:`lenetlab.experiments.stats`, stated in each row):
``{numpy,c,browser}_same_top1`` (exact count of disagreeing images, all seeds),
``int8_runtimes_bit_exact`` (exact count), ``accuracy_about_98`` and
``same_as_pc`` (bootstrap over seeds and test images), ``int8_cost`` (paired
bootstrap of float32 minus int8 accuracy), ``int8_smaller`` (byte count),
``{numpy,c,browser}_vs_torch_latency`` (median per-repetition latency ratio,
bootstrap over repetitions) and ``real_time`` (the browser's per-image latency
against 1/30 s). Without Chromium the browser rows are inconclusive and say why.
The latency claims, table, headline metrics (``*_ms_per_image``) and plot
(latency.png) are computed from clock readings: they go to timings.json and
timings.md (:class:`~lenetlab.experiments.base.Timings`), not result.json and
report.md - measured on this machine, they vary run to run.

Quick mode: 3 seeds, 1 epoch of the ``fast`` recipe on all 60k training images,
all 10k test images, 12 timing repetitions of 100 images (about 3 minutes on 2
busy cores). ``--full``: 5 seeds, the full ``fast`` recipe (2 epochs), 30
repetitions. Training runs on one thread (small batches gain little from a
second one and lose much when the cores are shared).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lenetlab.determinism import pinned_threads
from lenetlab.errors import LenetlabError
from lenetlab.experiments import stats
from lenetlab.experiments.base import TIMINGS, Claim, Context, Experiment, Result, Timings, timing
from lenetlab.fileio import atomic_write_bytes, save_figure
from lenetlab.registry import register

MODEL = "lenet5"
RUNTIMES = ("numpy", "c", "browser")           # the framework-free float32 runtimes
PAPER_ACCURACY = 0.98
ABOUT = 0.005          # "about 98%": an interval above 97.5% supports it
SAME_AS_PC = 0.001     # |deployed - PyTorch| accuracy within 0.1 points counts as "the same as on the PC"
INT8_COST = 0.005      # int8 may cost at most half a point of accuracy
INT8_FACTOR = 3.5      # an int8 file at least 3.5x smaller than the float32 one
REAL_TIME_S = 1 / 30   # 30 images per second
# the claims decided from clock readings (timings.json / timings.md, not result.json: they vary run to run)
LATENCY_CLAIMS = (*(f"{rt}_vs_torch_latency" for rt in RUNTIMES), "real_time")
LATENCY_TABLE = "median per-image latency, one image per call"


def settings(full: bool, tiny: bool = False) -> dict[str, Any]:
    """Seeds, training budget (``None``: the ``fast`` recipe's own), test images, latency repetitions."""
    if tiny:   # tests only: every code path in seconds; numbers meaningless
        return {"seeds": [0], "epochs": 1, "train_subset": 1000, "test_images": 300, "repetitions": 3,
                "timing_images": 20}
    if full:
        return {"seeds": [0, 1, 2, 3, 4], "epochs": None, "train_subset": None, "test_images": 10000,
                "repetitions": 30, "timing_images": 100}
    return {"seeds": [0, 1, 2], "epochs": 1, "train_subset": None, "test_images": 10000, "repetitions": 12,
            "timing_images": 100}



# ------------------------------------------------------------------ cells
def _train(ctx: Context, seed: int, s: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    from lenetlab.rundir import require_run
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    run_dir = ctx.out / "runs" / f"seed{seed}"
    overrides: dict[str, Any] = {"data": {"val_size": 0}, "train": {"seed": seed}}
    if s["train_subset"]:
        overrides["data"]["train_subset"] = s["train_subset"]
    if s["epochs"]:
        overrides["train"]["epochs"] = s["epochs"]

    def train() -> dict[str, Any]:
        with pinned_threads(1):
            r = fit(resolve("fast", MODEL, overrides=overrides), out=run_dir, force=True, log=None, progress=False)
        return {"test_accuracy": r["test_accuracy"], "epochs": r["epochs"], "train_images": r["train_images"],
                "timings": {"seconds": round(r["wall_seconds"], 1)}}

    info = ctx.cells.get_or_run(f"train/{seed}", train)
    try:
        require_run(run_dir)
    except LenetlabError:   # the cell survived but the run directory did not: train again
        train()
    ctx.log(f"  seed {seed}: PyTorch test accuracy {100 * info['test_accuracy']:.2f}% ({timing(info, 'seconds')} s)")
    return run_dir, info


def _idx(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask).tolist()


class _Seed:
    """One trained seed: the model, its flat files (float32, int8) and the test images."""

    def __init__(self, run_dir: Path, n_images: int):
        import torch

        from lenetlab.data.datasets import load_raw
        from lenetlab.data.transforms import to_model_input
        from lenetlab.deploy import flat
        from lenetlab.deploy.export import build_flat
        from lenetlab.rundir import load_model

        self.model, self.cfg = load_model(run_dir)
        self.model.eval()
        _, _, x, y = load_raw(self.cfg.data.dataset, self.cfg.data.data_dir)
        self.x, self.y = np.ascontiguousarray(x[:n_images]), y[:n_images].astype(np.int64)
        self.fm = {"float32": build_flat(self.model, self.cfg, False), "int8": build_flat(self.model, self.cfg, True)}
        self.paths = {}
        for dt, fm in self.fm.items():
            self.paths[dt] = run_dir / ("model.flat" if dt == "float32" else "model_int8.flat")
            atomic_write_bytes(self.paths[dt], flat.encode(fm))
        with torch.no_grad():
            self.torch_logits = torch.cat([self.model(to_model_input(torch.from_numpy(self.x[i:i + 2000]),
                                                                     self.cfg.data))
                                           for i in range(0, len(self.x), 2000)]).numpy()
        self.torch_pred = self.torch_logits.argmax(1)

    def site(self, dtype: str) -> dict[str, bytes]:
        """The web page's files for this seed's flat model, its test set cut to the images scored here."""
        import gzip

        from lenetlab.deploy.web import DATA_DIR, TEST_FILES, site_files

        files = site_files(self.paths[dtype].read_bytes(), int8=dtype == "int8", arch=MODEL, run_name="deploy",
                           dataset=self.cfg.data.dataset, data_dir=self.cfg.data.data_dir)
        if f"{DATA_DIR}/{TEST_FILES[0]}" not in files:
            raise LenetlabError(f"the web page has no test set: {files.get('manifest.json', b'')[:200]!r}")
        for name, arr in zip(TEST_FILES, (self.x, self.y.astype(np.uint8))):
            header = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
            files[f"{DATA_DIR}/{name}"] = gzip.compress(header + np.ascontiguousarray(arr).tobytes(), mtime=0)
        return files


def _evaluate(seed_data: _Seed, c) -> dict[str, Any]:
    """NumPy and C runtimes (float32, int8) against PyTorch on every test image; file sizes."""
    from lenetlab.deploy.runtime import run

    d, y = seed_data, seed_data.y
    out: dict[str, Any] = {"images": len(y), "torch_wrong": _idx(d.torch_pred != y),
                           "bytes": {dt: p.stat().st_size for dt, p in d.paths.items()}}
    logits = {("numpy", "float32"): run(d.fm["float32"], d.x), ("numpy", "int8"): run(d.fm["int8"], d.x),
              ("c", "float32"): c.logits(d.paths["float32"], d.x), ("c", "int8"): c.logits(d.paths["int8"], d.x)}
    scale = max(1.0, float(np.abs(d.torch_logits).max()))
    for (rt, dt), lg in logits.items():
        pred = lg.argmax(1)
        row = {"wrong": _idx(pred != y), "differs_from_torch": _idx(pred != d.torch_pred)}
        if dt == "float32":
            row["max_rel_logit_diff"] = float(np.abs(lg - d.torch_logits).max() / scale)
        out[f"{rt}/{dt}"] = row
    # int8 is integer-only: every runtime must give the same logits, bit for bit
    out["int8_c_vs_numpy_logits_differ"] = _idx((logits[("c", "int8")].astype(np.int64)
                                                 != logits[("numpy", "int8")].astype(np.int64)).any(1))
    out["int8_numpy_logits_sample"] = logits[("numpy", "int8")][:300].astype(np.int64).tolist()
    return out


def _browser_eval(seed_data: _Seed, driver, int8_reference: np.ndarray) -> dict[str, Any]:
    from lenetlab.deploy.browser import BrowserPage

    d, y = seed_data, seed_data.y
    out: dict[str, Any] = {}
    for dt in ("float32", "int8"):
        with BrowserPage(driver, d.site(dt), runtime="js") as page:
            pred = page.evaluate_test_set()
            row = {"wrong": _idx(pred != y), "differs_from_torch": _idx(pred != d.torch_pred)}
            if dt == "int8":   # the page's integer logits against the NumPy runtime's, on the first images
                js = page.logits(d.x[:len(int8_reference)])
                row["logits_differ"] = _idx((js.astype(np.int64) != int8_reference).any(1))
        out[f"browser/{dt}"] = row
    return out


def _latency(seed_data: _Seed, c, driver, s: dict[str, Any]) -> dict[str, list[float]]:
    """Seconds per image of PyTorch eager and each runtime, interleaved repetitions (one image per call)."""
    from lenetlab.deploy.browser import BrowserPage
    from lenetlab.deploy.latency import interleaved, numpy_timer, torch_timer

    d = seed_data
    imgs = d.x[:s["timing_images"]]
    timers = {"torch": torch_timer(d.model, d.cfg.data, imgs),
              "numpy": numpy_timer(d.fm["float32"], imgs),
              "c": lambda: c.seconds_per_image(d.paths["float32"], imgs, repeat=5)}
    if driver is None:
        return interleaved(timers, s["repetitions"])
    with BrowserPage(driver, d.site("float32"), runtime="js") as page:
        timers["browser"] = lambda: page.seconds_per_image(imgs)
        return interleaved(timers, s["repetitions"])


# ------------------------------------------------------------------ the experiment
@register("experiment", "deploy")
class DeployStudy(Experiment):
    """The HoloLens deployment work: a flat 1-D LeNet-5 in NumPy, C and the browser, against PyTorch."""

    name = "deploy"
    cost = 2.5   # scheduling hint for reproduce all --jobs (rough quick-mode CPU share)
    paper = ("Methodology to deploy CNN-based computer vision models on immersive wearable devices (HoloLens, "
             "2024; docs/papers/deploy.md)")
    description = "flat 1-D LeNet-5 in NumPy, C and browser runtimes: top-1 parity, bytes, latency, int8"
    accepts_options = True

    def run(self, ctx: Context) -> Result:
        from lenetlab.deploy.browser import BrowserUnavailable, open_browser
        from lenetlab.deploy.c_eval import CEvaluator

        s = ctx.resolve_settings(settings(ctx.full, ctx.tiny))
        if not s["seeds"]:
            raise LenetlabError("deploy: settings.seeds is empty")
        seeds = [int(x) for x in s["seeds"]]
        driver, browser_note = None, ""
        evals: dict[int, dict[str, Any]] = {}
        timings: dict[int, dict[str, list[float]]] = {}
        train_s: dict[int, float | None] = {}
        try:
            try:
                driver = open_browser()
            except BrowserUnavailable as e:
                browser_note = str(e)
                ctx.log(f"browser runtime not measured: {e}")
            with tempfile.TemporaryDirectory(prefix="lenetlab-c-") as tmp:
                c = CEvaluator(tmp)
                for seed in seeds:
                    ctx.log(f"seed {seed}: training {MODEL} ...")
                    run_dir, info = _train(ctx, seed, s)
                    train_s[seed] = timing(info, "seconds")
                    cache: list[_Seed] = []

                    def seed_data(run_dir=run_dir, cache=cache) -> _Seed:   # built only when a cell needs it
                        if not cache:
                            cache.append(_Seed(run_dir, s["test_images"]))
                        return cache[0]

                    n = s["test_images"]
                    ctx.log(f"seed {seed}: NumPy and C runtimes on {n} test images ...")
                    ev = dict(ctx.cells.get_or_run(f"eval/{seed}/{n}", lambda: _evaluate(seed_data(), c)))
                    if driver is not None:
                        ctx.log(f"seed {seed}: browser runtime on {n} test images ...")
                        ref = np.asarray(ev["int8_numpy_logits_sample"], np.int64)
                        try:
                            ev.update(ctx.cells.get_or_run(f"browser/{seed}/{n}",
                                                           lambda r=ref, d=driver: _browser_eval(seed_data(), d, r)))
                        except _browser_errors() as e:   # a browser that dies mid-run: reported, not a crash
                            browser_note = f"the browser failed at seed {seed}: {_first_line(e)}"
                            ctx.log(browser_note)
                            driver = _quit(driver)
                    evals[seed] = ev
                    ctx.log(f"seed {seed}: latency, {s['repetitions']} interleaved repetitions ...")
                    key = f"latency/{seed}/{'with' if driver else 'without'}-browser"
                    # the latencies are clock readings: timings.jsonl (the cell in cells.jsonl is empty)
                    try:
                        cell = ctx.cells.get_or_run(key, lambda d=driver: {TIMINGS: _latency(seed_data(), c, d, s)})
                    except _browser_errors() as e:
                        browser_note = f"the browser failed at seed {seed}: {_first_line(e)}"
                        ctx.log(browser_note)
                        driver = _quit(driver)
                        cell = ctx.cells.get_or_run(f"latency/{seed}/without-browser",
                                                    lambda: {TIMINGS: _latency(seed_data(), c, None, s)})
                    timings[seed] = dict(cell.get(TIMINGS, cell))   # (older cells hold them in the value)
        finally:
            _quit(driver)
        if browser_note:   # rows from seeds measured before a failure stay out: every seed or none
            for ev in evals.values():
                ev.pop("browser/float32", None)
                ev.pop("browser/int8", None)
            for t in timings.values():
                t.pop("browser", None)
        claims = deploy_claims(evals, timings, seeds, browser_note, ctx.full)
        tables = _tables(evals, timings, seeds)
        metrics = _metrics(evals, timings)
        notes = _notes(s, browser_note)
        # what comes from clock readings goes to timings.json / timings.md: it varies run to run
        clock = Timings(tables={LATENCY_TABLE: tables.pop(LATENCY_TABLE), "training time per seed": [
                            {"seed": k, "train seconds": v} for k, v in train_s.items()]},
                        claims=[c for c in claims if c.name in LATENCY_CLAIMS], figures=_plot(ctx, timings),
                        metrics={k: metrics.pop(k) for k in list(metrics) if k.endswith("_ms_per_image")})
        return Result(self.name, self.paper, ctx.mode,
                      {"settings": s, "model": MODEL, "paper_accuracy": PAPER_ACCURACY, "about": ABOUT,
                       "same_as_pc": SAME_AS_PC, "int8_cost": INT8_COST, "int8_factor": INT8_FACTOR,
                       "real_time_s": REAL_TIME_S},
                      tables=tables, claims=[c for c in claims if c.name not in LATENCY_CLAIMS], notes=notes,
                      metrics=metrics, timings=clock)


def _browser_errors() -> tuple[type[BaseException], ...]:
    """What a browser that crashes or hangs mid-run raises (WebDriver errors, a page that reports an error)."""
    from selenium.common.exceptions import WebDriverException

    from lenetlab.deploy.browser import PageError

    return (WebDriverException, PageError)


def _first_line(e: BaseException) -> str:
    lines = (getattr(e, "msg", None) or str(e)).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _quit(driver: Any) -> None:
    if driver is not None:
        try:
            driver.quit()
        except Exception:   # noqa: BLE001 (a dead browser cannot be quit; nothing else to do)
            pass


# ------------------------------------------------------------------ claims
def _correct(ev: dict[str, Any], key: str) -> np.ndarray:
    v = np.ones(ev["images"], np.int8)
    v[ev[key]["wrong"] if key != "torch" else ev["torch_wrong"]] = 0
    return v


def _median_boot(values: list[float], n_boot: int | None = None, seed: int = 0) -> stats.Estimate:
    """Median of per-repetition values with a percentile bootstrap interval over the repetitions."""
    n_boot = stats.N_BOOT if n_boot is None else n_boot
    v = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    reps = np.median(v[rng.integers(0, len(v), size=(n_boot, len(v)))], axis=1)
    lo, hi = np.quantile(reps, [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2])
    return stats.Estimate(float(np.median(v)), float(lo), float(hi),
                          f"median over {len(v)} interleaved repetitions, percentile bootstrap ({n_boot} "
                          "resamples) over repetitions")


def _seeds(seeds: list[int]) -> str:
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"


def _inconclusive(name: str, statement: str, why: str, seeds: list[int]) -> Claim:
    return Claim(name, statement, why, rule=f"not decided: {why}", seeds=seeds, verdict=stats.INCONCLUSIVE)


def deploy_claims(evals: dict[int, dict[str, Any]], timings: dict[int, dict[str, list[float]]],
                  seeds: list[int], browser_note: str = "", full: bool = False) -> list[Claim]:
    """Every claim of the deployment study from the per-seed cells (``evals``: :func:`_evaluate` rows, plus
    ``browser/float32`` and ``browser/int8`` where the browser ran; ``timings``: seconds per image per
    repetition, by runtime)."""
    floor = stats.min_seeds(full)
    n_img = min(ev["images"] for ev in evals.values())
    total = n_img * len(seeds)
    claims: list[Claim] = []
    no_browser = browser_note or "the browser runtime was not measured"
    for rt in RUNTIMES:
        name, statement = f"{rt}_same_top1", (f"the flat 1-D model run by the {rt} runtime, without a framework, "
                                              "gives PyTorch's top-1 on every test image")
        key = f"{rt}/float32"
        if not all(key in ev for ev in evals.values()):
            claims.append(_inconclusive(name, statement, no_browser, seeds))
            continue
        k = sum(len(evals[sd][key]["differs_from_torch"]) for sd in seeds)
        rate = stats.wilson(k, total)
        rule = stats.LessThan(0.5, quantity=f"images whose {rt} top-1 differs from PyTorch's")
        extra = ""
        if "max_rel_logit_diff" in evals[seeds[0]][key]:
            extra = (f"; largest logit difference {max(evals[sd][key]['max_rel_logit_diff'] for sd in seeds):.2g} "
                     "of the largest |logit|")
        claims.append(stats.make_claim(
            name, statement, rule, stats.exact(k, f"exact count over {_seeds(seeds)} x {n_img} test images"),
            seeds=seeds, test_images=n_img, min_seeds=floor,
            measured=f"{k} of {total} image-seed pairs differ (rate {100 * rate.value:.3f}%, Wilson 95% "
                     f"[{100 * rate.lo:.3f}, {100 * rate.hi:.3f}]%){extra}"))

    # int8: integer-only arithmetic, so every runtime must give the same logits
    k = sum(len(evals[sd]["int8_c_vs_numpy_logits_differ"]) for sd in seeds)
    checked = [f"C vs NumPy on {total} image-seed pairs"]
    if all("browser/int8" in ev for ev in evals.values()):
        kb = sum(len(evals[sd]["browser/int8"]["logits_differ"]) for sd in seeds)
        nb = len(evals[seeds[0]]["int8_numpy_logits_sample"]) * len(seeds)
        checked.append(f"browser vs NumPy on {nb} (the first images of each seed)")
        k += kb
    else:
        checked.append(f"browser not checked ({no_browser})")
    claims.append(stats.make_claim(
        "int8_runtimes_bit_exact", "the int8 flat model gives bit-identical integer logits in every runtime",
        stats.LessThan(0.5, quantity="images whose int8 logits differ between runtimes"),
        stats.exact(k, f"exact count over {_seeds(seeds)}"), seeds=seeds, test_images=n_img, min_seeds=floor,
        measured=f"{k} images with differing int8 logits ({'; '.join(checked)})"))

    # accuracy: the deployed runtime (C) against "about 98%" and against PyTorch on the same images
    dep = [_correct(evals[sd], "c/float32") for sd in seeds]
    pc = [_correct(evals[sd], "torch") for sd in seeds]
    acc = stats.bootstrap_accuracy(dep)
    claims.append(stats.make_claim(
        "accuracy_about_98", "the deployed LeNet-5 keeps about 98% MNIST test accuracy",
        stats.GreaterThan(PAPER_ACCURACY - ABOUT, quantity="deployed (C runtime, float32) test accuracy",
                          scale=100, unit="%"), acc, seeds=seeds, min_seeds=floor))
    claims.append(stats.make_claim(
        "same_as_pc", "the deployed model's accuracy is similar to its accuracy on the PC (PyTorch)",
        stats.WithinRange(-SAME_AS_PC, SAME_AS_PC, quantity="(deployed - PyTorch) test accuracy", scale=100,
                          unit=" points"),
        stats.bootstrap_difference(dep, pc, paired=True), seeds=seeds, min_seeds=floor))
    q8 = [_correct(evals[sd], "c/int8") for sd in seeds]
    claims.append(stats.make_claim(
        "int8_cost", f"an int8 flat model costs less than {100 * INT8_COST:g} points of accuracy (ours; the paper "
        "deploys float32)",
        stats.LessThan(INT8_COST, quantity="(float32 - int8) test accuracy", scale=100, unit=" points"),
        stats.bootstrap_difference(dep, q8, paired=True), seeds=seeds, min_seeds=floor))
    b = evals[seeds[0]]["bytes"]
    claims.append(stats.make_claim(
        "int8_smaller", f"the int8 file is at least {INT8_FACTOR:g}x smaller than the float32 one (ours)",
        stats.AtLeastFactor(INT8_FACTOR, quantity="float32 bytes / int8 bytes"),
        stats.exact(b["float32"] / b["int8"], f"counted: {b['float32']} / {b['int8']} bytes"), seeds=stats.EXACT,
        measured=f"float32 {b['float32']:,} B, int8 {b['int8']:,} B: {b['float32'] / b['int8']:.2f}x"))

    # latency, side by side with PyTorch eager
    from lenetlab.deploy.latency import paired_ratios

    reps = {rt: [] for rt in RUNTIMES}
    secs = {rt: [] for rt in ("torch", *RUNTIMES)}
    for sd in seeds:
        t = timings[sd]
        for rt, r in paired_ratios(t, "torch").items():
            reps[rt] += r
        for rt, v in t.items():
            secs[rt] += v
    for rt in RUNTIMES:
        name = f"{rt}_vs_torch_latency"
        statement = (f"the {rt} runtime classifies one image at least as fast as PyTorch eager on the same machine "
                     "(ours; the paper reports no timing against PyTorch)")
        if not reps[rt]:
            claims.append(_inconclusive(name, statement, no_browser, seeds))
            continue
        est = _median_boot(reps[rt])
        ms = statistics.median(secs[rt]) * 1e3
        claims.append(stats.make_claim(
            name, statement, stats.LessThan(1.0, quantity=f"{rt} / PyTorch per-image latency"), est, seeds=seeds,
            min_seeds=floor, measured=f"{rt} / PyTorch latency {est.format(1, 'x')}; medians "
                                      f"{ms:.3f} ms vs {statistics.median(secs['torch']) * 1e3:.3f} ms per image"))
    statement = "real-time image processing: >= 30 images/s, one at a time (measured on this PC, not a headset)"
    if secs["browser"]:
        est = _median_boot(secs["browser"])
        claims.append(stats.make_claim(
            "real_time", statement, stats.LessThan(REAL_TIME_S, quantity="browser per-image latency", scale=1e3,
                                                   unit=" ms"), est, seeds=seeds, min_seeds=floor))
    else:
        claims.append(_inconclusive("real_time", statement, no_browser, seeds))
    return claims


# ------------------------------------------------------------------ tables, figure, notes
def _tables(evals, timings, seeds) -> dict[str, list[dict[str, Any]]]:
    acc_rows = []
    for sd in seeds:
        ev = evals[sd]
        n = ev["images"]
        row: dict[str, Any] = {"seed": sd, "test images": n,
                               "PyTorch %": round(100 * (1 - len(ev["torch_wrong"]) / n), 2)}
        for key in ("numpy/float32", "c/float32", "browser/float32", "numpy/int8", "c/int8", "browser/int8"):
            if key in ev:
                row[f"{key} %"] = round(100 * (1 - len(ev[key]["wrong"]) / n), 2)
                if key.endswith("float32"):
                    row[f"{key.split('/')[0]} top-1 != PyTorch"] = len(ev[key]["differs_from_torch"])
        acc_rows.append(row)
    b = evals[seeds[0]]["bytes"]
    size_rows = [{"file": "model.flat (float32)", "bytes": b["float32"]},
                 {"file": "model_int8.flat (int8)", "bytes": b["int8"]},
                 {"file": "ratio", "bytes": round(b["float32"] / b["int8"], 2)}]
    lat_rows = []
    for sd in seeds:
        t = timings[sd]
        row = {"seed": sd, "repetitions": len(t["torch"])}
        for rt, v in t.items():
            row[f"{rt} ms/image"] = round(statistics.median(v) * 1e3, 4)
        lat_rows.append(row)
    return {"accuracy per runtime (all test images)": acc_rows, "model bytes": size_rows, LATENCY_TABLE: lat_rows}


def _metrics(evals, timings) -> dict[str, float]:
    seeds = list(evals)
    m: dict[str, float] = {}
    for key in ("c/float32", "c/int8"):
        m[f"accuracy_{key.replace('/', '_')}"] = statistics.fmean(
            1 - len(evals[sd][key]["wrong"]) / evals[sd]["images"] for sd in seeds)
    m["float32_bytes"], m["int8_bytes"] = (float(evals[seeds[0]]["bytes"][k]) for k in ("float32", "int8"))
    for rt in ("torch", *RUNTIMES):
        vals = [v for sd in seeds for v in timings[sd].get(rt, [])]
        if vals:
            m[f"{rt}_ms_per_image"] = statistics.median(vals) * 1e3
    return m


def _plot(ctx: Context, timings) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [rt for rt in ("torch", *RUNTIMES) if any(rt in t for t in timings.values())]
    data = [[1e3 * v for t in timings.values() for v in t.get(rt, [])] for rt in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), ["PyTorch eager" if n == "torch" else n for n in names])
    ax.set(yscale="log", ylabel="ms per image (one image per call)",
           title="per-image latency, interleaved repetitions, all seeds")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, ctx.out / "latency.png", dpi=110)
    plt.close(fig)
    return ["latency.png"]


def _notes(s: dict[str, Any], browser_note: str) -> list[str]:
    epochs = "the fast recipe's 2 epochs" if not s["epochs"] else f"{s['epochs']} epoch(s) (shortened recipe)"
    notes = [f"Model: {MODEL} trained per seed with the fast recipe, {epochs}, on "
             f"{s['train_subset'] or 60000} training images; every runtime scores the first {s['test_images']} "
             "test images.",
             "Latency: one image per call in every runtime (PyTorch eager with no_grad on one thread, the NumPy "
             "fast path, the exported C runtime built with the Makefile's -O3 -march=native flags and timed by "
             "its own clock, the page's JavaScript Runtime.run timed inside Chromium); each repetition times "
             f"{s['timing_images']} images per runtime, the order rotating between repetitions. Measured on the "
             "PC, not on a headset.",
             "int8 accuracy is the C runtime's (bit-identical to NumPy's and, where checked, the browser's)."]
    notes.append(f"real_time uses the browser runtime, the closest stand-in here for a sandboxed device runtime, "
                 f"against {1 / REAL_TIME_S:.0f} images/s.")
    if browser_note:
        notes.append(f"Browser runtime not measured: {browser_note}.")
    return notes

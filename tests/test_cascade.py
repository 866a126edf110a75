"""Cascades (Rohlfs 2022/23): rule and accounting on synthetic cases with known answers, resolution and
model cascades on real MNIST subsets, the PCA-LR model, ``lenetlab cascade`` and the tiny experiment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import run_cli
from lenetlab.cascade import (
    data_costs,
    make_member,
    member_probs,
    model_cascade,
    most_confident,
    order_by_cost,
    parse_ladder,
    pixelate,
    resolution_cascade,
    resolution_probs,
    run_cascade,
    run_cascade_lazy,
)
from lenetlab.config import DataConfig
from lenetlab.errors import LenetlabError
from lenetlab.models import create_model


def _probs(confs: list[list[float]], preds: list[list[int]], classes: int = 3) -> torch.Tensor:
    """(L, N, C) probabilities whose max is ``confs[l][n]`` at class ``preds[l][n]``."""
    out = torch.zeros(len(confs), len(confs[0]), classes)
    for lvl, (cs, ps) in enumerate(zip(confs, preds)):
        for n, (c, p) in enumerate(zip(cs, ps)):
            out[lvl, n] = (1 - c) / (classes - 1)
            out[lvl, n, p] = c
    return out


# three levels (costs 1, 4, 16: a 7,14,28 ladder in units of 49 pixels), four images
CONF = [[0.95, 0.60, 0.80, 0.50],
        [0.70, 0.97, 0.65, 0.55],
        [0.90, 0.99, 0.60, 0.52]]
PRED = [[0, 1, 2, 0],
        [1, 1, 0, 1],
        [2, 1, 1, 2]]
COSTS = [1.0, 4.0, 16.0]


def test_threshold_zero_reads_only_the_first_level():
    out = run_cascade(_probs(CONF, PRED), COSTS, 0.0)
    assert out.stop_level.tolist() == [0, 0, 0, 0]
    assert out.cost.tolist() == [1.0] * 4 and out.prediction.tolist() == PRED[0]


@pytest.mark.parametrize("rule", ["coarse_to_fine", "paper"])
def test_threshold_above_one_reads_every_level(rule):
    out = run_cascade(_probs(CONF, PRED), COSTS, 1.01, rule)
    assert out.stop_level.tolist() == [2, 2, 2, 2]
    assert out.cost.tolist() == [21.0] * 4
    if rule == "coarse_to_fine":
        assert out.prediction.tolist() == PRED[2]
    else:   # the most confident level of all: 0.95 (l0), 0.99 (l2), 0.80 (l0), 0.55 (l1)
        assert out.prediction.tolist() == [0, 1, 2, 1] and out.choice.tolist() == [0, 2, 0, 1]


def test_intermediate_threshold_known_answers():
    probs = _probs(CONF, PRED)
    c2f = run_cascade(probs, COSTS, 0.9, "coarse_to_fine")
    paper = run_cascade(probs, COSTS, 0.9, "paper")
    # image 0 stops at level 0 (0.95); image 1 at level 1 (0.97); images 2 and 3 exhaust the ladder
    assert c2f.stop_level.tolist() == paper.stop_level.tolist() == [0, 1, 2, 2]
    assert c2f.cost.tolist() == paper.cost.tolist() == [1.0, 5.0, 21.0, 21.0]
    assert c2f.mean_cost() == pytest.approx(48 / 4)
    assert c2f.level_fractions(3) == [0.25, 0.25, 0.5]
    # the rules differ only on exhausted images: finest level vs most confident level read
    assert c2f.prediction.tolist() == [0, 1, 1, 2]
    assert paper.prediction.tolist() == [0, 1, 2, 1]
    assert paper.confidence.tolist() == pytest.approx([0.95, 0.97, 0.80, 0.55])
    # a confidence equal to the threshold stops (>=)
    assert run_cascade(probs, COSTS, 0.97).stop_level.tolist()[1] == 1


def test_most_confident_is_the_paper_rule_reading_everything():
    probs = _probs(CONF, PRED)
    pred, choice = most_confident(probs)
    assert pred.tolist() == run_cascade(probs, COSTS, 2.0, "paper").prediction.tolist()
    assert choice.tolist() == [0, 2, 0, 1]


@pytest.mark.parametrize("rule", ["coarse_to_fine", "paper"])
def test_lazy_cascade_equals_dense_and_runs_only_unsure_images(rule):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(4, 500, 10, generator=g), -1)
    probs[1, :7] = probs[0, :7]            # exact confidence ties between levels go to the coarser level
    calls: list[int] = []

    def level(lvl):
        def f(idx):
            calls.append(len(idx))
            return probs[lvl, idx]
        return f

    for t in (0.0, 0.5, 0.8, 0.95, 1.5):
        calls.clear()
        lazy = run_cascade_lazy([level(i) for i in range(4)], [1, 2, 3, 4], 500, t, rule)
        dense = run_cascade(probs, [1, 2, 3, 4], t, rule)
        for field in ("prediction", "stop_level", "choice", "cost"):
            assert torch.equal(getattr(lazy, field), getattr(dense, field)), (t, field)
        assert calls[0] == 500
        # level l runs on exactly the images that stopped at l or later
        for lvl, n in enumerate(calls):
            assert n == int((dense.stop_level >= lvl).sum())


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "x"])
def test_bad_threshold(bad):
    with pytest.raises(LenetlabError, match="threshold"):
        run_cascade(_probs(CONF, PRED), COSTS, bad)


def test_bad_arguments():
    with pytest.raises(LenetlabError, match="rule"):
        run_cascade(_probs(CONF, PRED), COSTS, 0.5, "greedy")
    with pytest.raises(LenetlabError, match="3 cascade levels but 2 costs"):
        run_cascade(_probs(CONF, PRED), [1, 2], 0.5)


@pytest.mark.parametrize("text, msg", [("0,28", "between 1 and 28"), ("14,7,28", "strictly increasing"),
                                       ("7,7,28", "strictly increasing"), ("7,56", "between 1 and 28"),
                                       ("7,a", "comma-separated"), ("", "comma-separated")])
def test_bad_ladders(text, msg):
    with pytest.raises(LenetlabError, match=msg):
        parse_ladder(text)


def test_ladder_and_data_costs():
    assert parse_ladder("7, 14,28") == (7, 14, 28)
    assert data_costs((7, 14, 28)) == [49 / 784, 196 / 784, 1.0]
    assert sum(data_costs((7, 14, 28))) == pytest.approx(1029 / 784)


def test_pixelate():
    g = np.random.default_rng(0)
    img = g.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    keep = img.copy()
    assert torch.equal(pixelate(img, 28), torch.from_numpy(img).float())
    p7 = pixelate(img, 7)
    assert p7.shape == (5, 28, 28) and np.array_equal(img, keep)          # input untouched
    # a 7x7 look sees only the means of the 4x4 blocks: shuffling pixels inside every block changes nothing
    blocks = img.reshape(5, 7, 4, 7, 4).transpose(0, 1, 3, 2, 4).reshape(5, 7, 7, 16)
    shuffled = g.permuted(blocks, axis=-1).reshape(5, 7, 7, 4, 4).transpose(0, 1, 3, 2, 4).reshape(5, 28, 28)
    assert not np.array_equal(shuffled, img)
    assert torch.allclose(pixelate(shuffled, 7), p7, atol=1e-4)
    assert not torch.allclose(pixelate(shuffled, 14), pixelate(img, 14))
    flat = np.full((2, 28, 28), 77, np.uint8)
    assert torch.allclose(pixelate(flat, 7), torch.full((2, 28, 28), 77.0))
    with pytest.raises(LenetlabError):
        pixelate(img, 0)


# ------------------------------------------------------------------ real MNIST
@pytest.fixture(scope="module")
def pca_run(tmp_path_factory):
    """PCA-LR fitted on 4k real MNIST training images (a few seconds), as a run directory."""
    from lenetlab.models.pca_logreg import train_pca_logreg
    from lenetlab.train.presets import resolve

    out = tmp_path_factory.mktemp("cascade") / "pca"
    cfg = resolve("fast", "pca_logreg", overrides={"data": {"train_subset": 4000, "test_subset": 2000}})
    summary = train_pca_logreg(cfg, out=out, pca_samples=2000, max_iter=50)     # converged: 100 adds 0.05 points
    return out, summary


def test_pca_logreg_fit_and_run_dir(pca_run, mnist_test):
    from lenetlab.rundir import load_model, read_summary

    out, summary = pca_run
    assert summary["test_accuracy"] > 0.8                      # PCA-100 + LR on 4k images (~85%)
    assert summary["params"] == 100 * 10 + 10
    assert 0.8 < summary["fit"]["explained_variance"] < 1.0
    model, cfg = load_model(out)
    assert bool(model.pca.fitted) and read_summary(out)["model"] == "pca_logreg"
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(model(x), summary["_model"].eval()(x))
    # whitened scores: unit variance on training-like images
    from lenetlab.data.transforms import to_model_input

    z = model.pca(to_model_input(torch.from_numpy(mnist_test[0][:2000]), cfg.data))
    assert 0.7 < float(z.var(0).mean()) < 1.3


def test_pca_logreg_warns_when_trained_unfitted():
    m = create_model("pca_logreg").train()
    with pytest.warns(UserWarning, match="unfitted"):
        m(torch.zeros(2, 1, 28, 28))


@pytest.mark.parametrize("rule", ["coarse_to_fine", "paper"])
def test_resolution_cascade_on_mnist(pca_run, mnist_test, rule):
    from lenetlab.rundir import load_model

    model, cfg = load_model(pca_run[0])
    x, y = mnist_test[0][:1000], torch.from_numpy(mnist_test[1][:1000].astype(np.int64))
    ladder = (7, 14, 28)
    probs = resolution_probs(model, x, cfg.data, ladder)
    assert probs.shape == (3, 1000, 10)
    first = resolution_cascade(model, x, cfg.data, ladder, 0.0, rule)
    assert first.mean_cost() == pytest.approx(49 / 784)
    every = resolution_cascade(model, x, cfg.data, ladder, 1.01, rule)
    assert every.mean_cost() == pytest.approx((49 + 196 + 784) / 784)
    full_acc = float((probs[2].argmax(1) == y).double().mean())
    if rule == "coarse_to_fine":
        assert every.accuracy(y) == pytest.approx(full_acc)
    mid = resolution_cascade(model, x, cfg.data, ladder, 0.9, rule)
    dense = resolution_cascade(model, x, cfg.data, ladder, 0.9, rule, probs=probs)
    assert torch.equal(mid.prediction, dense.prediction) and torch.equal(mid.cost, dense.cost)
    assert 49 / 784 < mid.mean_cost() < 1029 / 784
    # the coarse look is informative: well above chance, below full resolution
    assert 0.3 < first.accuracy(y) <= full_acc + 0.02


def test_model_cascade_accounting(pca_run, mnist_test):
    from lenetlab.rundir import load_model

    pca_model, cfg = load_model(pca_run[0])
    torch.manual_seed(0)
    members = order_by_cost([make_member(create_model("lenet5").eval(), DataConfig(), "lenet5"),
                             make_member(pca_model, cfg.data, "pca")])
    assert [m.name for m in members] == ["pca", "lenet5"] and [m.macs for m in members] == [79_400, 416_520]
    x = mnist_test[0][:500]
    assert model_cascade(members, x, 0.0).mean_cost() == 79_400
    assert model_cascade(members, x, 1.01).mean_cost() == 79_400 + 416_520
    mid = model_cascade(members, x, 0.9, "paper")
    sent = mid.level_fractions(2)[1]
    assert mid.mean_cost() == pytest.approx(79_400 + sent * 416_520)
    assert model_cascade(members, x, 0.9, costs=[0, 416_520]).mean_cost() == pytest.approx(sent * 416_520)
    probs = member_probs(members, x)
    assert torch.equal(model_cascade(members, x, 0.9, "paper", probs=probs).prediction, mid.prediction)


# ------------------------------------------------------------------ CLI
@pytest.mark.parametrize("args, needle", [
    (["--ladder", "0,28"], "between 1 and 28"),
    (["--ladder", "14,7"], "strictly increasing"),
    (["--threshold", "-1"], "--threshold must be >= 0, got -1"),
    (["--threshold", "nan"], "--threshold must be a finite number >= 0, got nan"),
    ([], "no such run directory"),
])
def test_cli_bad_input(tmp_path, capsys, args, needle):
    from lenetlab.cli import main

    assert main(["cascade", str(tmp_path / "missing"), *args]) == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lenetlab: error: ") and needle in lines[0], lines


def test_cli_two_runs(pca_run, small_run, capsys):
    from lenetlab.cli import main

    r = run_cli("cascade", str(small_run), str(pca_run[0]), "--ladder", "14,28", "--threshold", "0.9",
                "--limit", "500", "--json", check=True)
    res = json.loads(r.stdout)
    rows = {(row["model"], row["method"], row["rule"]): row for row in res["rows"]}
    methods = {m for _, m, _ in rows}
    assert methods == {"full resolution", "resolution 14,28", "model cascade", "most confident model"}
    chain = [k for k in rows if k[1] == "model cascade"]
    assert len(chain) == 2 and chain[0][0].startswith("pca [pca_logreg] -> small [lenet5]")
    for row in res["rows"]:
        assert 0.5 < row["accuracy"] <= 1 and math.isfinite(row["macs_per_image"])
        if row["method"] == "resolution 14,28":
            assert 0.25 <= row["data_used"] <= 1.25
    assert any("label smoothing" in n for n in res["notes"])      # small_run uses the fast preset
    assert main(["cascade", str(pca_run[0]), "--limit", "200"]) == 0
    text = capsys.readouterr().out
    assert "resolution 7,14,28" in text and "coarse_to_fine" in text and "paper" in text


# ------------------------------------------------------------------ experiment
def test_experiment_tiny(tiny):
    """The tiny study (the shared run, with the one-ladder grid of test_experiments' override check; resume is
    checked there)."""
    out, r = tiny("cascade")
    assert [c.name for c in r.claims] == ["data_reduction", "data_reduction_loss", "compute_reduction_paper_accounting",
                                          "compute_reduction_paper_accounting_loss", "compute_reduction_mac_count",
                                          "compute_reduction_mac_count_loss", "most_confident_beats_best",
                                          "other_datasets"]
    assert all(c.supported in (True, False, None) and c.measured for c in r.claims)
    assert r.tables["resolution cascade sweep (test)"] and r.tables["model cascade sweep (test)"]
    for f in r.figures:
        assert (out / f).stat().st_size > 1000
    assert "## Claims" in (out / "report.md").read_text()


# ------------------------------------------------------------------ threshold selection (lenetlab.cascade.selection)
def test_selection_takes_the_cheapest_setting_above_the_floor():
    from lenetlab.cascade import SweepPoint, cheapest_within, select_threshold, sweep_thresholds

    probs, labels = _probs(CONF, PRED), torch.tensor([0, 1, 1, 2])
    points = sweep_thresholds(probs, labels, COSTS, [0.0, 0.9, 1.01], "coarse_to_fine")
    # threshold 0 reads level 0 only (2 of 4 right, cost 1); 0.9 as above (4 of 4, mean cost 12); 1.01 reads
    # every level and takes the last one's prediction (3 of 4, cost 21)
    assert [(p.accuracy, p.cost) for p in points] == [(0.5, 1.0), (1.0, 12.0), (0.75, 21.0)]
    assert cheapest_within(points, 0.4) == points[0]
    assert cheapest_within(points, 0.6) == points[1]       # 0.75 at cost 21 is dearer than 1.0 at 12
    assert cheapest_within(points, 1.0) is None            # strictly above the floor
    assert select_threshold(probs, labels, COSTS, [0.0, 0.9, 1.01], 0.6, "coarse_to_fine").threshold == 0.9
    ties = [SweepPoint(0.5, 0.8, 3.0), SweepPoint(0.6, 0.9, 3.0)]
    assert cheapest_within(ties, 0.0) == ties[1]            # equal cost: the more accurate


def test_selection_rejects_bad_input():
    from lenetlab.cascade import sweep_thresholds

    with pytest.raises(LenetlabError, match="at least one threshold"):
        sweep_thresholds(_probs(CONF, PRED), torch.tensor([0, 1, 1, 2]), COSTS, [])
    with pytest.raises(LenetlabError, match="probs must be"):
        sweep_thresholds(_probs(CONF, PRED), torch.tensor([0, 1]), COSTS, [0.5])
    with pytest.raises(LenetlabError, match="unknown cascade rule"):
        sweep_thresholds(_probs(CONF, PRED), torch.tensor([0, 1, 1, 2]), COSTS, [0.5], "nope")

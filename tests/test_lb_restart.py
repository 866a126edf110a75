"""Lower-bound restart schedule (issue 9, acceptance 1): decisions happen exactly when configured."""

import json
import math

import pytest

from lenetlab.train import fit
from lenetlab.train.lb_restart import LBRestart, lower_bound
from lenetlab.train.presets import resolve


def test_lower_bound_formula():
    assert lower_bound(0.9, 100, 2.0) == pytest.approx(0.9 - 2 * math.sqrt(0.09 / 100))
    assert lower_bound(1.0, 10, 3.0) == 1.0
    with pytest.raises(ValueError):
        lower_bound(0.5, 0, 1.0)


def test_scripted_accuracies():
    ctl = LBRestart(k=1.0, patience=2, lr=1.0, lr_divisor=10.0, min_lr=0.005)
    script = [0.90, 0.95, 0.94, 0.95, 0.96, 0.96, 0.96, 0.97, 0.96, 0.96]
    got = [ctl.after_epoch(p, 10000) for p in script]
    improved = [d.improved for d in got]
    restart = [d.restart for d in got]
    stop = [d.stop for d in got]
    lrs = [d.lr for d in got]
    # 0.95 ties 0.95: not an improvement; two stale epochs (idx 2, 3) -> restart at idx 3
    assert improved == [True, True, False, False, True, False, False, True, False, False]
    assert restart == [False, False, False, True, False, False, True, False, False, False]
    # third plateau: lr 0.01 / 10 = 0.001 < 0.005 -> stop instead of restart
    assert stop == [False] * 9 + [True]
    assert lrs == pytest.approx([1, 1, 1, .1, .1, .1, .01, .01, .01, .001])


def test_patience_one_restarts_on_every_stale_epoch():
    ctl = LBRestart(k=0.0, patience=1, lr=1.0, lr_divisor=2.0, min_lr=0.1)
    d = [ctl.after_epoch(p, 100) for p in (0.5, 0.4, 0.6, 0.6)]
    assert [x.restart for x in d] == [False, True, False, True]
    assert [x.lr for x in d] == [1.0, 0.5, 0.5, 0.25]


def test_trainer_restores_best_and_resets_optimizer(tmp_path):
    """In a real run: restart rows restore the best weights and the final model is the best-LB one. (Four
    improving epochs, then a stale one that restarts: the smallest run with both; fewer images learn too little.)"""
    cfg = resolve("fast", overrides={
        "data": {"train_subset": 1500, "test_subset": 100, "val_size": 300},
        "train": {"schedule": "lb-restart", "epochs": 5, "batch_size": 100, "lr": 0.02,
                  "lb_patience": 1, "lb_lr_divisor": 4.0, "lb_min_lr": 1e-4, "lb_k": 1.0}})
    s = fit(cfg, out=tmp_path / "r", log=None, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    lbs = [r["val_lower_bound"] for r in rows]
    best = -1.0
    for r, lbv in zip(rows, lbs):
        if lbv <= best:          # stale with patience 1 -> restart (or stop) exactly here
            assert r.get("restored_best") and (r.get("restart") or r is rows[-1])
        else:
            assert not r.get("restart")
        best = max(best, lbv)
    assert any(r.get("restart") for r in rows), "scenario should trigger at least one restart"
    # the final weights are those of the best-LB epoch: recompute its validation accuracy
    from lenetlab.data import load_splits
    from lenetlab.rundir import load_model
    from lenetlab.train import evaluate

    model, rcfg = load_model(tmp_path / "r")
    sp = load_splits(rcfg.data)
    acc = evaluate(model, sp.val_x, sp.val_y)["accuracy"]
    assert lower_bound(acc, len(sp.val_x), 1.0) == pytest.approx(max(lbs))
    assert s["epochs"] == len(rows)


def test_lb_needs_validation_set():
    from lenetlab.errors import LenetlabError

    cfg = resolve("fast", overrides={"data": {"val_size": 0, "train_subset": 100},
                                     "train": {"schedule": "lb-restart"}})
    with pytest.raises(LenetlabError, match="needs a validation set"):
        fit(cfg, log=None)

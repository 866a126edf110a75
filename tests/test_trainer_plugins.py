"""Trainer plugins (lenetlab.train.plugins): kill-and-resume is bit-identical for each, the optimiser has one owner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lenetlab.config import RunConfig, from_dict
from lenetlab.registry import names
from lenetlab.train import fit
from lenetlab.train.checkpoint import CHECKPOINT
from lenetlab.train.presets import resolve

# Two steps an epoch: the kill/resume tests only need a kill point between epochs, not a good model
# (128 images: pca_logreg's PCA needs more images than its 100 components).
DATA = {"train_subset": 128, "test_subset": 64, "val_size": 64}


class Killed(Exception):
    pass


def _kill_after(epoch: int):
    def log(line: str) -> None:
        if line.startswith(f"epoch {epoch:>2}/"):
            raise Killed   # after the epoch's checkpoint and metrics line were written, like a kill
    return log


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _config(train: dict, model: str = "lenet5") -> RunConfig:
    return resolve("fast", model, overrides={"data": DATA, "train": {"epochs": 2, "batch_size": 64, **train}})


def _resume_matches(tmp_path: Path, train: dict, kill_after: int = 1, model: str = "lenet5",
                    full: dict | None = None) -> tuple[Path, Path]:
    """Train ``_config(train, model)`` uninterrupted into tmp_path/full (or take ``full``, the summary of that
    run already there), and killed after epoch ``kill_after`` then resumed into tmp_path/cut: the same bits."""
    cfg = _config(train, model)
    full_dir, cut = tmp_path / "full", tmp_path / "cut"
    a = full or fit(cfg, out=full_dir, log=None, progress=False)
    with pytest.raises(Killed):
        fit(cfg, out=cut, log=_kill_after(kill_after), progress=False)
    b = fit(cfg, out=cut, resume=True, log=None, progress=False)
    wa, wb = _weights(full_dir), _weights(cut)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert a["test_accuracy"] == b["test_accuracy"] and b["resumed_from_epoch"] == kill_after
    rows = [[json.loads(x)[k] for k in ("epoch", "train_loss")] for x in (full_dir / "metrics.jsonl").open()]
    assert rows == [[json.loads(x)[k] for k in ("epoch", "train_loss")] for x in (cut / "metrics.jsonl").open()]
    return full_dir, cut


PLUGIN_RUNS = {
    "hardening": {"qat_bits": 4, "train_noise": 0.1, "train_noise_ramp": 0.5},
    "rule": {"rule": {"name": "dfa"}},
    "zo": {"zo": {"method": "elasticzo", "layers": 4}},
    "zo-int8": {"zo": {"method": "elasticzo-int8", "layers": 4}},
    "lbfgs": {"lbfgs": {"enabled": True, "max_iter": 5}, "label_smoothing": 0.0},
}


@pytest.mark.parametrize("plugin", sorted(PLUGIN_RUNS))
def test_kill_and_resume_is_bit_identical(plugin, tmp_path):
    model = "pca_logreg" if plugin == "lbfgs" else "lenet5"
    full, cut = _resume_matches(tmp_path, PLUGIN_RUNS[plugin], model=model)
    if plugin == "zo-int8":
        a, b = load_file(str(full / "model_int8.safetensors")), load_file(str(cut / "model_int8.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_lb_restart_kill_and_resume_across_a_restart_is_bit_identical(tmp_path):
    """Killed right after the first restart: best weights, LB controller and the fresh optimiser come back.
    The uninterrupted run comes first and shows where the first restart is."""
    train = {"schedule": "lb-restart", "epochs": 6, "lr": 0.02,
             "lb": {"patience": 1, "lr_divisor": 4.0, "min_lr": 1e-4, "k": 1.0}}
    probe = fit(_config(train), out=tmp_path / "full", log=None, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").open()]
    restarts = [r["epoch"] for r in rows if r.get("restart")]
    assert restarts and restarts[0] < probe["epochs"], "this scenario should restart before its last epoch"
    ck = load_file(str(tmp_path / "full" / CHECKPOINT))
    assert any(k.startswith("plugin.lb-restart.best.") for k in ck)
    _resume_matches(tmp_path, train, kill_after=restarts[0], full=probe)


def test_every_registered_plugin_has_a_resume_test():
    assert set(names("trainer_plugin")) == {"hardening", "rule", "zo", "lb-restart", "lbfgs"}


def test_restart_gives_the_elasticzo_stepper_the_new_optimiser(tmp_path):
    """Regression (issue 19): after an LB restart fit re-created the optimiser but the ElasticZO stepper kept
    stepping the old one, so the checkpointed optimiser never moved.

    A ZO lr of 0 and a BP lr of 1e-30 (below float32 resolution of the weights) keep the weights fixed, so the
    validation accuracy never improves after epoch 1 and, with patience 2, the restart happens at the end of
    epoch 3 whatever the data; epoch 4 must then step the new optimiser: its step count is one epoch's steps.
    (Flat config keys, so the same test runs on the code from before the plugins.)
    """
    cfg = resolve("fast", overrides={"data": DATA, "train": {
        "epochs": 4, "batch_size": 64, "lr": 1e-30, "schedule": "lb-restart", "method": "elasticzo",
        "zo_layers": 4, "zo_lr": 0.0, "lb_patience": 2, "lb_min_lr": 0.0}})
    fit(cfg, out=tmp_path / "r", log=None, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").open()]
    assert [bool(r.get("restart")) for r in rows] == [False, False, True, False]
    ck = load_file(str(tmp_path / "r" / CHECKPOINT))
    steps = {k: int(v) for k, v in ck.items() if k.startswith("optim.") and k.endswith(".step")}
    assert steps and set(steps.values()) == {DATA["train_subset"] // 64}, steps


def test_trainer_names_no_paper():
    src = (Path(__file__).parents[1] / "src/lenetlab/train/trainer.py").read_text()
    code = re.sub(r'""".*?"""', "", src, flags=re.S)
    for word in ("lb", "zo", "qat", "noise", "harden", "rule", "restart", "int8", "stepper.finish"):
        assert not re.search(rf"\b{word}", code, re.I), word


def test_old_flat_train_keys_load_into_sections():
    """config.json files of older runs keep loading: the flat keys map onto the plugin sections."""
    old = {"train": {"qat_bits": 4, "act_scale": 0.5, "train_noise": 0.1, "train_noise_ramp": 0.2,
                     "noise_relative": True, "noise_sites": "conv", "method": "elasticzo", "zo_layers": 3,
                     "zo_eps": 0.01, "zo_q": 2, "zo_lr": 1e-3, "zo_clip": None, "rule": "fa", "lb_k": 1.5,
                     "lb_patience": 4, "lb_lr_divisor": 2.0, "lb_min_lr": 1e-6}}
    t = from_dict(RunConfig, old).train
    assert (t.hardening.qat_bits, t.hardening.act_scale, t.hardening.sigma, t.hardening.ramp,
            t.hardening.relative, t.hardening.sites) == (4, 0.5, 0.1, 0.2, True, "conv")
    assert (t.zo.method, t.zo.layers, t.zo.eps, t.zo.q, t.zo.lr, t.zo.clip) == ("elasticzo", 3, 0.01, 2, 1e-3, None)
    assert t.rule.name == "fa"
    assert (t.lb.k, t.lb.patience, t.lb.lr_divisor, t.lb.min_lr) == (1.5, 4, 2.0, 1e-6)


def test_old_flat_key_and_new_section_layers_resolve_in_order():
    """A flag in the new form overrides a file in the old form (each layer is upgraded before merging)."""
    cfg = resolve("fast", file_data={"train": {"qat_bits": 4, "method": "zo"}},
                  overrides={"train": {"hardening": {"qat_bits": 8}}})
    assert cfg.train.hardening.qat_bits == 8 and cfg.train.zo.method == "zo"


def test_cli_plugin_flags_are_generated_and_old_flags_still_work():
    from lenetlab.cli import _train_overrides, build_parser

    p = build_parser()
    a = p.parse_args(["train", "--out", "x", "--method", "elasticzo", "--zo-layers", "3", "--eps", "0.01",
                      "--q", "2", "--zo-lr", "0.001", "--zo-clip", "none", "--rule", "bp", "--qat-bits", "4",
                      "--train-noise", "0.1", "--hardening-ramp", "0.5", "--lb-patience", "5"])
    cfg = resolve("fast", overrides=_train_overrides(a))
    t = cfg.train
    assert (t.zo.method, t.zo.layers, t.zo.eps, t.zo.q, t.zo.lr, t.zo.clip) == ("elasticzo", 3, 0.01, 2, 1e-3, None)
    assert (t.hardening.qat_bits, t.hardening.sigma, t.hardening.ramp, t.lb.patience) == (4, 0.1, 0.5, 5)
    # not given: the section defaults stay
    b = p.parse_args(["train", "--out", "x"])
    assert resolve("fast", overrides=_train_overrides(b)).train.zo.clip == 0.3


def test_bad_plugin_flag_value_is_one_clean_error(tmp_path, capsys):
    from lenetlab.cli import main

    assert main(["train", "--out", str(tmp_path / "o"), "--zo-q", "two"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zo.q" in err[0]

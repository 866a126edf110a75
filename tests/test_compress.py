"""Tensor-network compression (lenetlab.compress): TT-SVD, TT/MPO layers, ADTN, the CLI and `reproduce tn`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_logits_match, run_cli
from lenetlab.compress.adtn import ADTNWeight, adtn_params, brick_wall, fit_weight, qubits
from lenetlab.compress.base import compress_model, parse_layers
from lenetlab.compress.tt import (
    TTConv2d,
    TTMatrix,
    clip_ranks,
    conv_modes,
    factorize,
    linear_modes,
    matrix_to_tt,
    tt_from_weight,
    tt_matrix_params,
    tt_matrix_to_full,
    tt_params,
    tt_svd,
    tt_to_full,
)
from lenetlab.errors import LenetlabError
from lenetlab.models import create_model, param_count


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def trained(small_run):
    from lenetlab.rundir import load_model

    return load_model(small_run)[0]


# ------------------------------------------------------------------ TT-SVD
def test_factorize():
    assert factorize(400, 3) == (5, 8, 10)
    assert factorize(400, 4) == (4, 4, 5, 5)
    assert factorize(120, 3) == (4, 5, 6)
    assert factorize(84, 3) == (3, 4, 7)
    assert factorize(7, 3) == (1, 1, 7)
    for n, d in [(400, 3), (84, 2), (10, 4), (1, 3)]:
        assert math.prod(factorize(n, d)) == n and len(factorize(n, d)) == d


def test_tt_svd_full_rank_is_exact():
    torch.manual_seed(0)
    t = torch.randn(4, 6, 5, 3, dtype=torch.float64)
    cores = tt_svd(t)
    assert [g.shape[-1] for g in cores] == [4, 15, 3, 1]      # the bond caps min(prod left, prod right)
    assert _rel(tt_to_full(cores), t) <= 1e-12
    w = torch.randn(120, 400)                                # float32: exact to float32 precision
    rows, cols = linear_modes(120, 400, 3)
    assert _rel(tt_matrix_to_full(matrix_to_tt(w, rows, cols)), w) <= 1e-5


def test_tt_error_non_increasing_in_rank(trained):
    w = trained.fc1.weight.detach()
    rows, cols = linear_modes(120, 400, 3)
    ranks = (1, 2, 3, 4, 6, 8, 12, 16, 20, 30, 40, 60)     # a spread of ranks, not all 60 (one TT-SVD each)
    errs = [_rel(tt_matrix_to_full(matrix_to_tt(w, rows, cols, max_rank=r)), w) for r in ranks]
    assert all(b <= a + 1e-6 for a, b in zip(errs, errs[1:])), errs
    assert errs[0] > 0.9 and errs[-1] <= 1e-5         # rank 60 = both bond caps (20, 60): exact
    assert errs[ranks.index(8)] < errs[ranks.index(4)] < errs[0]


def test_tt_tolerance_bound(trained):
    w = trained.fc2.weight.detach()
    rows, cols = linear_modes(84, 120, 3)
    for tol in (0.05, 0.3, 0.6):
        cores = matrix_to_tt(w, rows, cols, tol=tol)
        assert _rel(tt_matrix_to_full(cores), w) <= tol
    loose = matrix_to_tt(w, rows, cols, tol=0.6)
    tight = matrix_to_tt(w, rows, cols, tol=0.05)
    assert sum(g.numel() for g in loose) < sum(g.numel() for g in tight)
    with pytest.raises(LenetlabError, match="tolerance"):
        tt_svd(w, tol=1.5)
    with pytest.raises(LenetlabError, match="rank must be >= 1"):
        tt_svd(w, max_rank=0)


def test_tt_param_counts_match_formulas():
    # fc1 (120 x 400) as 3 cores (4,5,6) x (5,8,10) at rank 8: 1*20*8 + 8*40*8 + 8*60*1
    rows, cols = linear_modes(120, 400, 3)
    ranks = clip_ranks(tuple(m * n for m, n in zip(rows, cols)), 8)
    assert ranks == [1, 8, 8, 1]
    assert tt_matrix_params(rows, cols, ranks) == 160 + 2560 + 480 == 3200
    tt = TTMatrix(rows, cols, ranks)
    assert sum(p.numel() for p in tt.parameters()) == 3200 == tt.tn_params()
    assert tt_params((4, 6, 5), [1, 2, 3, 1]) == 8 + 36 + 15
    # the registered model at defaults: c5, f6 at rank 8 plus their biases; everything else dense
    m = create_model("lenet5_tt")
    f6 = tt_matrix_params((3, 4, 7), (4, 5, 6), [1, 8, 8, 1])
    assert f6 == 12 * 8 + 8 * 20 * 8 + 8 * 42 == 1712
    assert m.compression()["layer_params"] == 3200 + 1712 + 120 + 84
    assert param_count(m) == 61_706 - (48_120 + 10_164) + 3200 + 1712 + 204


def test_tt_conv_full_rank_matches_dense_conv(trained):
    conv = trained.conv2
    rows, cols = conv_modes(16, 6, 5, 3)
    assert rows == (4, 4, 1) and cols == (2, 3, 25)
    w2d = conv.weight.detach().reshape(16, -1)
    layer = TTConv2d(tt_from_weight(w2d, rows, cols, max_rank=10**6), conv.bias, 6, 5, 0)
    x = torch.randn(3, 6, 14, 14)
    assert torch.allclose(layer(x), conv(x), atol=1e-5)
    lo = TTConv2d(tt_from_weight(w2d, rows, cols, max_rank=2), conv.bias, 6, 5, 0)
    assert lo.tn_params() == 1 * 8 * 2 + 2 * 12 * 2 + 2 * 25 < 2400


# ------------------------------------------------------------------ ADTN
def test_adtn_param_count_and_shapes():
    assert qubits((120, 400)) == [7, 9] and qubits((16, 6, 5, 5)) == [4, 3, 3, 3]
    assert brick_wall(5) == [0, 2, 1, 3] and len(brick_wall(16)) == 15
    for shape, depth in [((120, 400), 4), ((84, 120), 2), ((6, 1, 5, 5), 3), ((10, 84), 1)]:
        gen = ADTNWeight(shape, depth, seed=0)
        q = sum(qubits(shape))
        assert gen.tn_params() == adtn_params(shape, depth) == 16 * (q - 1) * depth
        assert sum(p.numel() for p in gen.parameters()) == gen.tn_params()
        w = gen()
        assert w.shape == shape and torch.isfinite(w).all()
    assert adtn_params((120, 400), 4) == 960               # 48,000 weights from 960 numbers
    with pytest.raises(LenetlabError, match="depth"):
        ADTNWeight((4, 4), 0)


def test_adtn_is_a_brick_wall_circuit_on_zero_state():
    """Oracle: identity activation = a product of dense 2^Q x 2^Q operators applied to |0...0>."""
    gen = ADTNWeight((3, 5), depth=2, activation="identity", seed=1)   # padded to 4 x 8: Q = 5
    q = gen.q
    psi = np.zeros(2**q)
    psi[0] = 1.0
    g = gen.gates.detach().double().numpy()
    for layer in range(2):
        for k, i in enumerate(brick_wall(q)):
            op = np.kron(np.kron(np.eye(2**i), g[layer, k]), np.eye(2 ** (q - i - 2)))
            psi = op @ psi
    want = psi.reshape(4, 8)[:3, :5]
    assert np.allclose(gen().detach().double().numpy(), want, atol=1e-5)


def test_adtn_gradient_reaches_every_gate():
    torch.manual_seed(0)
    gen = ADTNWeight((120, 400), depth=3, seed=0)
    (gen() * torch.randn(120, 400)).sum().backward()
    g = gen.gates.grad
    assert torch.isfinite(g).all()
    per_gate = g.abs().sum(dim=(-1, -2))
    assert (per_gate > 0).all(), per_gate
    # and through a whole compressed model, from the classification loss
    m = create_model("lenet5_adtn", depth=2, layers="c3,c5,f6")
    nn.functional.cross_entropy(m(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    for name in ("conv2", "fc1", "fc2"):
        assert (getattr(m, name).gen.gates.grad.abs().sum(dim=(-1, -2)) > 0).all(), name


def test_adtn_fit_reduces_error(trained):
    w = trained.conv1.weight.detach()
    gen = ADTNWeight(tuple(w.shape), depth=3, seed=0)
    with torch.no_grad():
        before = _rel(gen(), w)
    after = fit_weight(gen, w, steps=60)
    assert after < 0.6 < before
    assert abs(after - _rel(gen().detach(), w)) < 1e-5


# ------------------------------------------------------------------ models, CLI, export
def test_parse_layers():
    assert parse_layers("c5,f6") == ["fc1", "fc2"]
    assert parse_layers("fc2, c1,c5") == ["conv1", "fc1", "fc2"]
    with pytest.raises(LenetlabError, match="unknown layer 'c9'"):
        parse_layers("c9")
    with pytest.raises(LenetlabError, match="no layers"):
        parse_layers(" , ")


def test_compress_model_keeps_the_rest_and_materializes(trained):
    small = compress_model(trained, "tt", "c5", rank=10**3)      # full rank: the same network
    x = torch.randn(5, 1, 28, 28)
    trained.eval()
    small.eval()
    assert torch.allclose(small(x), trained(x), atol=1e-4)
    assert torch.equal(small.conv2.weight, trained.conv2.weight)
    dense = small.materialize()
    assert type(dense).__name__ == "LeNet5" and torch.allclose(dense(x), small(x), atol=1e-6)
    with pytest.raises(LenetlabError, match="unknown compressor 'svd'"):
        compress_model(trained, "svd", "c5")
    with pytest.raises(LenetlabError, match="only the plain lenet5"):
        compress_model(small, "tt", "c5")


def test_cli_compress_eval_export(small_run, tmp_path, mnist_test):
    out = tmp_path / "tt"
    r = run_cli("compress", str(small_run), "--method", "tt", "--layers", "c5,f6", "--rank", "4", "--epochs", "1",
                "--train-subset", "2000", "--out", str(out), check=True)
    assert "lenet5_tt" in r.stdout and "34.3x" in r.stdout    # 58,284 -> 1,700 params
    s = json.loads((out / "summary.json").read_text())
    c = s["compression"]
    assert c["layer_params"] == 960 + 536 + 204 and c["dense_layer_params"] == 58_284 and s["params"] == param_count(
        create_model("lenet5_tt", rank=4))
    assert s["model"] == "lenet5_tt" and s["epochs"] == 1 and 0.5 < s["test_accuracy"] <= 1
    ev = run_cli("eval", str(out), "--limit", "500", check=True)      # the summary used the run's 2k
    from lenetlab.data.transforms import to_model_input
    from lenetlab.rundir import load_model

    model, cfg = load_model(out)
    tx, ty = mnist_test[0][:500], mnist_test[1][:500]
    with torch.no_grad():
        acc = float((model(to_model_input(torch.from_numpy(tx), cfg.data)).argmax(1).numpy() == ty).mean())
    assert f"lenet5_tt on mnist test (500 images): accuracy {100 * acc:.2f}%" in ev.stdout
    ex = run_cli("export", str(out), "--out", str(tmp_path / "exp"), "--check-images", "500", check=True)
    assert f"PyTorch {100 * acc:.2f}%, same top-1 on 500/500" in ex.stdout, ex.stdout

    # the flat runtime against PyTorch logits
    from lenetlab.deploy import flat
    from lenetlab.deploy.runtime import run

    fm = flat.decode((tmp_path / "exp" / "model.flat").read_bytes())
    x = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    with torch.no_grad():
        ref = model(to_model_input(torch.from_numpy(x), cfg.data)).numpy()
    assert_logits_match(run(fm, x), ref, "flat runtime vs PyTorch")


def test_cli_compress_adtn_no_finetune(small_run, tmp_path, capsys):
    out = tmp_path / "adtn"
    run_cli("compress", str(small_run), "--method", "adtn", "--layers", "c1", "--depth", "2", "--fit-steps", "30",
            "--epochs", "0", "--out", str(out), check=True)
    s = json.loads((out / "summary.json").read_text())
    assert s["epochs"] == 0 and s["compression"]["layer_params"] == 16 * 8 * 2 + 6
    from lenetlab.rundir import load_model

    model, cfg = load_model(out)
    assert cfg.model.name == "lenet5_adtn" and cfg.model.options["depth"] == 2
    # refuses to overwrite, bad input is one clean line (in this process: main() is what the command runs)
    from lenetlab.cli import main

    capsys.readouterr()
    assert main(["compress", str(small_run), "--method", "adtn", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    for args, msg in [(["--layers", "c9"], "unknown layer 'c9'"), (["--rank", "0"], "rank"),
                      (["--tol", "0.5", "--method", "adtn"], "--tol applies to --method tt only")]:
        argv = ["compress", str(small_run), "--out", str(tmp_path / "x"), *args]
        if "--method" not in args:
            argv += ["--method", "tt"]
        try:
            code = main(argv)
        except SystemExit as e:      # argparse's own usage errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and msg in err, (args, err)
    assert not (tmp_path / "x").exists()


def test_reproduce_tn_tiny(tiny):
    tmp_path, r = tiny("tn")              # ADTN depth 1 only (the contract's override); resume: test_experiments
    assert r.mode == "tiny"
    table = next(iter(r.tables.values()))
    methods = {row["method"] for row in table}
    assert {"dense", "tt", "adtn"} <= methods
    assert {c.name for c in r.claims} == {"adtn_vs_tt", "accuracy_at_10x", "vgg16_cifar10"}
    assert (tmp_path / "report.md").exists() and (tmp_path / "accuracy_vs_params.png").exists()


def test_adtn_weight_is_reused_without_grad_and_follows_its_gates():
    """Without autograd the generated weight is reused (one contraction per evaluation, not per batch); an
    optimiser-style in-place change of the gates, or a load, makes the next call generate it again."""
    from lenetlab.compress.adtn import ADTNWeight

    gen = ADTNWeight((6, 10), depth=2, seed=0)
    with torch.no_grad():
        first = gen()
        assert gen() is first                                       # reused
        assert torch.equal(first, gen._generate())                  # and the same values
        gen.gates.add_(0.01)                                        # as an optimiser step does
        second = gen()
        assert second is not first and torch.equal(second, gen._generate())
        gen.load_state_dict({"gates": torch.zeros_like(gen.gates)})
        assert torch.equal(gen(), torch.zeros(6, 10))
    w = gen()                                                       # with autograd: generated, with a graph
    assert w.requires_grad and w is not gen._cached[1]

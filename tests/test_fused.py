"""Fused-layer simulator (USEFUSE): the unfused model is the oracle, counting is checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_cli
from lenetlab.config import DataConfig
from lenetlab.data.transforms import to_model_input
from lenetlab.deploy import flat
from lenetlab.deploy.export import build_flat
from lenetlab.deploy.graph import to_flat
from lenetlab.deploy.quantize import quantize
from lenetlab.errors import LenetlabError
from lenetlab.fused import end as end_mod
from lenetlab.fused.counting import count_fused, count_layer_by_layer
from lenetlab.fused.end import digits_needed, end_analysis, remaining_bound, truncate
from lenetlab.fused.schedule import POLICIES, Schedule, axis_plan, plan, pyramid, tile_ranges
from lenetlab.fused.simulate import group_io, run_schedule
from lenetlab.fused.stages import select, stages
from lenetlab.fused.table import parse_tiles, schedule_rows
from lenetlab.models import create_model
from lenetlab.rundir import load_model

GROUP = "conv1,pool1,conv2,pool2"
N_IMAGES = 48       # int8 schedules are compared bit for bit: every tile of every image is one more check
CALIBRATION = 256   # training images that calibrate the trained models' int8 scales (export: 2,000)


# ---------------------------------------------------------------- fixtures
def _untrained(name: str, int8: bool, calib: np.ndarray) -> flat.FlatModel:
    """Counting does not depend on weight values: an untrained model, calibrated on a few real images."""
    torch.manual_seed(0)
    data = DataConfig(normalize="lecun", pad=2) if name == "lenet5_classic" else DataConfig()
    fm = flat.decode(flat.encode(to_flat(create_model(name).eval(), data)))
    return quantize(fm, calib) if int8 else fm


@pytest.fixture(scope="module")
def untrained(mnist_test):
    calib = mnist_test[0][:64]
    return {(m, dt): _untrained(m, dt == "int8", calib) for m in ("lenet5", "lenet5_classic")
            for dt in ("int8", "float32")}


@pytest.fixture(scope="module")
def trained(deploy_runs):
    """(model, cfg, {dtype: flat model}) of the trained lenet5 and lenet5_classic runs: float32 as the exporters
    build it (:func:`build_flat`), int8 the same way on fewer calibration images (any calibration gives a model
    the fused schedules must reproduce exactly; `lenetlab fused` in test_cli_table_and_errors runs build_flat's)."""
    from lenetlab.data.datasets import load_raw

    out = {}
    for name, run in deploy_runs.items():
        model, cfg = load_model(run)
        model.eval()
        fm32 = build_flat(model, cfg, False)
        calib = np.ascontiguousarray(load_raw(cfg.data.dataset, cfg.data.data_dir)[0][:CALIBRATION])
        out[name] = (model, cfg, {"float32": fm32, "int8": flat.decode(flat.encode(quantize(fm32, calib)))})
    return out


# ---------------------------------------------------------------- tiling and hand-computed counts
def test_stride_policies_on_a_5x5_map():
    assert tile_ranges(5, 1, "uniform") == tile_ranges(5, 1, "ragged") == [(i, i + 1) for i in range(5)]
    assert tile_ranges(5, 2, "ragged") == [(0, 2), (2, 4), (4, 5)]      # the edge tile is cut
    assert tile_ranges(5, 2, "uniform") == [(0, 2), (2, 4), (3, 5)]     # the edge tile shifts back, same shape
    assert tile_ranges(5, 3, "uniform") == [(0, 3), (2, 5)]
    assert tile_ranges(5, 4, "uniform") == [(0, 4), (1, 5)]
    assert tile_ranges(5, 4, "ragged") == [(0, 4), (4, 5)]
    assert tile_ranges(5, 5, "uniform") == tile_ranges(5, 5, "ragged") == [(0, 5)]
    for t in range(1, 6):   # uniform: every tile full size; both cover the map
        assert all(b - a == t for a, b in tile_ranges(5, t, "uniform"))
        for p in POLICIES:
            covered = set().union(*(range(a, b) for a, b in tile_ranges(5, t, p)))
            assert covered == set(range(5))


def test_tile1_pyramid_and_counts_by_hand(untrained):
    fm8 = untrained[("lenet5", "int8")]
    group = tuple(select(fm8, GROUP))
    assert pyramid(group, 1) == [16, 12, 6, 2, 1]       # T_(l-1) = (T_l - 1) s + k
    assert pyramid(group, 5) == [32, 28, 14, 10, 5]
    # the corner pyramid reads padded rows -2..13: 14 real rows are fetched, 2 are conv1's zero padding
    corner = axis_plan(group, (0, 1), 1)
    assert corner.need[0] == (-2, 14) and corner.held == ((0, 14), (0, 12), (0, 6), (0, 2), (0, 1))
    c = count_fused(Schedule(group, 1, "uniform"), fm8)
    assert c.tiles == 25
    # conv1 computes a 12x12 tile per pyramid: 25 * 144 = 3600 outputs for a 28x28 map
    assert c.recompute == pytest.approx({"conv1": 3600 / 784, "conv2": 1.0})
    assert c.useful_macs == 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 == 357600
    assert c.macs == 3600 * 6 * 25 + 100 * 16 * 150 == 780000
    # fetched rows per tile row: 14, 16, 16, 16, 14 -> 76, same for columns; int8 activations are 1 byte
    assert c.in_bytes == 76 * 76
    assert c.out_bytes == 25 * 16
    conv1_p = 150 + 6 * 4 * 3            # int8 w, int32 b, m, s
    conv2_p = 2400 + 16 * 4 * 3
    assert c.weight_bytes == conv1_p + 256 + conv2_p + 256 == 3326   # + the two ReLU look-up tables
    assert c.mid_bytes == 0
    assert c.buffer_bytes == 16 * 16 + 12 * 12 * 6 + 6 * 6 * 6 + 2 * 2 * 16 + 16 + 3326
    lbl = count_layer_by_layer(group, fm8)
    assert lbl.mid_bytes == 2 * (6 * 28 * 28 + 6 * 14 * 14 + 16 * 10 * 10)   # written, then read back
    assert lbl.offchip_bytes == 784 + 3326 + lbl.mid_bytes + 400 == 19470
    assert lbl.macs == 357600
    assert c.oi / lbl.oi == pytest.approx((780000 / (5776 + 3326 + 400)) / (357600 / 19470))
    # float32: 4 bytes per value and parameter
    fm32 = untrained[("lenet5", "float32")]
    f32 = count_fused(Schedule(tuple(select(fm32, GROUP)), 1), fm32)
    assert (f32.in_bytes, f32.weight_bytes, f32.out_bytes) == (4 * 5776, 4 * (156 + 2416), 4 * 400)


def test_uniform_stride_recomputes_the_overlap(untrained):
    fm8 = untrained[("lenet5", "int8")]
    group = tuple(select(fm8, GROUP))
    u, r = (count_fused(Schedule(group, 2, p), fm8) for p in ("uniform", "ragged"))
    assert u.tiles == r.tiles == 9
    # conv2 rows made: uniform (0,4),(4,8),(6,10) = 12 of 10; ragged (0,4),(4,8),(8,10) = 10
    assert u.recompute["conv2"] == pytest.approx(144 / 100) and r.recompute["conv2"] == 1.0
    assert u.out_bytes == 9 * 4 * 16 and r.out_bytes == 400
    assert u.buffer_bytes == r.buffer_bytes        # the largest pyramid is the same
    assert u.macs > r.macs


def test_classic_counts_follow_the_c3_table(untrained):
    fm = untrained[("lenet5_classic", "float32")]
    assert [s.name for s in stages(fm)] == ["conv1", "pool1", "conv2", "pool2", "conv3"]
    lbl = count_layer_by_layer(select(fm, GROUP), fm)
    # C1 150 per position, S2 one multiply per output, C3 60 connected 5x5 kernels, S4 one multiply
    assert lbl.useful_macs == 784 * 150 + 6 * 196 + 100 * 60 * 25 + 16 * 25 == 269176
    assert lbl.in_bytes == 32 * 32 * 4                       # classic's input is the padded 32x32 map


# ---------------------------------------------------------------- exactness against the unfused model
@pytest.mark.parametrize("name", ["lenet5", "lenet5_classic"])
@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_every_schedule_matches_the_unfused_model(name, dtype, trained, mnist_test):
    model, cfg, fms = trained[name]
    fm = fms[dtype]
    images = mnist_test[0][:N_IMAGES]
    group = tuple(select(fm, GROUP))
    x_in, ref = group_io(fm, group, images)
    assert ref.shape == (N_IMAGES, 16, 5, 5)
    for t in range(1, 6):
        for p in POLICIES:
            y = run_schedule(fm, Schedule(group, t, p), x_in, batch_size=64)
            if dtype == "int8":
                assert y.dtype == np.int64 and np.array_equal(y, ref), (t, p)
            else:
                assert np.abs(y - ref).max() <= 1e-5, (t, p, np.abs(y - ref).max())
    if dtype == "float32":   # and the PyTorch model's own feature maps
        with torch.no_grad():
            x = to_model_input(torch.from_numpy(images), cfg.data)
            if name == "lenet5":
                feats = model.features(x).numpy()
            else:
                f = model.squash
                feats = f(model.s4(f(model.c3(f(model.s2(f(model.c1(x)))))))).flatten(1).numpy()
        y = run_schedule(fm, Schedule(group, 2, "uniform"), x_in)
        assert np.abs(y.reshape(N_IMAGES, -1) - feats).max() <= 1e-5


@pytest.mark.parametrize("layers", ["conv1", "conv2,pool2", "pool1,conv2", "pool2,conv3"])
def test_partial_groups_are_exact_in_int8(layers, trained, mnist_test):
    fm = trained["lenet5_classic"][2]["int8"]
    group = tuple(select(fm, layers))
    x_in, ref = group_io(fm, group, mnist_test[0][:50])
    side = min(group[-1].out_shape[1:])
    for t in sorted({1, min(3, side), side}):
        for p in POLICIES:
            assert np.array_equal(run_schedule(fm, Schedule(group, t, p), x_in), ref), (layers, t, p)


def test_schedule_rows_check_every_row(trained, mnist_test):
    fm = trained["lenet5"][2]["int8"]
    rows = schedule_rows(fm, GROUP, [1, 5], POLICIES, mnist_test[0][:40])
    assert [r["schedule"] for r in rows] == ["layer-by-layer", "T=1 uniform", "T=1 ragged", "T=5 uniform",
                                             "T=5 ragged"]
    assert all(r["exact"] and r["max_abs_diff"] == 0 for r in rows)
    assert rows[0]["OI_gain"] == 1.0 and rows[0]["mid_B"] > 0
    assert all(r["mid_B"] == 0 and r["OI_gain"] > 1 for r in rows[1:])


# ---------------------------------------------------------------- END
def test_msdf_digits_by_hand():
    # two's complement digits: truncation floors, also for negative inputs
    assert truncate(np.array([5, 100, -3]), 3).tolist() == [0, 96, -32]
    assert truncate(np.array([-3]), 7).tolist() == [-4] and truncate(np.array([-3]), 8).tolist() == [-3]
    assert remaining_bound(0) == 255 and remaining_bound(5) == 7 and remaining_bound(8) == 0
    w, b = np.array([3, -2]), -40

    def needed(x):
        partials = [np.array(b + (w * truncate(np.array(x), c)).sum()) for c in range(9)]
        bounds = [np.array(remaining_bound(c) * np.abs(w).sum()) for c in range(9)]
        return int(digits_needed(partials, bounds))

    # acc = -40 + 15 - 200 = -225. After 2 cycles: P = -40 - 2*64 = -168, R = 63*5 = 315, not certain;
    # after 3: P = -40 - 2*96 = -232, R = 31*5 = 155, P + R = -77 < 0 -> stop, skipping 5 of 8 digits
    assert needed([5, 100]) == 3
    assert needed([100, 5]) == 8           # acc = +250: never stopped
    w, b = np.array([1, -1]), 0
    assert needed([3, 4]) == 8             # acc = -1: certain only with the last digit, nothing saved


def test_end_changes_no_output_on_the_trained_relu_model(trained, mnist_test):
    fm = trained["lenet5"][2]["int8"]
    images = mnist_test[0][:N_IMAGES]
    res = end_analysis(fm, select(fm, GROUP), images)
    assert [r.layer for r in res] == ["conv1", "conv2"]
    for r in res:
        assert r.applies and r.changed == 0
        assert r.outputs == N_IMAGES * (6 * 28 * 28 if r.layer == "conv1" else 16 * 10 * 10)
        assert 0 < r.terminated <= r.negative < 1 and 0 < r.skipped < r.terminated
        assert sum(r.digits_histogram) == round(r.terminated * r.outputs)
        assert r.mean_digits < 8
    assert res[0].checked_at.startswith("conv1") and "relu" in res[0].checked_at


def test_end_verification_catches_an_unsound_bound(trained, mnist_test, monkeypatch):
    fm = trained["lenet5"][2]["int8"]
    monkeypatch.setattr(end_mod, "remaining_bound", lambda c, d=8: ((1 << (d - c)) - 1) // 4)
    res = end_analysis(fm, select(fm, "conv1"), mnist_test[0][:50])
    assert res[0].changed > 0        # stopping on a too-small bound zeroes some positive outputs


def test_end_does_not_apply_to_tanh_or_float(trained, mnist_test):
    fm = trained["lenet5_classic"][2]["int8"]
    res = end_analysis(fm, select(fm, GROUP), mnist_test[0][:10])
    assert [r.applies for r in res] == [False, False] and "scaled_tanh" in res[0].reason
    fm32 = trained["lenet5"][2]["float32"]
    assert not end_analysis(fm32, select(fm32, "conv1"), mnist_test[0][:10])[0].applies


# ---------------------------------------------------------------- bad input
def test_parse_tiles():
    assert parse_tiles("1..5") == [1, 2, 3, 4, 5]
    assert parse_tiles("3") == [3] and parse_tiles("4, 1,4") == [1, 4]
    for bad in ("0", "0..2", "5..1", "a", "", "1..", "-1", "1.5"):
        with pytest.raises(LenetlabError, match="--tile"):
            parse_tiles(bad)


def test_bad_layer_groups_and_tiles(untrained):
    fm = untrained[("lenet5", "int8")]
    with pytest.raises(LenetlabError, match="unknown layer 'conv9'.*conv1, pool1, conv2, pool2"):
        select(fm, "conv1,conv9")
    with pytest.raises(LenetlabError, match="activations are applied inside"):
        select(fm, "conv1,act1")
    with pytest.raises(LenetlabError, match="consecutive.*pool1 is missing"):
        select(fm, "conv1,conv2")
    with pytest.raises(LenetlabError, match="out of network order"):
        select(fm, "pool1,conv1")
    with pytest.raises(LenetlabError, match="named twice"):
        select(fm, "conv1,conv1")
    group = tuple(select(fm, GROUP))
    with pytest.raises(LenetlabError, match="tile 6 is larger than the output of pool2"):
        Schedule(group, 6)
    with pytest.raises(LenetlabError, match="positive"):
        Schedule(group, 0)
    with pytest.raises(LenetlabError, match="policy"):
        Schedule(group, 1, "diagonal")
    assert len(plan(Schedule(group, 5))) == 1


def test_cli_table_and_errors(deploy_runs, capsys):
    from lenetlab.cli import main

    run = str(deploy_runs["lenet5"])
    assert main(["fused", run, "--tile", "1..2", "--int8", "--images", "20"]) == 0
    out = capsys.readouterr().out
    assert "T=1 uniform" in out and "T=2 ragged" in out and "layer-by-layer" in out
    assert out.count("bit-exact") == 5 and "END conv1" in out and "outputs changed: 0" in out
    for args, msg in ((["--layers", "conv1,conv9"], "unknown layer 'conv9'"),
                      (["--layers", "conv1,conv2"], "consecutive"),
                      (["--tile", "0"], "--tile"),
                      (["--tile", "1..6"], "tile 6 is larger"),
                      (["--policy", "zigzag"], "policy"),
                      (["--images", "0"], "--images")):
        assert main(["fused", run, *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, (args, err)
    # a real subprocess: exit code 2 and one clean line, no traceback
    r = run_cli("fused", str(deploy_runs["lenet5"]) + "_missing", "--tile", "1")
    assert r.returncode == 2 and "no such run directory" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- the experiment
def test_reproduce_fused_tiny(tiny):
    tmp_path, r = tiny("fused")           # 16 images (the contract's override); resume: test_experiments
    claims = {c.name: c for c in r.claims}
    assert set(claims) == {"oi_gain", "oi_gain_executed", "oi_gain_alexnet", "oi_gain_alexnet_executed",
                           "oi_gain_vgg16", "oi_gain_vgg16_executed", "exact", "end_no_loss", "uniform_oi",
                           "uniform_oi_executed", "energy"}
    assert claims["exact"].supported is True and claims["end_no_loss"].supported is True
    assert claims["oi_gain"].supported in (True, False) and "x" in claims["oi_gain"].measured
    assert all(c.seeds == "n/a" for n, c in claims.items() if n != "energy")     # counts: exact, no seeds
    assert claims["energy"].supported is None
    for f in r.figures:
        assert (tmp_path / f).stat().st_size > 1000
    assert "lenet5 int8: conv1,pool1,conv2,pool2 per image" in r.tables
    assert "## Claims" in (tmp_path / "report.md").read_text()

"""Fault models, the fast campaign engine against the naive oracle (bit for bit), NVF, hardening, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from lenetlab.deploy import runtime
from lenetlab.errors import LenetlabError
from lenetlab.faults.campaign import Campaign, FaultList, exhaustive_faults, parse_bits, sample_faults, wilson
from lenetlab.faults.harden import harden, overhead, top_neurons
from lenetlab.faults.models import BitFlip, StuckAt0, StuckAt1, ber_flip
from lenetlab.quant.engine import IntEngine, blas_threads
from lenetlab.quant.run import load_qrun, quantize_run
from lenetlab.registry import names


@pytest.fixture(scope="module")
def qrun(small_run, tmp_path_factory):
    """The trained small run quantised to int8: calibrated on 200 training images (the engines are compared bit
    for bit with each other, so any real calibration does), its accuracy scored on 100 test images."""
    out = tmp_path_factory.mktemp("fq") / "q"
    quantize_run(small_run, out, calibration=200, limit=100)
    return out


@pytest.fixture(scope="module")
def engine(qrun):
    return IntEngine(load_qrun(qrun)[0])


@pytest.fixture(scope="module")
def images(mnist_test):
    """24 real test images. The naive oracle runs the whole network once per fault, so its cost is faults x
    images: the tests that compare many faults bit for bit take the first 12 (every layer and bit is still
    sampled); all 24 where a rare SDC must occur (activation faults)."""
    return np.ascontiguousarray(mnist_test[0][:24])


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with blas_threads(1):
        yield


# ---------------------------------------------------------------- fault models
def test_fault_models_on_twos_complement_words():
    v = np.array([3, -1, 127, -128])
    np.testing.assert_array_equal(BitFlip().corrupt(v, 7, 8), [-125, 127, -1, 0])
    np.testing.assert_array_equal(BitFlip().corrupt(v, 0, 8), [2, -2, 126, -127])
    np.testing.assert_array_equal(StuckAt0().corrupt(v, 0, 8), [2, -2, 126, -128])
    np.testing.assert_array_equal(StuckAt1().corrupt(v, 7, 8), [-125, -1, -1, -128])
    np.testing.assert_array_equal(BitFlip().corrupt(np.array([0]), 31, 32), [-(2**31)])
    assert {"bitflip", "stuck_at_0", "stuck_at_1"} <= set(names("fault_model"))


def test_ber_flips_the_expected_number_of_bits():
    rng = np.random.default_rng(0)
    v = np.zeros(200_000, np.int64)
    out = ber_flip(v, 8, 1e-3, rng)
    flipped = sum(int(((out >> b) & 1).sum()) for b in range(8))
    assert abs(flipped - 1600) < 4 * 40            # binomial mean 1600, sd ~40
    np.testing.assert_array_equal(ber_flip(v[:10], 8, 0.0, rng), v[:10])
    with pytest.raises(LenetlabError, match="bit-error rate"):
        ber_flip(v, 8, 1.5, rng)


def test_wilson_interval_and_bits_parsing():
    lo, hi = wilson(0, 100)
    assert lo == 0 and 0.03 < hi < 0.04
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert parse_bits("all", "weights") == list(range(8))
    assert parse_bits("0,24-26", "accumulators") == [0, 24, 25, 26]
    with pytest.raises(LenetlabError, match="outside 0..7"):
        parse_bits("9", "weights")


# ---------------------------------------------------------------- fast == naive
def _needs_native(camp: Campaign) -> None:
    """Skip (with the reason) where the native back end cannot be built; else check the campaign uses it."""
    from lenetlab.faults import native

    if not native.available():
        pytest.skip(f"native fault propagation unavailable: {native.why_not()}")
    assert camp._native(0) is not None and camp._native(0).supported_from(0)


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "numpy"])
@pytest.mark.parametrize("target", ["weights", "activations", "accumulators"])
def test_fast_engine_matches_naive_oracle(engine, images, target, use_native):
    """Both back ends of the fast engine: the C propagation (lenetlab.faults.native) and the NumPy one."""
    faults = sample_faults(engine, target, 2, np.random.default_rng(1))   # every layer x every bit
    images = images if target == "activations" else images[:12]
    camp = Campaign(engine, images, native=use_native)
    if use_native:
        _needs_native(camp)
    else:
        assert camp._native(0) is None
    fast, naive = camp.fast(faults), camp.naive(faults)
    assert fast.shape == (len(faults), len(images))
    np.testing.assert_array_equal(fast, naive)
    if target != "weights":
        assert naive.any()          # the comparison is not vacuous


@pytest.mark.parametrize("name,kw", [("lenet5", {"pool": "avg", "activation": "relu"}), ("lenet5_abs", {})],
                         ids=["avgpool-after-act", "maxpool-after-abs"])
def test_native_matches_naive_on_other_layer_orders(mnist_test, name, kw):
    """The native paths the trained fixture does not take: an activation before the pool (its table applied to
    the four window values) and average pooling (rounded half away from zero). Random weights suffice."""
    import torch

    from lenetlab.config import DataConfig
    from lenetlab.deploy import flat
    from lenetlab.deploy.graph import to_flat
    from lenetlab.deploy.quantize import quantize
    from lenetlab.models import create_model

    torch.manual_seed(1)
    model = create_model(name, **kw).eval()
    fm8 = flat.decode(flat.encode(quantize(to_flat(model, DataConfig()), mnist_test[0][:64])))
    eng = IntEngine(fm8)
    assert any(la.op == ("avgpool" if kw else "maxpool") for la in fm8.layers)
    camp = Campaign(eng, mnist_test[0][300:306])
    _needs_native(camp)
    sdc = 0
    for target in ("weights", "activations", "accumulators"):
        f = sample_faults(eng, target, 2, np.random.default_rng(5))
        naive = camp.naive(f)
        np.testing.assert_array_equal(camp.fast(f), naive, err_msg=target)
        sdc += int(naive.sum())
    assert sdc > 0                  # some faults change the class: the comparison is not vacuous


def test_native_source_compiles_warning_free(tmp_path):
    import shutil
    import subprocess

    from lenetlab.faults import native

    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    r = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC", "-o",
                        str(tmp_path / "p.so"), str(native.SOURCE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_native_library_can_be_switched_off(monkeypatch):
    from lenetlab.faults import native

    monkeypatch.setattr(native.LIBRARY, "_tried", False)
    monkeypatch.setattr(native.LIBRARY, "_lib", None)
    monkeypatch.setenv("LENETLAB_NATIVE", "0")
    assert not native.available() and "LENETLAB_NATIVE=0" in native.why_not()
    monkeypatch.setenv("LENETLAB_NATIVE", "1")
    monkeypatch.setattr(native.LIBRARY, "_tried", False)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.warns(RuntimeWarning, match="without their C back end"):
        assert not native.available()
    assert "no C compiler" in native.why_not()
    monkeypatch.setattr(native.LIBRARY, "_tried", False)
    import warnings

    with warnings.catch_warnings(record=True) as seen:     # -W error: shown, not raised (a slower path only)
        warnings.simplefilter("error")
        assert not native.available()
    assert ["without their C back end" in str(w.message) for w in seen] == [True]


@pytest.mark.parametrize("model", names("fault_model"))
@pytest.mark.parametrize("target", ["weights", "activations", "accumulators"])
def test_every_registered_fault_model_fast_equals_naive(engine, images, model, target):
    """Contract over the registry: a fault model added anywhere (an outside plugin too) is checked
    bit for bit, fast engine against the naive oracle, on every target."""
    faults = sample_faults(engine, target, 2, np.random.default_rng(7), model=model)
    camp = Campaign(engine, images[:3])      # 40 to 320 faults, each a whole naive forward per image
    np.testing.assert_array_equal(camp.fast(faults), camp.naive(faults))


@pytest.mark.slow   # every conv1 weight x bit through the naive oracle; sampled faults stay in the fast tier
def test_fast_matches_naive_for_stuck_at_and_exhaustive(engine, images):
    camp = Campaign(engine, images[:8])
    ex = exhaustive_faults(engine, "weights", 0, model="stuck_at_1")     # conv1: every weight, every bit
    assert len(ex) == engine.stages[0].w.size * 8
    np.testing.assert_array_equal(camp.fast(ex), camp.naive(ex))
    f = sample_faults(engine, "accumulators", 3, np.random.default_rng(2), bits=[20, 30, 31], model="stuck_at_0")
    np.testing.assert_array_equal(camp.fast(f), camp.naive(f))
    # high-bit weight flips in the two last layers do cause SDCs: the weight paths compared non-vacuously
    camp = Campaign(engine, images)
    ex = exhaustive_faults(engine, "weights", len(engine.stages) - 1, bits=[6, 7])
    naive = camp.naive(ex)
    np.testing.assert_array_equal(camp.fast(ex), naive)
    assert naive.any()


def test_fast_matches_naive_on_classic_lenet(mnist_test):
    """Subsampling, the C3 table, tanh LUTs and the RBF output: the paths of the fast engine that fall back
    to whole rows (no per-channel window shortcut) and the RBF stage (random weights are enough)."""
    import torch

    from lenetlab.config import DataConfig
    from lenetlab.deploy import flat
    from lenetlab.deploy.graph import to_flat
    from lenetlab.deploy.quantize import quantize
    from lenetlab.models import create_model

    torch.manual_seed(0)
    model = create_model("lenet5_classic").eval()
    fm8 = flat.decode(flat.encode(quantize(to_flat(model, DataConfig(normalize="lecun", pad=2)),
                                           mnist_test[0][:64])))
    eng = IntEngine(fm8)
    camp = Campaign(eng, mnist_test[0][200:204])
    for target in ("weights", "activations", "accumulators"):
        f = sample_faults(eng, target, 1, np.random.default_rng(4))
        np.testing.assert_array_equal(camp.fast(f), camp.naive(f), err_msg=target)


def test_naive_weight_fault_equals_the_runtime_on_a_corrupted_file(qrun, engine, images):
    """Oracle of the oracle: a weight fault is the deploy runtime on the flat model with that bit flipped."""
    fm, _ = load_qrun(qrun)
    j, r, k, bit = 2, 7, 33, 6
    st = engine.stages[j]
    faults = FaultList("weights", np.array([j]), np.array([r * st.fan_in + k]), np.array([bit]))
    sdc = Campaign(engine, images).naive(faults)[0]
    w = fm.layers[st.flat_index].arrays["w"]
    w[r * st.fan_in + k] = BitFlip().corrupt(w[r * st.fan_in + k], bit, 8)
    np.testing.assert_array_equal(sdc, runtime.predict(fm, images) != engine.predict(images))


def test_campaign_validates_input(engine, images):
    from lenetlab.faults.campaign import run_campaign

    with pytest.raises(LenetlabError, match="out of range"):
        run_campaign(engine, images, "weights", samples=1, stages=[9])
    with pytest.raises(LenetlabError, match="unknown fault target"):
        run_campaign(engine, images, "biases", samples=1)
    with pytest.raises(LenetlabError, match="unknown fault_model"):
        run_campaign(engine, images, "weights", samples=1, model="cosmic")
    with pytest.raises(LenetlabError, match="at least one image"):
        run_campaign(engine, images[:0], "weights", samples=1)


# ---------------------------------------------------------------- NVF
@pytest.mark.slow   # a full campaign to rank against; test_campaign_and_nvf_cli runs NVF fast
def test_nvf_ranks_neurons_like_the_campaign(engine, images):
    from lenetlab.faults.nvf import nvf_report

    rep = nvf_report(engine, images[:8], validate=1)
    assert len(rep["neurons"]) == sum(st.channels for st in engine.stages)
    assert all(0 <= r["nvf"] <= 1 for r in rep["neurons"])
    assert rep["spearman"] >= 0.7, rep["spearman"]


# ---------------------------------------------------------------- hardening
@pytest.mark.parametrize("mode", ["split", "tmr"])
def test_hardened_model_is_fault_free_identical_and_corrects(engine, images, mode):
    images = images[:12]
    protect = [(0, 2), (2, 5), (3, 1), (4, 3)]
    hard = harden(engine, protect, mode)
    np.testing.assert_array_equal(hard.run(images), engine.run(images))
    ov = overhead(engine, hard)
    assert ov["protected"] == 4 and ov["extra_macs"] > 0 and ov["extra_param_bytes"] > 0
    # a fault that raises a protected neuron's accumulator (bit 30 set) is corrected, in each copy
    camp_h, camp = Campaign(hard, images), Campaign(engine, images)
    for j, c in protect:
        st = hard.stages[j]
        rows = [c] + next(g[2] for g in st.groups if g[1] == c)
        f = FaultList("accumulators", np.full(len(rows), j), np.array(rows) * st.positions, np.full(len(rows), 30),
                      "stuck_at_1")
        assert not camp_h.naive(f).any() and not camp_h.fast(f).any()
    # ...while the same fault in the unhardened model is a silent data corruption
    f = FaultList("accumulators", np.array([4]), np.array([3]), np.array([30]), "stuck_at_1")
    assert camp.naive(f).any()
    # TMR also outvotes a fault that lowers one copy
    if mode == "tmr":
        st = hard.stages[4]
        rows = [3] + next(g[2] for g in st.groups if g[1] == 3)
        f = FaultList("accumulators", np.full(3, 4), np.array(rows), np.full(3, 31))
        assert not camp_h.fast(f).any()
    camp_h = Campaign(hard, images[:4])      # every layer x bit of every target (~400 faults): 4 images will do
    for target in ("accumulators", "weights", "activations"):   # copies merged before requantisation
        faults = sample_faults(hard, target, 1 + (target == "accumulators"), np.random.default_rng(3))
        np.testing.assert_array_equal(camp_h.fast(faults), camp_h.naive(faults), err_msg=target)


@pytest.mark.parametrize("mode", ["split", "tmr"])
def test_hardened_fast_equals_naive_when_no_pair_survives(engine, images, mode, monkeypatch):
    """Regression: the fast engine once crashed on a hardened model when a batch had no (fault, image) pair
    left after the masked ones were dropped. Every stage is hardened here; batches are made where every fault
    is masked at the merge, and single-fault batches on one image where the last pair dies mid-propagation
    (the one-channel change is zero after ReLU / pool, or the next stage's outputs stay put)."""
    from lenetlab.faults.fast import FastEngine

    protect = [(j, c) for j, st in enumerate(engine.stages) for c in range(0, st.channels, 3)]
    hard = harden(engine, protect, mode)
    assert all(st.groups for st in hard.stages)
    sizes = []
    propagate = FastEngine._propagate

    def spy(self, j, img, **kw):
        sizes.append(len(img))
        return propagate(self, j, img, **kw)

    monkeypatch.setattr(FastEngine, "_propagate", spy)
    # (1) every fault masked by the merge: one raised copy (split: 2 x min drops it) / any one copy (TMR: outvoted)
    rng = np.random.default_rng(7)
    st_, ix = [], []
    for j, st in enumerate(hard.stages):
        for _, c, copies in st.groups:
            for r in [c, *copies]:
                st_.append(j), ix.append(r * st.positions + int(rng.integers(st.positions)))
    bits = rng.integers(0, 32, len(ix)) if mode == "tmr" else np.full(len(ix), 30)
    f = FaultList("accumulators", np.array(st_), np.array(ix), bits, "bitflip" if mode == "tmr" else "stuck_at_1")
    camp = Campaign(hard, images[:4])
    naive = camp.naive(f)
    assert not naive.any()
    assert np.array_equal(camp.fast(f), naive)
    empty = FaultList("weights", np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert camp.fast(empty).shape == (0, 4) and np.array_equal(camp.fast(empty), camp.naive(empty))
    # (2) one image, one fault per batch: many batches lose their only pair at some stage boundary
    camp = Campaign(hard, images[:1])
    for target in ("weights", "activations", "accumulators"):
        f = sample_faults(hard, target, 1 + (target == "accumulators"), np.random.default_rng(8))
        fast = np.concatenate([camp.fast(f.subset(np.array([i]))) for i in range(len(f))])
        naive = camp.naive(f)
        assert np.array_equal(fast, naive), target
        assert np.array_equal(camp.fast(f), naive), target
    assert 0 in sizes                      # the empty batch did reach the propagation (not vacuous)


def test_top_neurons_and_hardening_errors(engine):
    rows = [{"stage": 0, "channel": c, "nvf": c / 10} for c in range(6)]
    assert top_neurons(rows, 50) == [(0, 5), (0, 4), (0, 3)]
    # NVF 0 is never protected (k% is capped at the neurons with positive NVF) ...
    assert top_neurons(rows, 100) == [(0, 5), (0, 4), (0, 3), (0, 2), (0, 1)]
    assert top_neurons([{"stage": 0, "channel": 0, "nvf": 0.0}], 50) == []
    # ... and NVF ties go to the cheaper neuron first, whatever its position
    tied = [{"stage": 0, "channel": 0, "nvf": 0.5, "macs": 900, "param_bytes": 30},
            {"stage": 1, "channel": 0, "nvf": 0.5, "macs": 100, "param_bytes": 30},
            {"stage": 1, "channel": 1, "nvf": 0.5, "macs": 100, "param_bytes": 20},
            {"stage": 2, "channel": 0, "nvf": 0.9, "macs": 5000, "param_bytes": 90}]
    assert top_neurons(tied, 75) == [(2, 0), (1, 1), (1, 0)]
    with pytest.raises(LenetlabError, match="k must be"):
        top_neurons(rows, 0)
    with pytest.raises(LenetlabError, match="unknown hardening"):
        harden(engine, [(0, 0)], "quad")
    with pytest.raises(LenetlabError, match="no channel"):
        harden(engine, [(0, 99)], "tmr")


# ---------------------------------------------------------------- CLI + experiment
def test_campaign_and_nvf_cli(qrun, tmp_path, capsys):
    out = tmp_path / "c"
    r = run_cli("faults", "campaign", str(qrun), "--target", "accumulators", "--bits", "28-31", "--samples", "3",
                "--images", "8", "--out", str(out), check=True)
    assert "overall  SDC" in r.stdout
    data = json.loads((out / "campaign_accumulators.json").read_text())
    assert data["faults"] == 5 * 4 * 3 and len(data["layers"]) == 5
    assert all(0 <= b["ci95"][0] <= b["rate"] <= b["ci95"][1] <= 1 for la in data["layers"] for b in la["bits"])
    assert (out / "campaign_accumulators.png").stat().st_size > 1000
    from lenetlab.cli import main  # in-process from here on (a subprocess costs seconds of imports)

    assert main(["faults", "campaign", str(qrun), "--target", "weights", "--layer", "0", "--exhaustive",
                 "--bits", "7", "--images", "2", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["faults"] == 150
    assert main(["faults", "nvf", str(qrun), "--images", "1", "--out", str(out)]) == 0
    assert "conv1" in capsys.readouterr().out and (out / "nvf.json").is_file()


def test_faults_cli_bad_input_is_one_clean_line(qrun, tmp_path, capsys):
    from lenetlab.cli import main

    for args, msg in ((["--target", "weights", "--bits", "8"], "outside 0..7"),
                      (["--target", "weights", "--samples", "0"], "--samples"),
                      (["--target", "weights", "--exhaustive"], "--exhaustive needs --layer"),
                      (["--target", "weights", "--layer", "7"], "out of range"),
                      (["--target", "weights", "--fault-model", "cosmic"], "unknown fault_model")):
        assert main(["faults", "campaign", str(qrun), *args, "--images", "2", "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
    assert main(["faults", "campaign", str(tmp_path / "none"), "--target", "weights"]) == 2
    assert "no such quantised run" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_reproduce_faults_tiny(tiny):
    tmp_path, r = tiny("faults")          # ks = [50] (the contract's override); resume: test_experiments
    assert {c.name for c in r.claims} == {"split_matches_tmr_at_half_cost", "nvf_ranks_neurons",
                                          "split_needs_no_redesign"}
    assert all(c.supported in (True, False, None) and c.measured for c in r.claims)
    table = next(iter(r.tables.values()))
    assert [row["method"] for row in table] == ["none", "split", "tmr"]
    split, tmr = table[1], table[2]
    assert split["extra_MACs"] * 2 == tmr["extra_MACs"]        # one copy vs two
    assert (tmp_path / "overhead_vs_resilience.png").stat().st_size > 1000

"""Your own data: ``npz:PATH`` and ``folder:PATH`` datasets (lenetlab.data.own), trained end to end on real
MNIST digits written out as an .npz file and as a folder of RGB PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from lenetlab.config import DataConfig
from lenetlab.data import load_splits
from lenetlab.data.datasets import dataset_spec, load_raw
from lenetlab.data.own import load
from lenetlab.errors import LenetlabError
from lenetlab.rundir import load_model
from lenetlab.train import evaluate, fit
from lenetlab.train.presets import resolve

N_TRAIN, N_TEST = 600, 200
DIGITS = (0, 1, 7)       # the folder dataset: three classes, named after their digit


def _mnist(n_train: int = N_TRAIN, n_test: int = N_TEST):
    tx, ty, sx, sy = load_raw("mnist")
    return tx[:n_train], ty[:n_train], sx[:n_test], sy[:n_test]


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("own") / "digits.npz"
    tx, ty, sx, sy = _mnist()
    np.savez(p, x_train=tx, y_train=ty, x_test=sx, y_test=sy)
    return p


def _write_folder(root: Path, split: bool = True, per_class: tuple[int, int] = (120, 30)) -> Path:
    """Digits 0, 1, 7 as 32x32 RGB PNGs (digit tinted red, so the three channels differ)."""
    tx, ty, sx, sy = load_raw("mnist")
    parts = (("train", tx, ty, per_class[0]), ("test", sx, sy, per_class[1]))
    for split_name, xs, ys, n in parts:
        for d in DIGITS:
            folder = root / (split_name if split else "") / f"digit{d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, j in enumerate(np.flatnonzero(ys == d)[:n]):
                g = np.asarray(Image.fromarray(xs[j]).resize((32, 32), Image.BILINEAR))
                rgb = np.stack([g, g // 2, np.zeros_like(g)], axis=-1)
                Image.fromarray(rgb, "RGB").save(folder / f"{split_name}{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("own") / "digits")


def _cfg(dataset: str, **data):
    return resolve("fast", "lenet5", overrides={"data": {"dataset": dataset, **data}, "train": {"epochs": 1}})


# ------------------------------------------------------------------ npz
def test_npz_trains_evaluates_and_reloads(npz_file, tmp_path):
    out = tmp_path / "run"
    s = fit(_cfg(f"npz:{npz_file}"), out=out, log=None, progress=False)
    k = 10
    assert s["train_images"] == N_TRAIN and s["test_images"] == N_TEST
    assert s["test_accuracy"] > 2 / k, s["test_accuracy"]        # well above chance after one epoch on digits
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["dataset"] == f"npz:{npz_file.resolve()}"
    # mean/std from the training images, in [0, 1] units
    tx = _mnist()[0].astype(np.float64) / 255
    assert cfg["data"]["mean"] == pytest.approx(tx.mean()) and cfg["data"]["std"] == pytest.approx(tx.std())
    assert cfg["model"]["options"]["num_classes"] == k and cfg["model"]["options"]["in_channels"] == 1
    model, rc = load_model(out)
    splits = load_splits(rc.data)
    assert splits.classes == tuple(str(i) for i in range(k))
    assert evaluate(model, splits.test_x, splits.test_y)["accuracy"] == pytest.approx(s["test_accuracy"])
    r = run_cli("eval", str(out), "--json", check=True)
    assert json.loads(r.stdout)["test_accuracy"] == pytest.approx(s["test_accuracy"])


def test_npz_via_cli_with_layouts_floats_and_class_names(tmp_path):
    """Channels-last float images in [0, 1], 4 classes with names, through `lenetlab train --dataset`."""
    tx, ty, sx, sy = _mnist()
    keep_tr, keep_te = ty < 4, sy < 4
    p = tmp_path / "f.npz"
    np.savez(p, x_train=(tx[keep_tr] / 255.0)[..., None], y_train=ty[keep_tr].astype(np.int32),
             x_test=(sx[keep_te] / 255.0)[..., None], y_test=sy[keep_te], classes=np.array(["a", "b", "c", "d"]))
    d = load(f"npz:{p}")
    assert d.train_x.dtype == np.uint8 and d.train_x.ndim == 3 and np.array_equal(d.train_x, tx[keep_tr])
    assert d.classes == ("a", "b", "c", "d")
    assert dataset_spec(f"npz:{p}").classes == ("a", "b", "c", "d")
    out = tmp_path / "run"
    run_cli("train", "--dataset", f"npz:{p}", "--epochs", "1", "--out", str(out), "-q", check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] > 2 / 4, summary
    assert json.loads((out / "config.json").read_text())["model"]["options"]["num_classes"] == 4
    # the same data through --set, channels-first uint8 this time
    q = tmp_path / "c.npz"
    np.savez(q, x_train=tx[:100, None], y_train=ty[:100], x_test=sx[:50, None], y_test=sy[:50])
    r = run_cli("train", "--set", f"data.dataset=npz:{q}", "--epochs", "1", "--out", str(tmp_path / "r2"), "-q")
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ folder
def test_folder_rgb_trains_with_geometry_from_the_data(image_folder, tmp_path):
    d = load(f"folder:{image_folder}")
    assert d.classes == tuple(f"digit{x}" for x in DIGITS)
    assert d.train_x.shape == (3 * 120, 3, 32, 32) and d.test_x.shape == (3 * 30, 3, 32, 32)
    assert np.bincount(d.train_y).tolist() == [120] * 3
    out = tmp_path / "run"
    s = fit(_cfg(f"folder:{image_folder}", pad=1), out=out, log=None, progress=False)
    k = len(DIGITS)
    assert s["test_accuracy"] > 1 / k + 0.2, s["test_accuracy"]
    opts = json.loads((out / "config.json").read_text())["model"]["options"]
    assert (opts["in_channels"], opts["input_size"], opts["num_classes"]) == (3, 34, 3)
    model, rc = load_model(out)
    assert model.conv1.in_channels == 3 and model.fc3.out_features == 3
    splits = load_splits(rc.data)
    assert splits.test_x.shape == (90, 3, 34, 34)
    r = run_cli("eval", str(out), "--json", check=True)
    assert json.loads(r.stdout)["test_accuracy"] == pytest.approx(s["test_accuracy"])


def test_folder_without_split_holds_out_one_in_five(tmp_path):
    root = _write_folder(tmp_path / "flat", split=False, per_class=(20, 5))   # 25 images a class
    a, b = load(f"folder:{root}"), load(f"folder:{root}")
    assert np.bincount(a.test_y).tolist() == [5, 5, 5] and np.bincount(a.train_y).tolist() == [20, 20, 20]
    assert np.array_equal(a.test_x, b.test_x)                 # the same split every time


def test_grayscale_folder_loads_one_channel(tmp_path):
    tx, ty, _, _ = _mnist(40, 0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(tx[i + (c == "b") * 3]).save(tmp_path / split / c / f"{i}.png")
    (tmp_path / "train" / "a" / ".DS_Store").write_bytes(b"junk")     # hidden files are skipped
    d = load(f"folder:{tmp_path}")
    assert d.train_x.shape == (6, 28, 28) and np.array_equal(d.train_x[0], tx[0])


# ------------------------------------------------------------------ bad input: one error line each
def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def _ok_arrays():
    tx, ty, sx, sy = _mnist(20, 10)
    return {"x_train": tx, "y_train": ty, "x_test": sx, "y_test": sy}


@pytest.mark.parametrize("change, message", [
    ({"x_test": None}, "missing array.*x_test"),
    ({"y_train": np.zeros(19, np.int64)}, "19 labels for 20 images"),
    ({"y_train": np.full(20, -1)}, "label -1 is negative"),
    ({"y_train": np.zeros(20, np.float32)}, "labels must be integers"),
    ({"x_train": np.zeros((20, 28, 27), np.uint8)}, "28x27; LeNet models take square"),
    ({"x_train": np.zeros((20, 32, 32), np.uint8)}, "x_train images are 32x32 but x_test images are 28x28"),
    ({"x_train": np.full((20, 28, 28), 2.0)}, r"float images must lie in \[0, 1\]"),
    ({"x_train": np.full((20, 28, 28), np.nan)}, "NaN"),
    ({"x_train": np.full((20, 28, 28), 300)}, "0..255"),
    ({"x_train": np.zeros((20, 28), np.uint8)}, "expected images shaped"),
    ({"x_train": np.zeros((0, 28, 28), np.uint8), "y_train": np.zeros(0, np.int64)}, "no images"),
    ({"classes": np.array(["x", "y"])}, "label 9 is out of range for the 2 classes"),
    ({"y_train": np.zeros(20, np.int64), "y_test": np.zeros(10, np.int64)}, "at least 2 classes"),
])
def test_bad_npz(tmp_path, change, message):
    arrays = _ok_arrays()
    arrays.update(change)
    name = _npz(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(LenetlabError, match=message) as e:
        load(name)
    assert "\n" not in str(e.value)


def test_bad_npz_files(tmp_path):
    with pytest.raises(LenetlabError, match="no such .npz file"):
        load(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(LenetlabError, match="not a .npz file"):
        load(f"npz:{tmp_path / 'junk.npz'}")
    arrays = _ok_arrays()
    arrays["classes"] = np.array([object(), "b"], dtype=object)
    np.savez(tmp_path / "obj.npz", **arrays)      # an object array: refused from its header, never unpickled
    with pytest.raises(LenetlabError, match="Python objects"):
        load(f"npz:{tmp_path / 'obj.npz'}")
    with pytest.raises(LenetlabError, match="give a path"):
        load("npz:")
    with pytest.raises(LenetlabError, match="it is a folder"):
        load(f"npz:{tmp_path}")


def _png(path: Path, size=(28, 28), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)


def test_bad_folders(tmp_path, monkeypatch):
    def case(name: str) -> Path:
        root = tmp_path / name
        for split in ("train", "test"):
            for c in ("a", "b"):
                _png(root / split / c / "0.png")
        return root

    def err(root: Path, message: str) -> None:
        with pytest.raises(LenetlabError, match=message) as e:
            load(f"folder:{root}")
        assert "\n" not in str(e.value)

    err(tmp_path / "missing", "no such folder")
    (tmp_path / "empty").mkdir()
    err(tmp_path / "empty", "no class folders")
    r = case("mixed")
    _png(r / "train" / "b" / "1.png", size=(30, 30))
    err(r, "30x30 but .* is 28x28; every image must have the same size")
    r = case("nonimage")
    (r / "train" / "a" / "notes.txt").write_text("hello")
    err(r, "notes.txt: not an image file")
    r = case("corrupt")
    (r / "train" / "a" / "1.png").write_bytes(b"\x89PNG garbage")
    err(r, "1.png: cannot read image")
    r = case("emptyclass")
    (r / "train" / "c").mkdir()
    err(r, "class folder has no images")
    r = case("extra_test_class")
    _png(r / "test" / "z" / "0.png")
    err(r, "class folder.*z have no training images")
    r = case("no_test")
    import shutil

    shutil.rmtree(r / "test")
    err(r, "has a train/ folder but no test/ folder")
    r = case("loose_file")
    _png(r / "train" / "stray.png")
    err(r, "expected only class folders")
    r = case("nonsquare")
    for p in (r / "train").rglob("*.png"):
        _png(p, size=(28, 20))
    err(r, "28x20; LeNet models take square")
    r = case("toobig")
    import lenetlab.data.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 100)    # the cap of `lenetlab predict`, read from its header
    err(r, "image is 28x28 pixels; the limit is 100 pixels")


def test_model_that_cannot_take_the_data_is_one_error(npz_file, tmp_path):
    cfg = resolve("fast", "lenet_deep", overrides={"data": {"dataset": f"npz:{npz_file}", "pad": 2},
                                                   "train": {"epochs": 1}})
    with pytest.raises(LenetlabError, match="takes 1x28x28 inputs but .* gives 1x32x32"):
        fit(cfg, out=tmp_path / "r", log=None, progress=False)
    assert not (tmp_path / "r").exists()                 # refused before anything was written


def test_cli_bad_dataset_is_one_line_exit_2(tmp_path):
    r = run_cli("train", "--dataset", f"folder:{tmp_path / 'nope'}", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such folder" in r.stderr


def test_registered_datasets_unchanged():
    s = load_splits(DataConfig(train_subset=10, test_subset=10, val_size=0))
    assert s.train_x.shape == (10, 1, 28, 28) and s.train_x.dtype == torch.float32
    assert dataset_spec("mnist").name == "mnist"

import shutil
import urllib.error

import numpy as np
import pytest
import torch

from lenetlab.config import DataConfig
from lenetlab.data import datasets as ds
from lenetlab.data import load_splits, split_indices
from lenetlab.errors import LenetlabError


def test_split_is_deterministic_and_disjoint():
    a_tr, a_va = split_indices(60000, 5000, 3)
    b_tr, b_va = split_indices(60000, 5000, 3)
    assert np.array_equal(a_tr, b_tr) and np.array_equal(a_va, b_va)
    assert len(np.intersect1d(a_tr, a_va)) == 0 and len(a_tr) + len(a_va) == 60000
    c_tr, _ = split_indices(60000, 5000, 4)
    assert not np.array_equal(a_tr, c_tr)


def test_bad_split_size():
    with pytest.raises(LenetlabError, match="val_size"):
        split_indices(100, 100, 0)


def test_load_splits_real_mnist_subsets_and_normalisation():
    s = load_splits(DataConfig(train_subset=1000, test_subset=500, val_size=2000))
    assert s.train_x.shape == (1000, 1, 28, 28) and s.val_x.shape == (2000, 1, 28, 28)
    assert s.test_x.shape == (500, 1, 28, 28) and s.test_y.dtype == torch.int64
    bg = -0.1307 / 0.3081
    assert torch.isclose(s.train_x.min(), torch.tensor(bg))
    u = load_splits(DataConfig(normalize="unit", train_subset=10, test_subset=10))
    assert u.train_x.min() == 0 and u.train_x.max() == 1


def test_lecun_normalisation_and_padding():
    s = load_splits(DataConfig(normalize="lecun", pad=2, train_subset=10, test_subset=10))
    assert s.train_x.shape[-2:] == (32, 32)
    assert torch.allclose(s.train_x[:, :, :2, :], torch.tensor(-0.1))  # padded border = background
    assert abs(float(s.train_x.max()) - 1.175) < 1e-5


def test_bundled_checksums_verified():
    for fname, sha in ds.MNIST.sha256.items():
        assert ds.sha256_file(ds.bundled_dir() / fname) == sha


def test_wrong_checksum_is_one_line_error(tmp_path):
    for f in ds.FILES:
        shutil.copy(ds.bundled_dir() / f, tmp_path / f)
    (tmp_path / ds.FILES[3]).write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(LenetlabError, match="wrong checksum") as e:
        ds.load_raw("mnist", data_dir=str(tmp_path))
    assert "\n" not in str(e.value)


def test_offline_download_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LENETLAB_DATA", raising=False)

    def offline(*a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(ds.urllib.request, "urlopen", offline)
    with pytest.raises(LenetlabError, match="offline.*--data-dir"):
        ds.load_raw("fashion_mnist")
    assert not any((tmp_path / "cache").rglob("*.gz"))  # no partial download left behind


def test_download_checksum_enforced(tmp_path, monkeypatch):
    """A server that returns the wrong bytes is rejected and nothing is cached."""
    import io

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(ds.urllib.request, "urlopen", lambda *a, **k: Resp(b"not the file"))
    with pytest.raises(LenetlabError, match="wrong checksum"):
        ds.load_raw("kmnist")
    assert not any((tmp_path / "cache").rglob("*.gz"))


def test_local_copy_via_env(tmp_path, monkeypatch):
    """$LENETLAB_DATA/<name>/ is searched: a copy there is found and verified."""
    monkeypatch.setenv("LENETLAB_DATA", str(tmp_path))
    (tmp_path / "fashion_mnist").mkdir()
    (tmp_path / "fashion_mnist" / ds.FILES[0]).write_bytes(b"fake")
    with pytest.raises(LenetlabError, match=r"fashion_mnist.*train-images.*wrong checksum"):
        ds.load_raw("fashion_mnist", download=False)


def test_unknown_dataset():
    with pytest.raises(LenetlabError, match="unknown dataset 'cifar'; choose from: fashion_mnist, kmnist, mnist"):
        load_splits(DataConfig(dataset="cifar"))


def test_images_to_mnist_centres_and_inverts():
    from lenetlab.data.images import to_mnist

    img = np.ones((100, 60))
    img[20:80, 25:35] = 0.0   # a dark vertical bar on white paper, like a "1"
    d = to_mnist(img)
    assert d.shape == (28, 28) and d.max() == pytest.approx(1.0, abs=0.05)
    assert d[:, :4].max() < 0.05 and d[:4].max() < 0.05       # background black, border empty
    ys, xs = np.nonzero(d > 0.5)
    assert ys.max() - ys.min() + 1 in (19, 20, 21)            # long side scaled to 20
    assert abs(xs.mean() - 13.5) <= 1.0


def test_blank_image_rejected():
    from lenetlab.data.images import to_mnist

    with pytest.raises(LenetlabError, match="blank"):
        to_mnist(np.zeros((28, 28)))

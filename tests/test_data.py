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


@pytest.fixture
def no_system_copy(monkeypatch):
    """Hide distribution-package copies (e.g. /usr/share/datasets/fashion-mnist) from the loader."""
    monkeypatch.setattr(ds, "system_dirs", lambda spec: [])


def test_offline_download_fails_clearly(tmp_path, monkeypatch, no_system_copy):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LENETLAB_DATA", raising=False)

    def offline(*a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(ds.urllib.request, "urlopen", offline)
    with pytest.raises(LenetlabError, match="offline.*apt-get install dataset-fashion-mnist.*--data-dir") as e:
        ds.load_raw("fashion_mnist")
    assert "\n" not in str(e.value)
    assert not any((tmp_path / "cache").rglob("*.gz"))  # no partial download left behind


FASHION_DIR = ds.Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION_DIR / ds.FILES[0]).is_file(),
                                   reason="the dataset-fashion-mnist package is not installed")


def test_fashion_mnist_without_any_copy_says_how_to_get_it(tmp_path, monkeypatch, no_system_copy):
    """No copy anywhere and no download allowed: one line naming the package and the download."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LENETLAB_DATA", raising=False)
    with pytest.raises(LenetlabError) as e:
        ds.load_raw("fashion_mnist", data_dir=str(tmp_path / "empty"), download=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("fashion_mnist: train-images-idx3-ubyte.gz not found")
    assert "apt-get install dataset-fashion-mnist" in msg and ds.FASHION_URL in msg


@needs_fashion
def test_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    """The package's copy is found with no data dir and passes the checks of the decompressed bytes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LENETLAB_DATA", raising=False)
    tr_x, tr_y, te_x, te_y = ds.load_raw("fashion_mnist", download=False)
    assert tr_x.shape == (60000, 28, 28) and te_x.shape == (10000, 28, 28) and tr_x.dtype == np.uint8
    assert set(np.unique(tr_y)) == set(np.unique(te_y)) == set(range(10))
    assert np.bincount(te_y).tolist() == [1000] * 10           # Fashion-MNIST's test set is balanced
    s = load_splits(DataConfig(dataset="fashion_mnist", train_subset=100, test_subset=50, val_size=0))
    assert s.classes[9] == "Ankle boot" and s.train_x.shape == (100, 1, 28, 28)


@pytest.mark.slow   # recompresses a whole data file
@needs_fashion
def test_recompressed_copy_passes_and_changed_images_fail(tmp_path):
    """Checksums are of the decompressed IDX bytes: re-gzipping passes, one changed pixel does not."""
    import gzip

    for f in ds.FILES:
        raw = gzip.decompress((FASHION_DIR / f).read_bytes())
        (tmp_path / f).write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
    assert ds.sha256_file(tmp_path / ds.FILES[3]) != ds.sha256_file(FASHION_DIR / ds.FILES[3])
    assert len(ds.load_raw("fashion_mnist", data_dir=str(tmp_path), download=False)[3]) == 10000
    raw = bytearray(gzip.decompress((tmp_path / ds.FILES[2]).read_bytes()))
    raw[-1] ^= 1
    (tmp_path / ds.FILES[2]).write_bytes(gzip.compress(bytes(raw), mtime=0))
    with pytest.raises(LenetlabError, match=r"t10k-images.*wrong checksum \(decompressed sha256"):
        ds.load_raw("fashion_mnist", data_dir=str(tmp_path), download=False)


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


@needs_fashion
def test_fashion_mnist_download_is_verified_by_decompressed_bytes(tmp_path, monkeypatch, no_system_copy):
    """A download whose gzip header differs from ours but whose IDX bytes match is accepted and cached; the
    URLs asked for are the official ones. The served file is the package's deflate stream under another
    header (its mtime field), not a recompression: test_recompressed_copy_passes_and_changed_images_fail (slow
    tier) re-deflates whole files."""
    import io
    import struct

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LENETLAB_DATA", raising=False)
    asked = []

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def serve(url, timeout=None):
        asked.append(url)
        ours = (FASHION_DIR / url.rsplit("/", 1)[1]).read_bytes()
        served = ours[:4] + struct.pack("<I", 12345) + ours[8:]     # bytes 4-7 of a gzip header: its mtime
        assert served != ours
        return Resp(served)

    monkeypatch.setattr(ds.urllib.request, "urlopen", serve)
    assert len(ds.load_raw("fashion_mnist")[1]) == 60000
    assert asked == [ds.FASHION_URL + f for f in ds.FILES]
    assert sorted(p.name for p in (tmp_path / "cache" / "lenetlab" / "fashion_mnist").iterdir()) == sorted(ds.FILES)

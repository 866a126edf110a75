"""Dataset registry: bundled MNIST, optional Fashion-MNIST and KMNIST.

All three share MNIST's layout (60k train / 10k test, 28x28 uint8, IDX gzip).
MNIST ships inside the package so that everything works offline. The other two
are looked for, in order, in ``--data-dir``, ``$LENETLAB_DATA/<name>`` and the
user cache (``~/.cache/lenetlab/<name>``); if absent they are downloaded into
the cache. Every file's SHA-256 is checked before it is parsed.

Example::

    from lenetlab.data.datasets import load_raw
    train_x, train_y, test_x, test_y = load_raw("mnist")
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lenetlab.data.idx import read_idx
from lenetlab.errors import LenetlabError
from lenetlab.registry import register

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sha256: dict[str, str]
    base_url: str | None  # None: bundled, never downloaded
    license: str
    classes: tuple[str, ...] = tuple(str(i) for i in range(10))


MNIST = register("dataset", "mnist")(DatasetSpec(
    name="mnist",
    sha256={
        FILES[0]: "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
        FILES[1]: "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
        FILES[2]: "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
        FILES[3]: "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
    },
    base_url=None,
    license="MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0; bundled",
))

register("dataset", "fashion_mnist")(DatasetSpec(
    name="fashion_mnist",
    sha256={
        FILES[0]: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        FILES[1]: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        FILES[2]: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        FILES[3]: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    license="Fashion-MNIST (Zalando Research), MIT; downloaded on demand",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
))

register("dataset", "kmnist")(DatasetSpec(
    name="kmnist",
    sha256={
        FILES[0]: "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
        FILES[1]: "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
        FILES[2]: "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
        FILES[3]: "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
    },
    base_url="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    license="KMNIST (CODH), CC BY-SA 4.0; downloaded on demand",
    classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
))


def bundled_dir() -> Path:
    return Path(__file__).resolve().parent / "mnist"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise LenetlabError(f"{path}: wrong checksum (sha256 {got[:16]}..., expected {expected[:16]}...)")


def _candidate_dirs(spec: DatasetSpec, data_dir: str | None) -> list[Path]:
    dirs: list[Path] = []
    if data_dir:
        dirs += [Path(data_dir) / spec.name, Path(data_dir)]
    env = os.environ.get("LENETLAB_DATA")
    if env:
        dirs += [Path(env) / spec.name, Path(env)]
    if spec.base_url is None:
        dirs.append(bundled_dir())
    dirs.append(cache_dir() / spec.name)
    return dirs


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lenetlab"


def _download(spec: DatasetSpec, fname: str, dest: Path) -> None:
    from lenetlab.fileio import atomic_write

    url = spec.base_url + fname
    def fetch(tmp: str) -> None:
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise LenetlabError(
                f"{spec.name}: cannot download {url} ({reason}); this machine may be offline - "
                f"put the four IDX .gz files in a folder and pass --data-dir DIR or set LENETLAB_DATA"
            ) from None
        got = sha256_file(Path(tmp))
        if got != spec.sha256[fname]:
            raise LenetlabError(f"{url}: downloaded file has the wrong checksum (sha256 {got[:16]}...)")

    atomic_write(dest, fetch)


def locate(name: str, data_dir: str | None = None, download: bool = True) -> dict[str, Path]:
    """Find (or download) and verify the four files of dataset ``name``."""
    from lenetlab.registry import get

    spec: DatasetSpec = get("dataset", name)
    found: dict[str, Path] = {}
    for fname in FILES:
        for d in _candidate_dirs(spec, data_dir):
            p = d / fname
            if p.is_file():
                found[fname] = p
                break
        else:
            if spec.base_url is None or not download:
                where = ", ".join(str(d) for d in _candidate_dirs(spec, data_dir))
                raise LenetlabError(f"{name}: {fname} not found (looked in {where})")
            dest = cache_dir() / spec.name / fname
            _download(spec, fname, dest)
            found[fname] = dest
        verify(found[fname], spec.sha256[fname])
    return found


def load_raw(name: str = "mnist", data_dir: str | None = None, download: bool = True
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels) as uint8 arrays."""
    files = locate(name, data_dir, download)
    arrays = [read_idx(files[f]) for f in FILES]
    for imgs, labels, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "test")):
        if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
            raise LenetlabError(
                f"{name}: {split} images {imgs.shape} and labels {labels.shape} do not match")
    return arrays[0], arrays[1], arrays[2], arrays[3]

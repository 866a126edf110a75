"""Dataset registry: bundled MNIST, optional Fashion-MNIST and KMNIST.

All three share MNIST's layout (60k train / 10k test, 28x28 uint8, IDX gzip).
MNIST ships inside the package so that everything works offline. The other two
are looked for, in order, in ``--data-dir``, ``$LENETLAB_DATA/<name>``, a
distribution package's folder (Fashion-MNIST: Debian/Ubuntu's
``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist/``) and
the user cache (``~/.cache/lenetlab/<name>``); if absent they are downloaded
into the cache. Every file's SHA-256 is checked before it is parsed: of the
.gz file itself, or - where the spec gives ``idx_sha256`` - of the
decompressed IDX bytes, so a copy that was only re-compressed (Debian's
Fashion-MNIST differs from the official files only in the gzip header) passes
and a copy with different images does not.

Example::

    from lenetlab.data.datasets import load_raw
    train_x, train_y, test_x, test_y = load_raw("mnist")
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lenetlab import prefetch
from lenetlab.data.idx import read_idx
from lenetlab.errors import LenetlabError
from lenetlab.registry import register

FILES = prefetch.IDX_FILES   # the four IDX files of every dataset here


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sha256: dict[str, str]
    base_url: str | None  # None: bundled, never downloaded
    license: str
    classes: tuple[str, ...] = tuple(str(i) for i in range(10))
    idx_sha256: dict[str, str] = field(default_factory=dict)   # of the decompressed bytes; wins over sha256
    system_dirs: tuple[str, ...] = ()   # folders a distribution package installs the files into
    how_to_get: str = ""                # one sentence for the error when no copy is found


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

FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
register("dataset", "fashion_mnist")(DatasetSpec(
    name="fashion_mnist",
    sha256={},
    # SHA-256 of the decompressed IDX files (computed from Debian's dataset-fashion-mnist copy, whose .gz
    # files differ from the official ones only in the gzip header)
    idx_sha256={
        FILES[0]: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        FILES[1]: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        FILES[2]: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        FILES[3]: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    base_url=FASHION_URL,
    license="Fashion-MNIST (Zalando Research), MIT; from the dataset-fashion-mnist package or downloaded on demand",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    how_to_get=("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four "
                f"files from {FASHION_URL} into a folder and pass --data-dir DIR"),
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
    return prefetch.BUNDLED_MNIST


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_gunzipped(path: Path) -> str | None:
    """SHA-256 of a .gz file's decompressed bytes; None when it is not a readable gzip file."""
    import gzip
    import zlib

    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return h.hexdigest()


def checksum_problem(path: Path, expected: str, decompressed: bool = False) -> str | None:
    """None if ``path``'s SHA-256 (of the decompressed bytes when ``decompressed``) is ``expected``, else why not."""
    got = sha256_gunzipped(path) if decompressed else sha256_file(path)
    if got is None:
        return "wrong checksum (not a readable gzip file)"
    if got != expected:
        what = "decompressed sha256" if decompressed else "sha256"
        return f"wrong checksum ({what} {got[:16]}..., expected {expected[:16]}...)"
    return None


def _problem(spec: DatasetSpec, fname: str, path: Path) -> str | None:
    """The checksum problem of one of ``spec``'s files, by the checksum its spec gives (decompressed first)."""
    if fname in spec.idx_sha256:
        return checksum_problem(path, spec.idx_sha256[fname], decompressed=True)
    return checksum_problem(path, spec.sha256[fname])


def system_dirs(spec: DatasetSpec) -> list[Path]:
    """The distribution-package folders searched for ``spec`` (a function, so tests can hide them)."""
    return [Path(d) for d in spec.system_dirs]


def _hint(spec: DatasetSpec) -> str:
    return f"; {spec.how_to_get}" if spec.how_to_get else ""


def _candidate_dirs(spec: DatasetSpec, data_dir: str | None) -> list[Path]:
    dirs: list[Path] = []
    if data_dir:
        dirs += [Path(data_dir) / spec.name, Path(data_dir)]
    env = os.environ.get("LENETLAB_DATA")
    if env:
        dirs += [Path(env) / spec.name, Path(env)]
    if spec.base_url is None:
        dirs.append(bundled_dir())
    dirs += system_dirs(spec)
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
                + (spec.how_to_get or "put the four IDX .gz files in a folder and pass --data-dir DIR or set "
                   "LENETLAB_DATA")
            ) from None
        if problem := _problem(spec, fname, Path(tmp)):
            raise LenetlabError(f"{url}: downloaded file has the {problem}")

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
                raise LenetlabError(f"{name}: {fname} not found (looked in {where}){_hint(spec)}")
            dest = cache_dir() / spec.name / fname
            _download(spec, fname, dest)
            found[fname] = dest
        key = (_identity(found[fname]), fname in spec.idx_sha256, spec.idx_sha256.get(fname, spec.sha256.get(fname)))
        if key not in _VERIFIED:
            if problem := _problem(spec, fname, found[fname]):
                raise LenetlabError(f"{found[fname]}: {problem}")
            _VERIFIED.add(key)
    return found


# A process verifies and decompresses each dataset file once: a file is known by its path, inode, size and
# times, so a replaced or rewritten file is read (and checked) again.
_VERIFIED: set[tuple] = set()
_ARRAYS: dict[tuple, np.ndarray] = {}


def _identity(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_cached(path: Path) -> np.ndarray:
    """``read_idx(path)``, decompressed once per process; each caller gets its own copy to change freely."""
    key = _identity(path)
    if key not in _ARRAYS:
        if len(_ARRAYS) >= 16:                  # a few datasets' worth; a long session does not grow without end
            _ARRAYS.clear()
        # inflated on a thread while the process started (lenetlab.prefetch), if it was asked to
        _ARRAYS[key] = read_idx(path, prefetch.take(path))
    else:
        prefetch.take(path, wait=False)      # read already: the thread's copy is not needed
    return _ARRAYS[key].copy()


def load_raw(name: str = "mnist", data_dir: str | None = None, download: bool = True
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels) as uint8 arrays.

    ``name`` may also be ``npz:PATH`` or ``folder:PATH``, your own data (:mod:`lenetlab.data.own`): its
    images are (N, H, W) for one channel and (N, C, H, W) for more, and ``data_dir`` is not used.
    """
    from lenetlab.data import own

    if own.is_own(name):
        d = own.load(name)
        return d.train_x, d.train_y, d.test_x, d.test_y
    files = locate(name, data_dir, download)
    arrays = [_read_cached(files[f]) for f in FILES]
    for imgs, labels, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "test")):
        if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
            raise LenetlabError(
                f"{name}: {split} images {imgs.shape} and labels {labels.shape} do not match")
    return arrays[0], arrays[1], arrays[2], arrays[3]


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``: a registered one, or one made for ``npz:PATH`` / ``folder:PATH`` data
    (with its class names). Use this rather than ``registry.get("dataset", name)`` where own data may come."""
    from lenetlab.data import own
    from lenetlab.registry import get

    return own.spec(name) if own.is_own(name) else get("dataset", name)

"""Your own data: ``data.dataset = "npz:PATH"`` or ``"folder:PATH"``.

Either string works wherever a dataset name does: ``lenetlab train --dataset
npz:digits.npz``, ``--set data.dataset=folder:photos``, ``dataset = "npz:..."``
in the ``[data]`` table of a TOML config, ``lenetlab eval RUN --dataset ...``.

``npz:PATH`` - a NumPy ``.npz`` file (``np.savez``) holding four arrays:

- ``x_train``, ``x_test``: images, ``(N, H, W)`` (one channel), ``(N, H, W, C)``
  or ``(N, C, H, W)`` with C in 1..4, square (H == W);
  dtype uint8 (0..255), any integer dtype with values in 0..255, or float with
  every value in [0, 1] - floats are rounded to the nearest 1/255 (the whole
  pipeline is 8-bit, as MNIST is); floats outside [0, 1] are refused;
- ``y_train``, ``y_test``: integer labels 0..K-1, one per image;
- optional ``classes``: K class names (a 1-D string array); without it K is
  the largest label + 1 and the names are "0".."K-1".

The file is read with ``allow_pickle=False``: an object array is refused,
never unpickled.

``folder:PATH`` - image files (PNG, JPEG, BMP, GIF, PGM/PPM, TIFF, WebP), one
sub-folder per class::

    PATH/train/<class>/*.png     PATH/test/<class>/*.png

Class names, sorted, give the label ids (``cat`` 0, ``dog`` 1, ...); the test
classes must be train classes. Without ``train``/``test`` folders
(``PATH/<class>/*.png``) the test set is made by a fixed split: each class's
files sorted by name, shuffled with seed 0, and one in five (rounded; none of
a class with a single image) held out for testing - the same every time, so
``lenetlab eval`` scores the same images the run was tested on. Hidden files
(names starting with ".") are skipped; any other file that is not an image is
an error. Every image must have the same (square) size. All-grayscale images
load as one channel; if any image has colour, all load as RGB (alpha dropped).
Each image's header is checked against the 16-megapixel cap of ``lenetlab
predict`` before it is decoded.

Geometry from the data: :func:`adapt_config` (called by ``fit`` on a new run)
sets the model options ``in_channels``, ``input_size`` (H + 2 * data.pad) and
``num_classes`` from the data, replaces a relative PATH by an absolute one,
and - with ``normalize = "standard"`` and mean/std left at their (MNIST)
defaults - sets ``data.mean``/``data.std`` to the training images' pixel
statistics (over all channels, in [0, 1] units). Everything lands in
config.json, so ``lenetlab eval`` and :func:`lenetlab.rundir.load_model`
rebuild the same model and normalisation. A model without those options
(e.g. ``lenet5_classic``) must fit the data as it is, else one
error line says what it takes.

In memory (what :func:`lenetlab.data.datasets.load_raw` returns for these
names) images are uint8 ``(N, H, W)`` for one channel and ``(N, C, H, W)``
otherwise. Every problem (missing file or key, mismatched lengths, labels out
of range, mixed or non-square sizes, non-image files, too many pixels) is one
:class:`~lenetlab.errors.LenetlabError` line.

Example::

    np.savez("digits.npz", x_train=xs, y_train=ys, x_test=xt, y_test=yt)
    lenetlab train --dataset npz:digits.npz --out runs/mine
"""

from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenetlab.errors import LenetlabError

PREFIXES = ("npz:", "folder:")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".pbm", ".pnm", ".tif", ".tiff",
                  ".webp")
# all images of a dataset together: 500 M values is 500 MB as uint8 and 2 GB as the float32 the trainer holds
MAX_TOTAL_VALUES = 500_000_000
MAX_CLASSES = 10_000
TEST_EVERY = 5          # folder without train/test: one image in TEST_EVERY of each class is a test image
SPLIT_SEED = 0


@dataclass(frozen=True)
class OwnData:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]

    @property
    def channels(self) -> int:
        return 1 if self.train_x.ndim == 3 else int(self.train_x.shape[1])

    @property
    def size(self) -> int:
        return int(self.train_x.shape[-1])


def is_own(name: Any) -> bool:
    """True for ``npz:PATH`` / ``folder:PATH`` dataset names."""
    return isinstance(name, str) and name.startswith(PREFIXES)


def parse(name: str) -> tuple[str, Path]:
    kind, _, path = name.partition(":")
    if not path.strip():
        raise LenetlabError(f"dataset {name!r}: give a path after {kind}:, e.g. {kind}:my_data"
                            + (".npz" if kind == "npz" else ""))
    return kind, Path(path).expanduser()


# ------------------------------------------------------------------ cache
_CACHE: dict[tuple, OwnData] = {}


def load(name: str) -> OwnData:
    """The data named ``npz:PATH`` / ``folder:PATH``, checked; read once per process while the files stay the
    same (the caller gets copies it may change)."""
    d = _shared(name)
    return OwnData(d.train_x.copy(), d.train_y.copy(), d.test_x.copy(), d.test_y.copy(), d.classes)


def _shared(name: str) -> OwnData:
    """The cached data itself (for readers that change nothing)."""
    kind, path = parse(name)
    key = (kind, _signature(kind, path))
    if key not in _CACHE:
        if len(_CACHE) >= 8:
            _CACHE.clear()
        _CACHE[key] = _load_npz(path) if kind == "npz" else _load_folder(path)
    return _CACHE[key]


def _signature(kind: str, path: Path) -> tuple:
    if kind == "npz":
        if not path.is_file():
            raise LenetlabError(f"{path}: no such .npz file" + (" (it is a folder: use folder:PATH)"
                                                                 if path.is_dir() else ""))
        st = path.stat()
        return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if not path.is_dir():
        raise LenetlabError(f"{path}: no such folder" + (" (it is a file: use npz:PATH)"
                                                         if path.is_file() else ""))
    entries = []
    for p in sorted(path.rglob("*")):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((str(p.relative_to(path)), st.st_size, st.st_mtime_ns))
    return (str(path.resolve()), tuple(entries))


# ------------------------------------------------------------------ npz
def _npz_header(zf: zipfile.ZipFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of member ``key`` read from its .npy header, before any data is loaded."""
    try:
        with zf.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise LenetlabError(f"{path}: array {key!r} is not a readable .npy array ({e})") from None
    return shape, dtype


def _load_npz(path: Path) -> OwnData:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise LenetlabError(f"{path}: not a .npz file ({e})") from None
    with zf:
        members = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        missing = [k for k in NPZ_KEYS if k not in members]
        if missing:
            raise LenetlabError(f"{path}: missing array(s) {', '.join(missing)}; an npz dataset holds "
                                f"{', '.join(NPZ_KEYS)} (and optionally classes), has: "
                                f"{', '.join(sorted(members)) or 'nothing'}")
        total = 0
        for k in NPZ_KEYS + (("classes",) if "classes" in members else ()):
            shape, dtype = _npz_header(zf, k, path)
            if dtype.hasobject:
                raise LenetlabError(f"{path}: array {k!r} holds Python objects; save plain numbers "
                                    "(object arrays are never unpickled)")
            total += int(np.prod(shape, dtype=np.int64)) if k.startswith("x_") else 0
        if total > MAX_TOTAL_VALUES:
            raise LenetlabError(f"{path}: the images hold {total:,} values; the limit is {MAX_TOTAL_VALUES:,}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in NPZ_KEYS}
            names = npz["classes"] if "classes" in members else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise LenetlabError(f"{path}: cannot read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                            ) from None
    where = str(path)
    train_x = _images(arrays["x_train"], f"{where}: x_train")
    test_x = _images(arrays["x_test"], f"{where}: x_test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise LenetlabError(f"{where}: x_train images are {_shape(train_x)} but x_test images are "
                            f"{_shape(test_x)}")
    train_y = _labels(arrays["y_train"], len(train_x), f"{where}: y_train", "x_train")
    test_y = _labels(arrays["y_test"], len(test_x), f"{where}: y_test", "x_test")
    top = int(max(train_y.max(), test_y.max()))
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US" or len(names) < 2:
            raise LenetlabError(f"{where}: classes must be a 1-D array of at least 2 names (strings), got "
                                f"shape {names.shape} dtype {names.dtype}")
        classes = tuple(str(n.decode() if isinstance(n, bytes) else n) for n in names.tolist())
        if top >= len(classes):
            raise LenetlabError(f"{where}: label {top} is out of range for the {len(classes)} classes "
                                f"(labels must be 0..{len(classes) - 1})")
    else:
        classes = tuple(str(i) for i in range(top + 1))
    return _checked(OwnData(train_x, train_y, test_x, test_y, classes), where)


def _shape(x: np.ndarray) -> str:
    return "x".join(map(str, x.shape[1:]))


def _images(a: np.ndarray, where: str) -> np.ndarray:
    """Images as uint8 (N, H, W) or (N, C, H, W)."""
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise LenetlabError(f"{where}: images must be uint8, integers 0..255 or floats in [0, 1], "
                            f"got dtype {a.dtype}")
    if a.ndim == 4:
        c_last = a.shape[3] <= 4 and a.shape[1] == a.shape[2]
        c_first = a.shape[1] <= 4 and a.shape[2] == a.shape[3]
        if c_last and c_first and a.shape[1] != a.shape[3]:
            raise LenetlabError(f"{where}: shape {a.shape} is ambiguous (channels first or last?)")
        if c_first:
            pass
        elif c_last:
            a = np.moveaxis(a, 3, 1)
        else:
            raise LenetlabError(f"{where}: expected (N, H, W, C) or (N, C, H, W) with 1..4 channels and square "
                                f"images, got shape {a.shape}")
        if a.shape[1] < 1:
            raise LenetlabError(f"{where}: images have no channels (shape {a.shape})")
        if a.shape[1] == 1:
            a = a[:, 0]
    elif a.ndim != 3:
        raise LenetlabError(f"{where}: expected images shaped (N, H, W), (N, H, W, C) or (N, C, H, W), "
                            f"got shape {a.shape}")
    if len(a) == 0:
        raise LenetlabError(f"{where}: no images")
    h, w = a.shape[-2:]
    if h != w:
        raise LenetlabError(f"{where}: images are {h}x{w}; LeNet models take square images (pad or crop them)")
    if h * w > _max_pixels():
        raise LenetlabError(f"{where}: images are {h}x{w} pixels; the limit is {_max_pixels():,} pixels")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise LenetlabError(f"{where}: images contain NaN or infinity")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise LenetlabError(f"{where}: float images must lie in [0, 1], got values in [{lo:g}, {hi:g}]"
                                + (" (0..255 data: save it as uint8)" if hi <= 255.0 and lo >= 0.0 else ""))
        return np.ascontiguousarray(np.rint(a * 255.0).astype(np.uint8))
    if a.dtype != np.uint8:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise LenetlabError(f"{where}: integer images must lie in 0..255, got values in {lo}..{hi}")
    return np.ascontiguousarray(a.astype(np.uint8))


def _labels(y: np.ndarray, n: int, where: str, images: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise LenetlabError(f"{where}: labels must be integers 0..K-1, got dtype {y.dtype}")
    if y.ndim != 1:
        raise LenetlabError(f"{where}: labels must be 1-D (one per image), got shape {y.shape}")
    if len(y) != n:
        raise LenetlabError(f"{where}: {len(y)} labels for {n} images in {images}")
    if y.min() < 0:
        raise LenetlabError(f"{where}: label {int(y.min())} is negative; labels must be 0..K-1")
    if y.max() >= MAX_CLASSES:
        raise LenetlabError(f"{where}: label {int(y.max())} is out of range (at most {MAX_CLASSES} classes)")
    return y.astype(np.int64)


def _checked(d: OwnData, where: str) -> OwnData:
    if len(d.classes) < 2:
        raise LenetlabError(f"{where}: needs at least 2 classes, found {len(d.classes)}")
    values = d.train_x.size + d.test_x.size
    if values > MAX_TOTAL_VALUES:
        raise LenetlabError(f"{where}: the images hold {values:,} values; the limit is {MAX_TOTAL_VALUES:,}")
    return d


def _max_pixels() -> int:
    from lenetlab.data.images import MAX_PIXELS

    return MAX_PIXELS


# ------------------------------------------------------------------ folder
def _class_dirs(root: Path) -> dict[str, list[Path]]:
    """{class name: its image files, sorted}; anything else in ``root`` is an error."""
    out: dict[str, list[Path]] = {}
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if not p.is_dir():
            raise LenetlabError(f"{p}: expected only class folders in {root} (one sub-folder per class)")
        files = []
        for f in sorted(p.iterdir()):
            if f.name.startswith("."):
                continue
            if f.is_dir():
                raise LenetlabError(f"{f}: a folder inside class folder {p.name!r}; put the images directly in it")
            files.append(f)
        if not files:
            raise LenetlabError(f"{p}: class folder has no images")
        out[p.name] = files
    if not out:
        raise LenetlabError(f"{root}: no class folders (expected {root}/<class>/*.png)")
    return out


def _load_folder(root: Path) -> OwnData:
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        have, lack = ("train", "test") if train_dir.is_dir() else ("test", "train")
        raise LenetlabError(f"{root}: has a {have}/ folder but no {lack}/ folder (give both, or neither: "
                            "then one image in 5 of each class is held out for testing)")
    if train_dir.is_dir():
        train, test = _class_dirs(train_dir), _class_dirs(test_dir)
        classes = tuple(sorted(train))
        extra = sorted(set(test) - set(train))
        if extra:
            raise LenetlabError(f"{test_dir}: class folder(s) {', '.join(extra)} have no training images "
                                f"in {train_dir}")
    else:
        every = _class_dirs(root)
        classes = tuple(sorted(every))
        train, test = {}, {}
        for c in classes:
            files = every[c]
            order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
            k = int(round(len(files) / TEST_EVERY)) if len(files) > 1 else 0
            test[c] = [files[i] for i in sorted(order[len(files) - k:])]
            train[c] = [files[i] for i in sorted(order[:len(files) - k])]
        if not any(test.values()):
            raise LenetlabError(f"{root}: too few images to hold any out for testing (give train/ and test/)")
    if len(classes) < 2:
        raise LenetlabError(f"{root}: needs at least 2 class folders, found {len(classes)}")
    label = {c: i for i, c in enumerate(classes)}
    tr_files = [(f, label[c]) for c in classes for f in train[c]]
    te_files = [(f, label[c]) for c in sorted(test) for f in test[c]]
    if not te_files:
        raise LenetlabError(f"{test_dir}: no test images")
    images, colour = _read_images([f for f, _ in tr_files + te_files], root)
    x = np.stack([_to_array(im, colour) for im in images])
    n = len(tr_files)
    y = np.array([c for _, c in tr_files + te_files], dtype=np.int64)
    return _checked(OwnData(x[:n], y[:n], x[n:], y[n:], classes), str(root))


def _read_images(files: list[Path], root: Path) -> tuple[list[Any], bool]:
    """Decoded PIL images (all one square size), and whether any has colour."""
    from PIL import Image, UnidentifiedImageError

    limit = _max_pixels()
    out, size, first, colour, total = [], None, None, False, 0
    for f in files:
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            raise LenetlabError(f"{f}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
        try:
            with Image.open(f) as im:
                w, h = im.size    # from the header: refuse before decoding (a decompression bomb)
                if w * h > limit:
                    raise LenetlabError(f"{f}: image is {w}x{h} pixels; the limit is {limit:,} pixels")
                im.load()
                img = im.copy()
        except Image.DecompressionBombError:
            raise LenetlabError(f"{f}: image is too large to decode safely; the limit is {limit:,} pixels") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LenetlabError(f"{f}: cannot read image ({why})") from None
        if size is None:
            size, first = img.size, f
            if w != h:
                raise LenetlabError(f"{f}: image is {w}x{h}; LeNet models take square images (pad or crop them)")
        elif img.size != size:
            raise LenetlabError(f"{f}: image is {w}x{h} but {first} is {size[0]}x{size[1]}; "
                                "every image must have the same size")
        total += w * h * 3
        if total > MAX_TOTAL_VALUES:
            raise LenetlabError(f"{root}: the images hold more than {MAX_TOTAL_VALUES:,} values")
        colour = colour or img.mode not in ("1", "L", "LA", "I", "I;16", "F")
        out.append(img)
    return out, colour


def _to_array(img: Any, colour: bool) -> np.ndarray:
    if colour:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    if img.mode in ("I", "I;16", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I") and a.max() > 255 else 255.0
        return np.clip(np.rint(a * 255.0 / hi), 0, 255).astype(np.uint8)
    return np.asarray(img.convert("L"), dtype=np.uint8)


# ------------------------------------------------------------------ config from data
def spec(name: str) -> Any:
    """A :class:`~lenetlab.data.datasets.DatasetSpec` for ``npz:``/``folder:`` data (its class names)."""
    from lenetlab.data.datasets import DatasetSpec

    d = _shared(name)
    return DatasetSpec(name=name, sha256={}, base_url=None, license=f"your own data ({name})", classes=d.classes)


def pixel_stats(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of uint8 images in [0, 1] units (over every pixel and channel)."""
    v = x.reshape(-1).astype(np.float64) / 255.0
    return float(v.mean()), float(v.std())


def adapt_config(cfg: Any) -> Any:
    """``cfg`` (a RunConfig) with the model's geometry and the normalisation taken from own data; the same
    ``cfg`` for the registered datasets. Checks that the model can take the data."""
    if not is_own(cfg.data.dataset):
        return cfg
    from lenetlab.config import DataConfig

    kind, path = parse(cfg.data.dataset)
    d = _shared(cfg.data.dataset)
    data = dataclasses.replace(cfg.data, dataset=f"{kind}:{path.resolve()}")
    defaults = DataConfig()
    if data.normalize == "standard" and (data.mean, data.std) == (defaults.mean, defaults.std):
        mean, std = pixel_stats(d.train_x)
        if std <= 0.0:
            raise LenetlabError(f"{cfg.data.dataset}: every training pixel is the same value; nothing to learn")
        data = dataclasses.replace(data, mean=mean, std=std)
    side = d.size + 2 * data.pad
    geometry = {"in_channels": d.channels, "input_size": side, "num_classes": len(d.classes)}
    from lenetlab.models import make_config

    fields = {f.name for f in dataclasses.fields(make_config(cfg.model.name, {}))}
    options = dict(cfg.model.options)
    options.update({k: v for k, v in geometry.items() if k in fields})
    model = dataclasses.replace(cfg.model, options=options)
    out = dataclasses.replace(cfg, data=data, model=model)
    check_model_fits(out, d)
    return out


def check_model_fits(cfg: Any, d: OwnData) -> None:
    """One error line if model ``cfg.model`` cannot take the data's images or has the wrong number of outputs."""
    import torch

    from lenetlab.models import create_model

    net = create_model(cfg.model.name, **cfg.model.options)
    side = d.size + 2 * cfg.data.pad
    shape = (d.channels, side, side)
    want = tuple(getattr(net, "input_shape", ()) or ())
    name = cfg.model.name
    if want and want != shape:
        raise LenetlabError(f"model {name} takes {'x'.join(map(str, want))} inputs but {cfg.data.dataset} gives "
                            f"{'x'.join(map(str, shape))} (channels x height x width, with data.pad "
                            f"{cfg.data.pad}); choose a model with in_channels/input_size options, e.g. lenet5")
    net.eval()
    try:
        with torch.no_grad():
            logits = net(torch.zeros((1, *shape)))
    except RuntimeError as e:
        raise LenetlabError(f"model {name} cannot take {'x'.join(map(str, shape))} inputs "
                            f"({str(e).splitlines()[0]})") from None
    k = len(d.classes)
    if logits.ndim != 2 or logits.shape[1] != k:
        raise LenetlabError(f"model {name} has {logits.shape[-1]} outputs but {cfg.data.dataset} has {k} classes; "
                            "choose a model with a num_classes option, e.g. lenet5")

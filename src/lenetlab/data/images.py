"""Turn an arbitrary image into an MNIST-like 28x28 digit (for ``lenetlab predict``).

The MNIST recipe (LeCun et al.): white ink on black, the digit's bounding box
scaled to fit 20x20 keeping its aspect ratio, then placed in a 28x28 frame so
that its centre of mass is at the centre. Dark-on-light images (a scan, a
drawing) are inverted first, decided by the border brightness.

Accepts PNG / PGM / anything Pillow reads, and ``.npy`` 2-D arrays (loaded
with ``allow_pickle=False``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lenetlab.errors import LenetlabError

# 16 megapixels: far above any digit photo or scan a user would classify, far below what hurts memory
MAX_PIXELS = 16_000_000


def load_gray(path: str | Path) -> np.ndarray:
    """Grayscale float image in [0, 1] (not yet MNIST-converted)."""
    p = Path(path)
    if not p.is_file():
        raise LenetlabError(f"{p}: no such image file")
    if p.suffix.lower() == ".npy":
        try:
            a = np.load(p, allow_pickle=False, mmap_mode="r")   # the header first: refuse huge arrays unread
        except (ValueError, OSError, EOFError) as e:
            raise LenetlabError(f"{p}: cannot read .npy image ({e})") from None
        if a.size > MAX_PIXELS:
            raise LenetlabError(f"{p}: array has {a.size:,} values; the limit is {MAX_PIXELS:,} pixels")
        a = np.squeeze(a)
        if a.ndim != 2 or a.size == 0 or not np.issubdtype(a.dtype, np.number):
            raise LenetlabError(f"{p}: expected a 2-D numeric array, got shape {a.shape} dtype {a.dtype}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise LenetlabError(f"{p}: image contains NaN or infinity")
        return np.clip(a / 255.0 if a.max() > 1.0 else a, 0.0, 1.0)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            # the header alone says how big the decoded image would be: refuse before decoding, so a few
            # KB of compressed PNG cannot ask for gigabytes (a decompression bomb)
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise LenetlabError(f"{p}: image is {w}x{h} pixels; the limit is {MAX_PIXELS:,} pixels "
                                    "(resize it first)")
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            g = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except Image.DecompressionBombError as e:     # raised by Image.open itself for the largest headers
        import re

        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(m.group(1)):,} pixels, " if m else ""
        raise LenetlabError(f"{p}: image is {size}too large to decode safely; the limit is {MAX_PIXELS:,} "
                            "pixels (resize it first)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LenetlabError(f"{p}: cannot read image ({why})") from None
    return g


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """[0,1] grayscale of any size -> 28x28 float32 in [0,1], white digit on black, centred."""
    g = np.asarray(gray, dtype=np.float64)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    if border.mean() > 0.5:
        g = 1.0 - g
    g = g - np.median(border if border.mean() <= 0.5 else 1.0 - border)
    g = np.clip(g, 0.0, None)
    if g.max() <= 1e-6:
        raise LenetlabError("image is blank: no digit found")
    g = g / g.max()
    ys, xs = np.nonzero(g > 0.1)
    crop = g[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    from PIL import Image

    small = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((nw, nh), Image.LANCZOS),
                       dtype=np.float64) / 255.0
    out = np.zeros((28, 28))
    top, left = (28 - nh) // 2, (28 - nw) // 2
    out[top:top + nh, left:left + nw] = small
    # shift the centre of mass to the centre (integer shift, as in the MNIST recipe)
    total = out.sum()
    cy = (out.sum(1) * np.arange(28)).sum() / total
    cx = (out.sum(0) * np.arange(28)).sum() / total
    dy, dx = int(round(13.5 - cy)), int(round(13.5 - cx))
    dy = int(np.clip(dy, -top, 28 - nh - top))
    dx = int(np.clip(dx, -left, 28 - nw - left))
    out = np.roll(np.roll(out, dy, 0), dx, 1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)

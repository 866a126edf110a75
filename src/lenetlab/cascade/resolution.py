"""Resolution cascades: look at a pixelated image first, read more pixels only when unsure.

Rohlfs (2022/23, docs/papers/cascade.md): an image is shown to the classifier at
the coarsest resolution s of a ladder (e.g. 7 -> 14 -> 28): downsampled from
28x28 to s x s by area averaging (what a coarse sensor would record), then
resized back up to 28x28 bilinearly, so the one model trained on full-resolution
images sees every level. A finer level is read only while the max softmax
probability is below the threshold (rules in :mod:`lenetlab.cascade.core`).
Data used = sum of s^2 over the levels read, relative to 28^2 (a 7,14,28 ladder
that reads every level costs (49 + 196 + 784) / 784 = 131%).

Works with any registered classifier: its run's :class:`~lenetlab.config.DataConfig`
normalises (and pads, for the 32x32 ``lenet5_classic``) each pixelated image.

Example::

    from lenetlab.rundir import load_model
    from lenetlab.data.datasets import load_raw
    model, cfg = load_model("runs/tanh")
    _, _, x, y = load_raw("mnist")
    out = resolution_cascade(model, x, cfg.data, ladder=(7, 14, 28), threshold=0.9)
    out.accuracy(torch.from_numpy(y).long()), out.mean_cost()     # accuracy, data used (x 28^2)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lenetlab.cascade.core import CascadeOutcome, run_cascade, run_cascade_lazy
from lenetlab.config import DataConfig
from lenetlab.data.transforms import from_unit
from lenetlab.errors import LenetlabError


def parse_ladder(text: str | Sequence[int], full: int = 28) -> tuple[int, ...]:
    """'7,14,28' -> (7, 14, 28); sizes must be integers in [1, full], strictly increasing."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            raise LenetlabError(f"ladder must be comma-separated integers like 7,14,28, got {text!r}") from None
    else:
        sizes = [int(s) for s in text]
    if not sizes:
        raise LenetlabError("ladder is empty; give sizes like 7,14,28")
    bad = [s for s in sizes if not 1 <= s <= full]
    if bad:
        raise LenetlabError(f"ladder sizes must be between 1 and {full} (the image size), got {bad[0]}")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise LenetlabError(f"ladder must be strictly increasing (coarse to fine), got {sizes}")
    return tuple(sizes)


def data_costs(ladder: Sequence[int], full: int = 28) -> list[float]:
    """Data read at each level, relative to one full image: s^2 / full^2."""
    return [s * s / (full * full) for s in ladder]


def _as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dim() != 3 or x.shape[1] != x.shape[2]:
        raise LenetlabError(f"images must be (N, H, H) square grey images, got shape {tuple(x.shape)}")
    return x


def pixelate(images: np.ndarray | torch.Tensor, s: int) -> torch.Tensor:
    """(N, H, H) images (uint8 or float) -> float32 (N, H, H): area-downsample to s x s, bilinear back up.

    Pixel values keep their scale (0..255 for uint8 input); s == H returns the
    images unchanged.
    """
    x = _as_tensor(images).to(torch.float32).unsqueeze(1)
    h = x.shape[-1]
    if not 1 <= s <= h:
        raise LenetlabError(f"resolution {s} must be between 1 and the image size {h}")
    if s == h:
        return x.squeeze(1).clone()
    small = F.interpolate(x, size=(s, s), mode="area")
    return F.interpolate(small, size=(h, h), mode="bilinear", align_corners=False).squeeze(1)


def level_input(images: np.ndarray | torch.Tensor, s: int, data: DataConfig) -> torch.Tensor:
    """Model input for resolution level ``s``: pixelate, then the run's normalisation and padding."""
    return from_unit(pixelate(images, s).unsqueeze(1) / 255.0, data)


@torch.no_grad()
def _probs(model: nn.Module, images: torch.Tensor, s: int, data: DataConfig, batch_size: int) -> torch.Tensor:
    model.eval()
    out = [torch.softmax(model(level_input(images[i:i + batch_size], s, data)).float(), 1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def resolution_probs(model: nn.Module, images: np.ndarray | torch.Tensor, data: DataConfig,
                     ladder: Sequence[int], batch_size: int = 2000) -> torch.Tensor:
    """Softmax probabilities of ``model`` at every level: (len(ladder), N, classes)."""
    x = _as_tensor(images)
    ladder = parse_ladder(ladder, x.shape[-1])
    return torch.stack([_probs(model, x, s, data, batch_size) for s in ladder])


def resolution_cascade(model: nn.Module, images: np.ndarray | torch.Tensor, data: DataConfig,
                       ladder: Sequence[int] = (7, 14, 28), threshold: float = 0.9, rule: str = "coarse_to_fine",
                       batch_size: int = 2000, probs: torch.Tensor | None = None) -> CascadeOutcome:
    """Run the resolution cascade; ``cost`` is the data read per image relative to H^2.

    Each level runs the model only on the images still unsure. Pass ``probs``
    (from :func:`resolution_probs`) to evaluate many thresholds without rerunning the model.
    """
    x = _as_tensor(images)
    ladder = parse_ladder(ladder, x.shape[-1])
    costs = data_costs(ladder, x.shape[-1])
    if probs is not None:
        return run_cascade(probs, costs, threshold, rule)
    levels = [lambda idx, s=s: _probs(model, x[idx], s, data, batch_size) for s in ladder]
    return run_cascade_lazy(levels, costs, len(x), threshold, rule)

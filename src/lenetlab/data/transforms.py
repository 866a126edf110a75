"""Pixel normalisation, recorded in :class:`~lenetlab.config.DataConfig`.

``standard``: (p/255 - mean)/std (the usual MNIST statistics);
``unit``: p/255 in [0, 1]; ``lecun``: -0.1 + 1.275 p/255, LeCun et al. 1998,
so the background is -0.1 and ink is about 1.175 (mean ~0, variance ~1).
Padding fills with the normalised value of a background (0) pixel, as the
1998 paper zero-pads 28x28 digits to 32x32 before normalising.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lenetlab.config import DataConfig
from lenetlab.errors import LenetlabError

NORMALIZATIONS = ("standard", "unit", "lecun")


def scale_shift(cfg: DataConfig) -> tuple[float, float]:
    """(a, b) with normalised = a * p + b for uint8 pixel p."""
    if cfg.normalize == "standard":
        return 1.0 / (255.0 * cfg.std), -cfg.mean / cfg.std
    if cfg.normalize == "unit":
        return 1.0 / 255.0, 0.0
    if cfg.normalize == "lecun":
        return 1.275 / 255.0, -0.1
    raise LenetlabError(f"unknown normalisation {cfg.normalize!r}; choose from: {', '.join(NORMALIZATIONS)}")


def to_model_input(images_u8: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H+2p, W+2p), normalised and padded; (N, C, H, W) keeps its C."""
    a, b = scale_shift(cfg)
    x = images_u8.to(torch.float32).mul_(a).add_(b)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if cfg.pad:
        x = F.pad(x, (cfg.pad,) * 4, value=b)
    return x


def from_unit(x01: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """[0,1] float images (N,1,H,W) -> model input (used by attacks and predict)."""
    a, b = scale_shift(cfg)
    x = x01 * (255.0 * a) + b
    if cfg.pad:
        x = F.pad(x, (cfg.pad,) * 4, value=b)
    return x

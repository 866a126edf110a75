"""Figures of fault campaigns: SDC-rate heatmaps (layer x bit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lenetlab.fileio import save_figure


def heatmap(summary: dict[str, Any], path: str | Path, title: str = "") -> None:
    """SDC rate per (layer, bit position) as a heatmap PNG, the 95% CI half-width in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = summary["layers"]
    bits = sorted({b["bit"] for la in layers for b in la["bits"]})
    grid = np.full((len(layers), len(bits)), np.nan)
    for i, la in enumerate(layers):
        for b in la["bits"]:
            grid[i, bits.index(b["bit"])] = 100 * b["rate"]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(bits) + 2), 0.6 * len(layers) + 1.8))
    im = ax.imshow(grid, aspect="auto", cmap="magma_r", vmin=0, vmax=max(1e-9, np.nanmax(grid)))
    ax.set_xticks(range(len(bits)), [str(b) for b in bits], fontsize=7)
    ax.set_yticks(range(len(layers)), [la.get("name", str(la["stage"])) for la in layers])
    ax.set_xlabel("bit position (0 = LSB)")
    if len(bits) * len(layers) <= 64:
        for i, la in enumerate(layers):
            for b in la["bits"]:
                ax.text(bits.index(b["bit"]), i, f"{100 * b['rate']:.1f}", ha="center", va="center", fontsize=6,
                        color="white" if 100 * b["rate"] > 0.6 * np.nanmax(grid) else "black")
    fig.colorbar(im, ax=ax, label="SDC rate % (top-1 change)")
    ax.set_title(title or f"{summary['target']} faults ({summary['fault_model']}), "
                 f"{summary['images']} images, {summary['faults']} faults", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)

"""PCA (100 components) + logistic regression: the cheap first stage of Rohlfs' model cascade.

Rohlfs (2022/23, docs/papers/cascade.md) runs this cheap classifier first and
LeNet-5 only when it is unsure. The PCA is a *fixed* projection stored as
buffers (``pca.weight``, ``pca.bias``: whitened components and the centring
offset), fitted on a seeded subset of training images with NumPy; the logistic regression
is the only trainable layer (``linear``, 100 x 10 + 10 = 1,010 parameters).

Cost: 784 x 100 (projection) + 100 x 10 (regression) = 79,400 MACs per image
by :mod:`lenetlab.models.macs`' convention; the paper counts this model as
~0 next to LeNet-5's ~0.42 M, and lenetlab's cascade reports both.

Fitting: ``fit`` calls the model's ``prepare_from_data(train_x, seed)``, which
fits the PCA (:func:`fit_pca`, on ``pca_samples`` images); the regression is
then trained like any model (``lenetlab train --model pca_logreg``: mini-batch
Adam). :func:`train_pca_logreg` trains the same way through ``fit`` but fits the
regression by full-batch L-BFGS from zeros (the ``lbfgs`` trainer plugin, the
same optimisation as :func:`fit_logreg`), and writes a normal run directory.

Example::

    from lenetlab.train.presets import resolve
    from lenetlab.models.pca_logreg import train_pca_logreg
    s = train_pca_logreg(resolve("fast", "pca_logreg"), out="runs/pca")
    s["test_accuracy"]     # ~0.92 on MNIST
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.models.base import register_model


@dataclass
class PCALogRegConfig:
    components: int = 100
    input_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    init_seed: int = 0        # seed of the random orthonormal projection used until fit_pca is run
    pca_samples: int = 10_000  # training images the PCA is fitted on (prepare_from_data)


class FixedProjection(nn.Module):
    """z = x_flat @ weight.T + bias with fixed (buffer) weights: a fitted PCA, no trainable parameters."""
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise

    def __init__(self, in_features: int, out_features: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(in_features, out_features, generator=g))
        self.register_buffer("weight", q.t().contiguous())
        self.register_buffer("bias", torch.zeros(out_features))
        self.register_buffer("fitted", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias)


class PCALogReg(nn.Module):
    row_wise = True   # one sample's output depends on that sample only: lenetlab.noise.inject.row_wise
    default_loss = "ce"

    def __init__(self, cfg: PCALogRegConfig):
        super().__init__()
        d = cfg.in_channels * cfg.input_size * cfg.input_size
        if not 1 <= cfg.components <= d:
            raise LenetlabError(f"model.components must be in [1, {d}], got {cfg.components}")
        self.input_shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        self.pca = FixedProjection(d, cfg.components, cfg.init_seed)
        self.linear = nn.Linear(cfg.components, cfg.num_classes)
        self.pca_samples = cfg.pca_samples
        self.pca_info: dict[str, float] = {}
        self._warned = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.pca.fitted) and not self._warned:
            self._warned = True
            warnings.warn("pca_logreg: training on an unfitted (random) projection; fit the PCA first with "
                          "lenetlab.models.pca_logreg.train_pca_logreg or fit_pca", stacklevel=2)
        return self.linear(self.pca(x))

    def prepare_from_data(self, train_x: torch.Tensor, seed: int = 0) -> None:
        """Fit the PCA on training inputs (a trainer hook; the regression is then trained as usual)."""
        self.pca_info = fit_pca(self, train_x, samples=self.pca_samples, seed=seed)


@register_model("pca_logreg", PCALogRegConfig)
def pca_logreg(cfg: PCALogRegConfig) -> PCALogReg:
    """PCA-100 (fixed buffers) + logistic regression, Rohlfs' cheap stage (79,400 MACs; fit with train_pca_logreg)."""
    return PCALogReg(cfg)


@torch.no_grad()
def fit_pca(model: PCALogReg, x: torch.Tensor, samples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Fit the PCA buffers on ``samples`` seeded training inputs (model-ready tensors).

    The components are whitened (scaled by 1/sqrt(eigenvalue)) so that every
    score has unit variance on the training data - the regression then fits
    quickly and its L2 penalty treats all components alike. Signs are fixed
    (largest coefficient positive) so the fit does not depend on LAPACK's sign choice.
    """
    flat = x.reshape(len(x), -1).numpy()
    k = model.pca.weight.shape[0]
    if flat.shape[1] != model.pca.weight.shape[1]:
        raise LenetlabError(f"pca_logreg expects {model.pca.weight.shape[1]} input values, got {flat.shape[1]}")
    n = min(samples, len(flat))
    if n <= k:
        raise LenetlabError(f"fit_pca: {n} images cannot give {k} components; use more than {k}")
    rng = np.random.default_rng(seed)
    sub = flat[np.sort(rng.permutation(len(flat))[:n])].astype(np.float64)
    mean = sub.mean(0)
    centred = sub - mean
    # eigenvectors of the covariance = right singular vectors of the centred data; the 784x784
    # eigenproblem takes ~1 s on 2 cores where the SVD of the 10,000x784 data matrix takes ~10 s
    var, vecs = np.linalg.eigh(centred.T @ centred / max(1, len(sub) - 1))
    var, vecs = np.maximum(var[::-1], 0.0), vecs[:, ::-1]          # descending
    comps = vecs[:, :k].T
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
    comps = comps * signs[:, None] / np.sqrt(np.maximum(var[:k], 1e-12))[:, None]
    model.pca.weight.copy_(torch.from_numpy(comps.copy()))
    model.pca.bias.copy_(torch.from_numpy(-comps @ mean))
    model.pca.fitted.fill_(True)
    return {"pca_images": len(sub), "explained_variance": float(var[:k].sum() / var.sum())}


def fit_logreg(model: PCALogReg, x: torch.Tensor, y: torch.Tensor, l2: float = 1e-4, max_iter: int = 200
               ) -> dict[str, float]:
    """Fit the regression layer: mean cross-entropy + l2/2 ||W||^2 by full-batch L-BFGS, from zeros.

    The problem is convex, so starting from zeros makes the fit deterministic
    and independent of any seed.
    """
    with torch.no_grad():
        z = model.pca(x)
        model.linear.weight.zero_()
        model.linear.bias.zero_()
    opt = torch.optim.LBFGS(model.linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model.linear(z), y) + 0.5 * l2 * model.linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    state = opt.state[opt._params[0]]
    with torch.no_grad():
        loss = float(F.cross_entropy(model.linear(z), y))
    return {"train_loss": loss, "lbfgs_iterations": int(state.get("n_iter", 0)), "l2": l2}


def train_pca_logreg(cfg: Any, out: str | Path | None = None, force: bool = False, pca_samples: int = 10_000,
                     l2: float = 1e-4, max_iter: int = 200, log: Callable[[str], None] | None = None
                     ) -> dict[str, Any]:
    """Fit pca_logreg per ``cfg`` (a RunConfig naming ``pca_logreg``); write a run directory to ``out``.

    Trains through :func:`lenetlab.train.fit`: the model's ``prepare_from_data`` fits the PCA on
    ``pca_samples`` images (seed ``train.seed``), and the ``lbfgs`` trainer plugin fits the regression in
    one full-batch step (``train.lbfgs``: ``l2``, ``max_iter``; cross-entropy without label smoothing).
    ``summary["fit"]`` records how it was fitted.
    """
    import dataclasses

    from lenetlab.config import LBFGSConfig
    from lenetlab.data import load_splits
    from lenetlab.train import fit

    if cfg.model.name != "pca_logreg":
        raise LenetlabError(f"train_pca_logreg fits model 'pca_logreg', not {cfg.model.name!r}")
    splits = load_splits(cfg.data)
    if len(splits.train_x) == 0:
        raise LenetlabError("no training images (check data.train_subset / data.val_size)")
    train = dataclasses.replace(cfg.train, epochs=1, batch_size=len(splits.train_x), label_smoothing=0.0,
                                loss="ce", schedule="constant", stop_at_accuracy=None, grad_norms=False,
                                lbfgs=LBFGSConfig(enabled=True, l2=l2, max_iter=max_iter))
    model = dataclasses.replace(cfg.model, options={**cfg.model.options, "pca_samples": pca_samples})
    cfg = dataclasses.replace(cfg, model=model, train=train)
    summary = fit(cfg, out=out, force=force, splits=splits, log=None, progress=False)
    pca = summary["_model"].pca_info
    summary["fit"] = {"method": "PCA (NumPy eigendecomposition of the covariance) + L-BFGS logistic regression",
                      **pca, **summary.pop("lbfgs")}
    if out is not None:
        from lenetlab import rundir

        rundir.write_summary(Path(out), {k: v for k, v in summary.items() if k != "_model"})
    if log:
        log(f"pca_logreg: explained variance {pca['explained_variance']:.3f}, "
            f"test accuracy {100 * summary['test_accuracy']:.2f}%")
    return summary

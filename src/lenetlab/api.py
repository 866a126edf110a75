"""The documented Python API: thin wrappers over the library, with checked inputs (docs/api.md).

Every function here is also an attribute of the top-level package, loaded on
first use (``lenetlab.fit``, ``lenetlab.load_run``...). Images are given as
pixels, never as model inputs:

- float images in [0, 1], shape (N, H, W) or (N, 1, H, W), or
- uint8 digits (0..255) of the same shapes, as :func:`lenetlab.data.load_raw` returns them;

torch tensors or NumPy arrays. The normalisation the model was trained with is
applied inside: a :class:`Run` (from :func:`load_run`) brings its own; for a
plain ``nn.Module`` pass ``mean``/``std`` (``(x - mean) / std``) or ``data``
(a :class:`~lenetlab.config.DataConfig`); with neither, the model gets the
[0, 1] images as they are.

Example::

    import lenetlab
    from lenetlab.data import load_raw
    lenetlab.fit({"model": "lenet5", "data": {"train_subset": 2000}, "train": {"epochs": 1}}, out="runs/demo")
    run = lenetlab.load_run("runs/demo")
    _, _, x, y = load_raw("mnist")
    print(lenetlab.evaluate(run, x[:500], y[:500]))
    print(lenetlab.attack(run, x[:200], y[:200], "pgd", eps=0.1).adv_accuracy)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenetlab.errors import LenetlabError

if TYPE_CHECKING:   # pragma: no cover
    import torch
    from torch import nn

    from lenetlab.config import DataConfig, RunConfig

__all__ = ["Run", "AttackOutcome", "fit", "load_run", "evaluate", "attack", "noisy_accuracy", "fault_campaign",
           "export"]


# --------------------------------------------------------------------------
# runs


@dataclass
class Run:
    """A finished run directory, loaded: the model (eval mode), its config and summary."""

    path: Path
    model: nn.Module = field(repr=False)
    config: RunConfig = field(repr=False)
    summary: dict[str, Any] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        acc = (self.summary or {}).get("test_accuracy")
        return (f"Run({str(self.path)!r}, model={self.config.model.name!r}"
                + (f", test_accuracy={acc:.4f})" if isinstance(acc, float) else ")"))

    @property
    def data(self) -> DataConfig:
        """How the run's images were normalised (and padded): what the API applies to pixels for this model."""
        return self.config.data


def load_run(path: str | Path, *, device: Any = "cpu") -> Run:
    """Load a finished run directory (``lenetlab train --out DIR`` or :func:`fit` with ``out``).

    Returns a :class:`Run`: ``run.model`` (weights loaded, eval mode, on ``device``: ``cpu`` by default,
    ``auto``, ``cuda[:N]``, ``mps``), ``run.config`` (the full :class:`~lenetlab.config.RunConfig`),
    ``run.summary`` (summary.json, or None if absent), ``run.path``.
    """
    from lenetlab import devices, rundir

    if not isinstance(path, (str, Path)):
        raise LenetlabError(f"load_run takes a run directory path, got {type(path).__name__}")
    dev = devices.resolve(device, what="device")
    model, cfg = rundir.load_model(path)
    model.to(dev)
    p = Path(path)
    summary = rundir.read_summary(p) if (p / rundir.SUMMARY).is_file() else None
    return Run(p, model, cfg, summary)


def fit(config: RunConfig | Mapping[str, Any] | str | None = None, out: str | Path | None = None, *,
        callbacks: Sequence[Any] = (), device: Any = "auto", **kwargs: Any) -> dict[str, Any]:
    """Train a model: :func:`lenetlab.train.fit` with a friendlier ``config``.

    ``config`` is a :class:`~lenetlab.config.RunConfig` (used as it is), a preset name (``"fast"``,
    ``"paper"``), a nested dict laid out like a TOML config file (``{"model": "lenet5", "train":
    {"epochs": 1}}``; ``"model"`` may be a name or a table with the model's options; the ``preset`` key picks
    the preset, default ``fast``), or None (the fast preset on LeNet-5). ``callbacks`` get each epoch's
    metrics (see :func:`lenetlab.train.fit`; experiment trackers: :mod:`lenetlab.train.loggers`). ``device``:
    ``auto`` (CUDA, else MPS, else CPU; as ``lenetlab train``), ``cpu``, ``cuda[:N]``, ``mps`` or a
    ``torch.device``. Other keyword arguments go to :func:`lenetlab.train.fit` (``resume``, ``force``,
    ``log``, ``progress``, ``splits``, ``model``, ``plugins``).

    Returns the run summary (``test_accuracy``, ``epochs``, ``wall_seconds``...); ``summary["_model"]`` is
    the trained model (on ``device``).
    """
    from lenetlab.train import fit as train_fit

    return train_fit(_run_config(config), out, callbacks=callbacks, device=device, **kwargs)


def _run_config(config: Any) -> RunConfig:
    from lenetlab.config import RunConfig
    from lenetlab.train.presets import resolve

    if isinstance(config, RunConfig):
        return config
    if config is None:
        return resolve("fast")
    if isinstance(config, str):
        return resolve(config)
    if isinstance(config, Mapping):
        data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in config.items()}
        if isinstance(data.get("model"), str):
            data["model"] = {"name": data["model"]}
        preset = data.pop("preset", None)
        if preset is not None and not isinstance(preset, str):
            raise LenetlabError(f"config 'preset' must be a preset name, got {preset!r}")
        return resolve(preset, file_data=data)
    raise LenetlabError(f"fit config must be a RunConfig, a preset name or a dict, got {type(config).__name__}")


# --------------------------------------------------------------------------
# inputs


def _unwrap(model: Any, what: str = "model") -> tuple[nn.Module, Run | None]:
    from torch import nn

    if isinstance(model, Run):
        return model.model, model
    if isinstance(model, nn.Module):
        return model, None
    raise LenetlabError(f"{what} must be a torch nn.Module or a lenetlab Run (load_run), got {type(model).__name__}")


def _data_config(run: Run | None, mean: float | None, std: float | None, data: DataConfig | None) -> DataConfig:
    """The normalisation applied to [0, 1] pixels: ``data``, else mean/std, else the run's, else none."""
    from lenetlab.config import DataConfig

    if data is not None:
        if mean is not None or std is not None:
            raise LenetlabError("give either data= or mean=/std=, not both")
        if not isinstance(data, DataConfig):
            raise LenetlabError(f"data must be a lenetlab DataConfig, got {type(data).__name__}")
        return data
    if mean is None and std is None:
        return run.data if run is not None else DataConfig(normalize="standard", mean=0.0, std=1.0)
    mean = 0.0 if mean is None else mean
    std = 1.0 if std is None else std
    for name, v in (("mean", mean), ("std", std)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LenetlabError(f"{name} must be a finite number, got {v!r}")
    if std <= 0:
        raise LenetlabError(f"std must be > 0, got {std}")
    return DataConfig(normalize="standard", mean=float(mean), std=float(std))


def _images(x: Any) -> torch.Tensor:
    """Pixels (see the module doc) -> float32 (N, 1, H, W) in [0, 1]."""
    import numpy as np
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise LenetlabError("images must be a numeric array")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise LenetlabError(f"images must be a torch tensor or NumPy array, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1:
        raise LenetlabError(f"images must have shape (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    if len(x) == 0:
        raise LenetlabError("no images (N = 0)")
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if not x.is_floating_point():
        raise LenetlabError(f"images must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
    x = x.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise LenetlabError("images contain NaN or Inf")
    if float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise LenetlabError(f"float images must be in [0, 1] (got values in [{float(x.min()):.3g}, "
                            f"{float(x.max()):.3g}]); pass uint8 digits as uint8")
    return x


def _labels(y: Any, n: int) -> torch.Tensor:
    import numpy as np
    import torch

    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    elif isinstance(y, (list, tuple)):
        y = torch.tensor(y)
    if not isinstance(y, torch.Tensor):
        raise LenetlabError(f"labels must be a torch tensor, NumPy array or list, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise LenetlabError(f"labels must be integers, got {y.dtype}")
    if y.ndim != 1 or len(y) != n:
        raise LenetlabError(f"labels must have shape ({n},) to match the images, got {tuple(y.shape)}")
    if int(y.min()) < 0:
        raise LenetlabError(f"labels must be >= 0, got {int(y.min())}")
    return y.to(torch.long)


def _device(model: nn.Module, device: Any = None) -> torch.device:
    """Where ``model`` runs: its own device (``device=None``), or ``device``, where it is moved (in place,
    as ``nn.Module.to`` does)."""
    from lenetlab import devices

    if device is None:
        return devices.of(model)
    dev = devices.resolve(device, what="device")
    model.to(dev)
    return dev


def _check_classes(model: nn.Module, first: torch.Tensor, y: torch.Tensor) -> None:
    """One forward on one image: the labels must index the model's outputs."""
    import torch

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            if hasattr(model, "reset_state"):
                model.reset_state()
            out = model(first)
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise LenetlabError(f"the model must return (N, classes) logits, got "
                            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if int(y.max()) >= out.shape[1]:
        raise LenetlabError(f"label {int(y.max())} out of range: the model has {out.shape[1]} outputs")


def _prepare(model: Any, x: Any, y: Any, mean: float | None, std: float | None, data: DataConfig | None,
             device: Any = None) -> tuple[nn.Module, Run | None, DataConfig, torch.Tensor, torch.Tensor]:
    """(module, run, normalisation, [0,1] images, labels) on the model's device (the model moved to
    ``device`` first if given), all checked."""
    from lenetlab.data.transforms import from_unit

    net, run = _unwrap(model)
    cfg = _data_config(run, mean, std, data)
    x01 = _images(x)
    labels = _labels(y, len(x01))
    dev = _device(net, device)
    x01, labels = x01.to(dev), labels.to(dev)
    _check_classes(net, from_unit(x01[:1], cfg), labels)
    return net, run, cfg, x01, labels


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise LenetlabError(f"{name} must be a positive integer, got {v!r}")
    return v


# --------------------------------------------------------------------------
# evaluation, attacks, noise


def evaluate(model: nn.Module | Run, x: Any, y: Any, *, mean: float | None = None, std: float | None = None,
             data: DataConfig | None = None, batch_size: int = 1000, device: Any = None) -> dict[str, float]:
    """Accuracy and mean loss of ``model`` on images ``x`` with labels ``y``, in eval mode.

    The loss is the model's own (cross-entropy; the RBF penalty for ``lenet5_classic``). It runs on the
    model's device, or on ``device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``), where the model is moved.
    Returns ``{"accuracy", "loss", "n"}``.
    """
    from lenetlab.config import TrainConfig
    from lenetlab.data.transforms import from_unit
    from lenetlab.train.trainer import evaluate as _evaluate
    from lenetlab.train.trainer import make_loss

    net, _, cfg, x01, labels = _prepare(model, x, y, mean, std, data, device)
    batch_size = _positive_int("batch_size", batch_size)
    loss_fn = make_loss(net, TrainConfig(loss=getattr(net, "default_loss", "ce")))
    out: dict[str, Any] = {"accuracy": 0.0, "loss": 0.0}
    n = len(x01)
    for i in range(0, n, batch_size):   # normalise batch by batch: a padded float copy of all images is not needed
        part = _evaluate(net, from_unit(x01[i:i + batch_size], cfg), labels[i:i + batch_size], batch_size, loss_fn)
        w = len(labels[i:i + batch_size]) / n
        out["accuracy"] += part["accuracy"] * w
        out["loss"] += part["loss"] * w
    out["n"] = n
    return out


@dataclass
class AttackOutcome:
    """What :func:`attack` returns: the adversarial images and how the model fares on them."""

    x_adv: torch.Tensor          # (N, 1, H, W) float in [0, 1], within eps of the input (L-inf)
    clean_accuracy: float        # on the unmodified images
    adv_accuracy: float          # on x_adv
    success_rate: float          # of the images classified correctly, the fraction the attack flips
    n: int
    attack: str
    eps: float
    options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Everything but the images (JSON-able)."""
        return {"attack": self.attack, "eps": self.eps, "options": dict(self.options), "n": self.n,
                "clean_accuracy": self.clean_accuracy, "adv_accuracy": self.adv_accuracy,
                "success_rate": self.success_rate}


def attack(model: nn.Module | Run, x: Any, y: Any, name: str = "pgd", *, eps: float = 0.1,
           mean: float | None = None, std: float | None = None, data: DataConfig | None = None,
           substitute: nn.Module | Run | None = None, grad_source: str = "autograd", seed: int = 0,
           batch_size: int = 500, device: Any = None, **options: Any) -> AttackOutcome:
    """Adversarial examples within an L-inf ball of radius ``eps`` (pixel units, [0, 1]) around ``x``.

    Works on any ``nn.Module`` that maps (normalised) images to logits. ``name`` is a registered attack
    (``lenetlab list attacks``: fgsm, pgd, bb-fgsm, bb-pgd, hybrid; art:apgd, art:autoattack, art:cw,
    art:square with ``lenetlab[art]``, ``norm="2"`` for the L2 ball); ``options`` are its own options (e.g.
    ``steps=20, step_size=0.01`` for pgd) and are checked against its ``Options``. Transfer attacks
    (``bb-*``, ``hybrid``) need a ``substitute`` model; it gets its own run's normalisation if it is a
    :class:`Run`, else the target's. Seeded: the same call gives the same images (the random draws are made
    on the CPU). It runs on the model's device, or on ``device``, where the model (and the substitute) is
    moved; ``x_adv`` comes back on the CPU.
    """
    from lenetlab.attacks import Target, make_attack, run_attack
    from lenetlab.registry import get

    if not isinstance(name, str):
        raise LenetlabError(f"attack name must be a string, got {type(name).__name__}")
    get("attack", name)     # unknown name: one line listing the attacks
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps <= 1.0:
        raise LenetlabError(f"eps must be a number in [0, 1] (pixel units), got {eps!r}")
    batch_size = _positive_int("batch_size", batch_size)
    net, run, cfg, x01, labels = _prepare(model, x, y, mean, std, data, device)
    rule = run.config.train.rule.name if run is not None else "bp"
    rule_seed = run.config.train.seed if run is not None else 0
    target = Target(net, cfg, grad_source, rule, rule_seed)
    sub = None
    if substitute is not None:
        s_net, s_run = _unwrap(substitute, "substitute")
        s_net.to(x01.device)
        sub = Target(s_net, s_run.data if s_run is not None else cfg, name="substitute")
    atk = make_attack(name, target, float(eps), seed=seed, substitute=sub, **options)
    res, x_adv = run_attack(atk, x01, labels, batch_size, keep=True)
    return AttackOutcome(x_adv.cpu(), res.clean_accuracy, res.adv_accuracy, res.success_rate, res.n, name,
                         float(eps), dict(atk.options))


def noisy_accuracy(model: nn.Module | Run, x: Any, y: Any, sigma: float, *, draws: int = 5, relative: bool = False,
                   sites: Sequence[str] | None = None, weight_sigma: float = 0.0, seed: int = 0,
                   mean: float | None = None, std: float | None = None, data: DataConfig | None = None,
                   batch_size: int = 1000, device: Any = None) -> dict[str, Any]:
    """Accuracy under additive Gaussian noise after every layer (:func:`lenetlab.noise.noisy_accuracy`).

    ``sigma`` is absolute (or relative to each site's max |y| with ``relative=True``); ``sites`` is a subset
    of ``input, conv, act, pool, linear`` (default all). The noise is drawn on the CPU; the model runs on its
    device, or on ``device``, where it is moved. Returns ``{"mean", "std", "per_draw", "per_image"}``.
    """
    from lenetlab.data.transforms import from_unit
    from lenetlab.noise import SITES
    from lenetlab.noise import noisy_accuracy as _noisy

    for nm, v in (("sigma", sigma), ("weight_sigma", weight_sigma)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise LenetlabError(f"{nm} must be a finite number >= 0, got {v!r}")
    draws = _positive_int("draws", draws)
    batch_size = _positive_int("batch_size", batch_size)
    sites = tuple(SITES if sites is None else ([sites] if isinstance(sites, str) else sites))
    bad = [s for s in sites if s not in SITES]
    if bad or not sites:
        raise LenetlabError(f"unknown noise site {bad[0]!r}" if bad else "no noise sites given"
                            f"; choose from: {', '.join(SITES)}")
    net, _, cfg, x01, labels = _prepare(model, x, y, mean, std, data, device)
    return _noisy(net, from_unit(x01, cfg), labels, float(sigma), draws=draws, relative=bool(relative),
                  sites=sites, weight_sigma=float(weight_sigma), seed=seed, batch_size=batch_size)


# --------------------------------------------------------------------------
# int8: fault campaigns, export


def _int8_model(source: Any, calibration: int):
    """(int8 flat model, dataset name, data_dir) of a Run, a finished run dir, a quantised run dir or a .flat."""
    from lenetlab import rundir

    if isinstance(source, Run):
        model, cfg = source.model, source.config
    elif isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir() and (p / rundir.CONFIG).is_file() and (p / rundir.MODEL).is_file():
            model, cfg = rundir.load_model(p)
        else:
            from lenetlab.quant.run import load_qrun

            fm, meta = load_qrun(p)
            return fm, meta.get("dataset", "mnist"), meta.get("data_dir")
    else:
        raise LenetlabError(f"fault_campaign takes a Run, a run directory, a quantised run directory or an int8 "
                            f".flat file, got {type(source).__name__}")
    import numpy as np

    from lenetlab.data.datasets import load_raw
    from lenetlab.deploy import flat
    from lenetlab.deploy.graph import to_flat
    from lenetlab.deploy.quantize import quantize

    train_x = load_raw(cfg.data.dataset, cfg.data.data_dir)[0]
    fm = quantize(to_flat(model.eval(), cfg.data), np.ascontiguousarray(train_x[:calibration]))
    return flat.decode(flat.encode(fm)), cfg.data.dataset, cfg.data.data_dir


def fault_campaign(source: Run | str | Path, target: str = "weights", *, images: Any = 100,
                   bits: Sequence[int] | str | None = None, samples: int = 50, layers: Sequence[int] | None = None,
                   exhaustive: bool = False, fault_model: str = "bitflip", seed: int = 0, engine: str = "fast",
                   calibration: int = 2000) -> dict[str, Any]:
    """Inject hardware faults into the int8 model and measure silent data corruptions (``lenetlab faults
    campaign``; docs/faults.md).

    ``source``: a :class:`Run` or finished run directory (quantised here, calibrated on the first
    ``calibration`` training images), a quantised run directory (``lenetlab quantize``) or an int8 .flat file.
    ``target``: weights | activations | accumulators. ``images``: the first N test images of the run's
    dataset, or the images themselves (pixels, as elsewhere). ``bits``: None (all), a list, or a string
    like ``"24-31"``. ``samples`` faults per layer and bit; ``layers`` limits the layers (0-based);
    ``exhaustive`` tries every site of the given layers.

    Returns the campaign summary: ``{"rate", "ci95", "sdc", "trials", "faults", "layers": [...], ...}``.
    """
    import numpy as np

    from lenetlab.faults.campaign import _bits, parse_bits, run_campaign
    from lenetlab.faults.models import check_target
    from lenetlab.quant.engine import IntEngine, blas_threads

    if not isinstance(target, str):
        raise LenetlabError(f"target must be a string, got {type(target).__name__}")
    check_target(target)
    calibration = _positive_int("calibration", calibration)
    samples = _positive_int("samples", samples)
    if isinstance(bits, str):
        bits = parse_bits(bits, target)
    elif bits is not None:
        if any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) for b in bits):
            raise LenetlabError(f"bits must be integers, got {list(bits)!r}")
        bits = _bits([int(b) for b in bits], target)
    if layers is not None:
        layers = [layers] if isinstance(layers, int) else list(layers)
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in layers):
            raise LenetlabError(f"layers must be integers (0-based layers with weights), got {layers!r}")
        layers = [int(s) for s in layers]
    if exhaustive and not layers:
        raise LenetlabError("exhaustive campaigns need layers=[...] (exhaustive mode is per layer)")
    fm, dataset, data_dir = _int8_model(source, calibration)
    if isinstance(images, int) and not isinstance(images, bool):
        from lenetlab.quant.run import test_images

        imgs, _ = test_images({"dataset": dataset, "data_dir": data_dir}, _positive_int("images", images))
    else:
        import torch

        x01 = _images(images)   # uint8 digits come back exactly: k / 255 * 255 rounds to k
        imgs = np.ascontiguousarray((x01[:, 0].cpu() * 255.0).round().to(torch.uint8).numpy())
    if tuple(imgs.shape[1:]) != tuple(fm.img_hw):
        raise LenetlabError(f"images must be {fm.img_hw[0]}x{fm.img_hw[1]} for this model, got "
                            f"{imgs.shape[1]}x{imgs.shape[2]}")
    eng = IntEngine(fm)
    with blas_threads(1):
        _, _, summary = run_campaign(eng, imgs, target, bits, samples, layers, bool(exhaustive), fault_model,
                                     seed, engine)
    return summary


def export(run: Run | str | Path, format: str = "flat", *, int8: bool = False, out: str | Path | None = None
           ) -> list[Path]:
    """Export a trained run for deployment (``lenetlab export``): ``format`` is flat, c, web or onnx
    (``lenetlab list exporters``); ``int8`` quantises first. ``out`` defaults to RUN/export.
    Returns the paths written."""
    from lenetlab.deploy.export import export as _export
    from lenetlab.registry import get

    if isinstance(run, Run):
        run = run.path
    if not isinstance(run, (str, Path)):
        raise LenetlabError(f"export takes a Run or a run directory, got {type(run).__name__}")
    if not isinstance(format, str):
        raise LenetlabError(f"format must be a string, got {type(format).__name__}")
    get("exporter", format)
    return _export(run, format, int8=bool(int8), out=out)

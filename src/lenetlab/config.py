"""Typed configs: dataclasses <-> TOML/JSON dicts <-> CLI overrides.

Every component has one dataclass config. :func:`from_dict` builds it from a
plain dict and rejects unknown keys and wrong types with one line naming the
key, so a typo in a TOML file never silently falls back to a default.
:func:`apply_override` handles ``--set section.key=value``.

Example::

    from lenetlab.config import RunConfig, from_dict
    cfg = from_dict(RunConfig, {"train": {"epochs": 2}})
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from lenetlab.errors import LenetlabError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    """Which data, how it is split and normalised (the transform is part of the config)."""

    dataset: str = "mnist"
    data_dir: str | None = None
    val_size: int = 5000          # held out from the 60k train images; 0 = none
    split_seed: int = 0           # the train/validation split is a function of this alone
    train_subset: int | None = None  # use only the first N training images (after the split)
    test_subset: int | None = None
    normalize: str = "standard"   # standard: (p/255-mean)/std | unit: p/255 | lecun: -0.1+1.275p/255
    mean: float = 0.1307
    std: float = 0.3081
    pad: int = 0                  # zero-pad (with the normalised background value) on every side


@dataclass
class TrainConfig:
    """Optimisation recipe. Learning-rate schedules are pure functions of the step."""

    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adam"       # adam | adamw | sgd
    lr: float = 4e-3              # peak lr for onecycle, initial lr otherwise
    weight_decay: float = 0.0
    momentum: float = 0.9         # sgd only
    nesterov: bool = False
    schedule: str = "onecycle"    # see `lenetlab list schedules`
    warmup_frac: float = 0.3      # onecycle: fraction of steps spent warming up
    div_factor: float = 25.0      # onecycle: initial lr = lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = initial lr / final_div_factor
    step_epochs: int = 1          # step schedule: decay every N epochs
    gamma: float = 0.5            # step schedule: decay factor
    label_smoothing: float = 0.0
    loss: str = "auto"            # auto (the model's own) | ce | rbf
    seed: int = 0
    eval_batch_size: int = 2000
    channels_last: bool = True    # faster mkldnn convolutions on CPU, same maths
    eval_test_every_epoch: bool = True
    stop_at_accuracy: float | None = None  # stop once test accuracy >= this (benchmarks)
    grad_norms: bool = True       # log per-layer gradient norms (epoch means) to metrics.jsonl
    # schedule = "lb-restart" (Berngardt 2023): LB = p - k sqrt(p(1-p)/N) on the validation set
    lb_k: float = 2.0
    lb_patience: int = 3          # epochs without a better LB before a restart
    lb_lr_divisor: float = 3.0    # lr /= this at each restart (Adam is re-created)
    lb_min_lr: float = 1e-5       # stop once lr < this; `epochs` stays the upper bound
    # noise hardening (Wang et al. 2025, PAPERS.md section 2; lenetlab.noise)
    qat_bits: int | None = None   # constant-scale QAT at this bit width (2..16); None = float training
    act_scale: float = 1.0        # QAT: the constant activation scale s
    train_noise: float = 0.0      # noisy training: sigma of the noise after every layer (0 = off)
    train_noise_ramp: float = 0.0  # fraction of training over which sigma ramps up linearly from 0
    noise_relative: bool = False  # noisy training: sigma times max|y| of each site
    noise_sites: str = "all"      # noisy training: "all" or a comma list of input,conv,act,pool,linear
    # training without backprop (ElasticZO, PAPERS.md section 3; lenetlab.train.zeroth_order)
    method: str = "bp"            # bp | zo | elasticzo | elasticzo-int8
    zo_layers: int | None = None  # ElasticZO cutoff: the first N weight layers trained by ZO (None: all for zo)
    zo_eps: float = 1e-3          # SPSA perturbation size
    zo_q: int = 1                 # SPSA perturbations per step
    zo_lr: float | None = None    # peak learning rate of the ZO layers (None: 5e-3), scheduled like lr
    zo_clip: float | None = 0.3   # clip the SPSA projected gradient g to +-this (None: no clip, the paper's rule)
    # local learning rules (Lin & Sengupta 2025, PAPERS.md section 1; lenetlab.rules)
    rule: str = "bp"              # bp | fa | dfa | le


@dataclass
class ModelConfig:
    """A registered model name plus its options (validated by the model's own config)."""

    name: str = "lenet5"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    preset: str = "fast"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------
# dict <-> dataclass with strict checking


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise LenetlabError(f"config {where or cls.__name__}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise LenetlabError(f"unknown config key {path!r}; valid keys: {', '.join(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path)
            continue
        if not _type_ok(value, tp):
            raise LenetlabError(
                f"config key {path!r} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        if tp is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_toml(path: str) -> dict[str, Any]:
    """Read a config file: TOML, or the JSON ``config.json`` of a run directory (to re-run it)."""
    if str(path).endswith(".json"):
        import json

        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise LenetlabError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LenetlabError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(data, dict):
            raise LenetlabError(f"{path}: expected a JSON object")
        return data
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise LenetlabError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise LenetlabError(f"{path}: invalid TOML ({e})") from None


def parse_value(text: str) -> Any:
    """A CLI value: TOML literal if it parses (1, 0.5, true, [1,2], "s"), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` to a nested config dict in place."""
    if "=" not in assignment:
        raise LenetlabError(f"--set {assignment!r}: expected section.key=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise LenetlabError(f"--set {assignment!r}: key must look like train.lr or model.activation")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise LenetlabError(f"--set {assignment!r}: {p!r} is not a table")
    node[parts[-1]] = parse_value(text.strip())


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out

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
import math
import sys
import types
import typing
from argparse import SUPPRESS
from dataclasses import dataclass, field
from typing import Any

from lenetlab.errors import LenetlabError
from lenetlab.validate import MAX_SEED

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
    muon_lr: float = 0.02         # muon: peak lr of the hidden weight matrices (train.lr is the Adam part's)
    muon_momentum: float = 0.95   # muon only
    muon_ns_steps: int = 3        # muon: Newton-Schulz rounds per orthogonalisation
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
    # split each batch into this many equal shards, each run on its own thread (one torch thread each) and the
    # gradients summed in shard order: the same result on any machine for a given value (a value of 1 and 2
    # give slightly different numbers: sums in another order); row-wise models only, no training plugins
    shards: int = 1
    # LeNet-5 only: its two conv -> ReLU -> max-pool blocks trained by C kernels (lenetlab.models.convblocks);
    # faster on CPU, the sums in another order than torch's (slightly different numbers); no training plugins
    native_convs: bool = False
    # fp32 | bf16: bf16 autocasts the training forward pass (convolutions and matmuls in bfloat16, fast on CPUs
    # with native bf16, e.g. AVX512-BF16/AMX); weights, optimizer state, loss and every evaluation stay fp32
    precision: str = "fp32"
    eval_test_every_epoch: bool = True
    stop_at_accuracy: float | None = None  # stop once test accuracy >= this (benchmarks)
    grad_norms: bool = True       # log per-layer gradient norms (epoch means) to metrics.jsonl
    # the training plugins' own sections (lenetlab.train.plugins); each is off by default
    hardening: HardeningConfig = field(default_factory=lambda: HardeningConfig())
    rule: RuleConfig = field(default_factory=lambda: RuleConfig())
    zo: ZOConfig = field(default_factory=lambda: ZOConfig())
    lb: LBConfig = field(default_factory=lambda: LBConfig())
    lbfgs: LBFGSConfig = field(default_factory=lambda: LBFGSConfig())

    @staticmethod
    def upgrade_dict(data: dict[str, Any]) -> dict[str, Any]:
        """Map the flat keys of older configs (``qat_bits``, ``method``, ``zo_eps``, ``lb_k``, ``rule = "fa"``
        ...) onto their sections, so old run directories and TOML files keep loading."""
        return upgrade_train_dict(data)


@dataclass
class HardeningConfig:
    """QAT and noisy training (Wang et al. 2025, docs/papers/noise.md; plugin ``hardening``, lenetlab.noise)."""

    qat_bits: int | None = field(default=None, metadata={
        "flags": ("--qat-bits",), "help": "constant-scale QAT at this bit width (2..16); none = float training"})
    act_scale: float = field(default=1.0, metadata={
        "flags": ("--act-scale",), "help": "QAT: the constant activation scale s"})
    sigma: float = field(default=0.0, metadata={
        "flags": ("--train-noise",), "help": "noisy training: sigma of the noise after every layer (0 = off)"})
    ramp: float = field(default=0.0, metadata={
        "help": "noisy training: fraction of training over which sigma ramps up linearly from 0"})
    relative: bool = field(default=False, metadata={"help": "noisy training: sigma times max|y| of each site"})
    sites: str = field(default="all", metadata={
        "help": 'noisy training: "all" or a comma list of input,conv,act,pool,linear'})


@dataclass
class RuleConfig:
    """Local learning rule (Lin & Sengupta 2025, docs/papers/snn-attacks.md; plugin ``rule``, lenetlab.rules)."""

    name: str = field(default="bp", metadata={
        "flags": ("--rule",), "help": "learning rule: bp (off) | fa | dfa | le (lenetlab list rules)"})


@dataclass
class ZOConfig:
    """Training without (full) backprop (ElasticZO, docs/papers/zo.md; plugin ``zo``, lenetlab.train.zeroth_order)."""

    method: str = field(default="bp", metadata={
        "flags": ("--method",), "help": "bp (off) | zo | elasticzo | elasticzo-int8: training without backprop"})
    layers: int | None = field(default=None, metadata={
        "help": "ElasticZO cutoff: the first N weight layers trained by ZO (none: all for zo, all but one else)"})
    eps: float = field(default=1e-3, metadata={"flags": ("--eps",), "help": "SPSA perturbation size"})
    q: int = field(default=1, metadata={"flags": ("--q",), "help": "SPSA perturbations per step"})
    lr: float | None = field(default=None, metadata={
        "help": "peak learning rate of the ZO layers (none: 5e-3), scheduled like train.lr"})
    clip: float | None = field(default=0.3, metadata={
        "help": "clip the SPSA projected gradient to +-this (none: no clip, the paper's rule)"})


@dataclass
class LBConfig:
    """Lower-bound restarts, on with ``train.schedule = "lb-restart"`` (Berngardt 2023, docs/papers/abs.md).

    LB = p - k sqrt(p(1-p)/N) on the validation set (plugin ``lb-restart``, lenetlab.train.lb_restart).
    """

    k: float = field(default=2.0, metadata={"help": "LB = p - k sqrt(p(1-p)/N)"})
    patience: int = field(default=3, metadata={"help": "epochs without a better LB before a restart"})
    lr_divisor: float = field(default=3.0, metadata={"help": "lr /= this at each restart (fresh optimiser)"})
    min_lr: float = field(default=1e-5, metadata={"help": "stop once lr < this; train.epochs stays the upper bound"})


@dataclass
class LBFGSConfig:
    """Full-batch L-BFGS instead of mini-batch steps, for small convex models (plugin ``lbfgs``, lenetlab.train.lbfgs;
    pca_logreg's logistic regression)."""

    enabled: bool = field(default=False, metadata={"help": "fit by full-batch L-BFGS (each step: the whole set)"})
    l2: float = field(default=1e-4, metadata={"help": "L2 penalty l2/2 ||W||^2 on the weight matrices"})
    max_iter: int = field(default=200, metadata={"help": "L-BFGS iterations per step"})


# older configs kept these flat in [train]: key -> (section, field)
LEGACY_TRAIN_KEYS = {
    "qat_bits": ("hardening", "qat_bits"), "act_scale": ("hardening", "act_scale"),
    "train_noise": ("hardening", "sigma"), "train_noise_ramp": ("hardening", "ramp"),
    "noise_relative": ("hardening", "relative"), "noise_sites": ("hardening", "sites"),
    "method": ("zo", "method"), "zo_layers": ("zo", "layers"), "zo_eps": ("zo", "eps"), "zo_q": ("zo", "q"),
    "zo_lr": ("zo", "lr"), "zo_clip": ("zo", "clip"),
    "lb_k": ("lb", "k"), "lb_patience": ("lb", "patience"), "lb_lr_divisor": ("lb", "lr_divisor"),
    "lb_min_lr": ("lb", "min_lr"),
}


def upgrade_train_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A ``train`` table with the flat keys of older configs moved into their sections (a new dict).

    ``rule = "fa"`` becomes ``rule = {name = "fa"}``. A flat key wins over the same key in its section
    of the same table (a file is one layer; presets.resolve upgrades each layer before merging them).
    """
    if not isinstance(data, dict):
        return data
    out = dict(data)
    if isinstance(out.get("rule"), str):
        out["rule"] = {"name": out["rule"]}
    for old, (section, key) in LEGACY_TRAIN_KEYS.items():
        if old in out:
            value = out.pop(old)
            table = out.get(section)
            table = dict(table) if isinstance(table, dict) else {}
            table[key] = value
            out[section] = table
    return out


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
    upgrade = getattr(cls, "upgrade_dict", None)
    if upgrade is not None:
        data = upgrade(data)
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
                f"config key {path!r} must be {_type_name(tp)}, got {_shown(value)} ({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):
            raise LenetlabError(f"config key {path!r} must be a finite number, got {value!r}")
        if tp is float and isinstance(value, int):
            value = float(value)
        _check_range(cls, key, value, path)
        kwargs[key] = value
    return cls(**kwargs)


# Allowed ranges of numeric options, checked where configs enter (TOML, --set, flags), before anything is
# written: (low, low included, high, high included); None = unbounded on that side.
RANGES: dict[str, dict[str, tuple[float | None, bool, float | None, bool]]] = {
    "TrainConfig": {
        "epochs": (0, True, None, False), "batch_size": (1, True, None, False), "lr": (0, False, None, False),
        "weight_decay": (0, True, None, False), "momentum": (0, True, 1, False),
        "label_smoothing": (0, True, 1, False), "eval_batch_size": (1, True, None, False),
        "warmup_frac": (0, True, 1, True), "div_factor": (0, False, None, False),
        "final_div_factor": (0, False, None, False), "step_epochs": (1, True, None, False),
        "gamma": (0, False, None, False), "stop_at_accuracy": (0, False, 1, True),
        "seed": (0, True, MAX_SEED, True), "muon_lr": (0, False, None, False),
        "muon_momentum": (0, True, 1, False), "muon_ns_steps": (1, True, 20, True), "shards": (1, True, 16, True),
    },
    "DataConfig": {
        "val_size": (0, True, None, False), "train_subset": (1, True, None, False),
        "test_subset": (1, True, None, False), "std": (0, False, None, False), "pad": (0, True, None, False),
        "split_seed": (0, True, MAX_SEED, True),
    },
    # the training plugins' sections whose own checks run only while the plugin is on (hardening and zo
    # check theirs when switched on, with their own messages)
    "LBConfig": {
        "k": (0, True, None, False), "patience": (1, True, None, False), "lr_divisor": (1, True, None, False),
        "min_lr": (0, True, None, False),
    },
    "LBFGSConfig": {"l2": (0, True, None, False), "max_iter": (1, True, None, False)},
}


def _check_range(cls: type, key: str, value: Any, path: str) -> None:
    bounds = RANGES.get(cls.__name__, {}).get(key)
    if bounds is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, lo_in, hi, hi_in = bounds
    above = lo is None or (value >= lo if lo_in else value > lo)
    below = hi is None or (value <= hi if hi_in else value < hi)
    ok = above and below
    if not ok:
        left = "(-inf" if lo is None else ("[" if lo_in else "(") + _num(lo)
        right = "inf)" if hi is None else _num(hi) + ("]" if hi_in else ")")
        raise LenetlabError(f"config key {path!r} must be in {left}, {right}, got {_shown(value)}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


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
    except (tomllib.TOMLDecodeError, ValueError):   # ValueError: an integer of more than 4300 digits
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


# --------------------------------------------------------------------------
# CLI flags generated from a config's dataclass sections (the train plugins' options)


def _flag_value(tp: Any) -> Any:
    """An argparse ``type``: a TOML literal (typed later by from_dict); ``none`` -> None where None is allowed."""
    allows_none = type(None) in typing.get_args(tp)

    def convert(text: str) -> Any:
        if allows_none and text.strip().lower() == "none":
            return None
        return parse_value(text)

    convert.__name__ = _type_name(tp)   # argparse names the type in its error message
    return convert


def section_fields(cls: type) -> list[tuple[str, dataclasses.Field, Any]]:
    """(section name, field, type) for every field of every dataclass-typed field of ``cls``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = typing.get_type_hints(tp)
            out += [(f.name, g, sub[g.name]) for g in dataclasses.fields(tp)]
    return out


def add_section_flags(parser: Any, cls: type) -> None:
    """``--<section>-<field>`` for every section field of ``cls`` (plus the aliases in its metadata ``flags``)."""
    for section, f, tp in section_fields(cls):
        flags = [f"--{section}-{f.name}".replace("_", "-")]
        flags += [a for a in f.metadata.get("flags", ()) if a not in flags]
        default = f.default if f.default is not dataclasses.MISSING else None
        # SUPPRESS: the attribute exists only when the flag is given, so "--zo-clip none" can set None
        parser.add_argument(*flags, dest=f"section__{section}__{f.name}", type=_flag_value(tp), default=SUPPRESS,
                            metavar=_type_name(tp).split(" |")[0].upper(),
                            help=f"{f.metadata.get('help', '')} (default {default})".strip())


def section_overrides(args: Any, cls: type) -> dict[str, Any]:
    """The section values given on the command line, as ``{section: {field: value}}``."""
    out: dict[str, Any] = {}
    for section, f, _ in section_fields(cls):
        dest = f"section__{section}__{f.name}"
        if hasattr(args, dest):
            out.setdefault(section, {})[f.name] = getattr(args, dest)
    return out

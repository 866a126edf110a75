"""What every registered model provides, and the factory that builds one.

A model is registered as ``@register_model(name, ConfigClass)`` over a
builder ``f(cfg) -> nn.Module``. ``create_model(name, **overrides)`` validates
the overrides against the config dataclass (unknown option or wrong type is a
one-line error) and stores the resolved config on the module as
``model.config`` so that checkpoints can rebuild it.

Model outputs are always *logits* (argmax = prediction), even for the 1998
RBF output, whose logits are minus the RBF distances; the model's preferred
loss is named by its ``default_loss`` attribute ("ce" or "rbf").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from lenetlab.config import from_dict
from lenetlab.registry import get, register


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config_cls: type
    builder: Callable[[Any], nn.Module]
    data_defaults: dict[str, Any]  # data settings the model needs (e.g. 32x32 input)
    description: str


def register_model(name: str, config_cls: type, data_defaults: dict[str, Any] | None = None,
                   **fixed: Any) -> Callable:
    """Register ``builder(cfg)`` as model ``name``; ``fixed`` pins config fields (thin variants)."""

    def deco(builder: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        doc = (builder.__doc__ or "").strip().splitlines()
        entry = ModelEntry(name, config_cls, builder, dict(data_defaults or {}),
                           doc[0] if doc else name)
        if fixed:
            # a thin variant: the same builder over a config subclass with other defaults
            variant_cfg = dataclasses.make_dataclass(
                f"{config_cls.__name__}_{name}",
                [(k, type(v), dataclasses.field(default=v)) for k, v in fixed.items()], bases=(config_cls,))
            entry = dataclasses.replace(entry, config_cls=variant_cfg)
        register("model", name)(entry)
        return builder

    return deco


def model_entry(name: str) -> ModelEntry:
    return get("model", name)


def make_config(name: str, options: dict[str, Any] | None = None) -> Any:
    entry = model_entry(name)
    return from_dict(entry.config_cls, dict(options or {}), where="model")


def create_model(name: str = "lenet5", **overrides: Any) -> nn.Module:
    """Build a registered model. Example: ``create_model("lenet5", activation="abs")``."""
    entry = model_entry(name)
    cfg = make_config(name, overrides)
    model = entry.builder(cfg)
    model.model_name = name
    model.config = cfg
    return model


def param_count(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


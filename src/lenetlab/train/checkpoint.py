"""Training checkpoints: one safetensors file, written atomically every epoch.

The file holds the model weights (``model.<name>``), every tensor of the
optimiser state (``optim.<param index>.<key>``), every tensor of the trainer
plugins' states (``plugin.<plugin>.<key>``) and, in the safetensors
metadata, JSON blobs with the epoch, the global step, the optimiser's
non-tensor state and the plugins' non-tensor state. No pickle anywhere: a checkpoint from a stranger cannot
run code. Because shuffling and learning rates are pure functions of
(seed, epoch, step), this is all a resumed run needs to finish bit for bit
like an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lenetlab import weights
from lenetlab.errors import LenetlabError

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
                    plugins: dict[str, dict[str, Any]] | None = None) -> None:
    """``plugins``: each trainer plugin's ``state_dict()`` (tensors and JSON-able values), by plugin name."""
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().contiguous()
                                        for k, v in model.state_dict().items()}
    plugin_values: dict[str, dict[str, Any]] = {}
    for name, pstate in (plugins or {}).items():
        plugin_values[name] = {}
        for k, v in pstate.items():
            if torch.is_tensor(v):
                tensors[f"plugin.{name}.{k}"] = v.detach().contiguous()
            else:
                plugin_values[name][k] = v
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for key, val in pstate.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val.detach().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = val
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    meta = {"state": json.dumps(state), "param_groups": json.dumps(groups),
            "optim_scalars": json.dumps(scalars), "plugins": json.dumps(plugin_values)}
    weights.save(tensors, path, meta)   # sorted metadata: an equal state gives equal bytes


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimiser in place; return the saved training state.

    ``state["plugins"]`` holds each trainer plugin's saved state, by plugin name.
    """
    if not path.is_file():
        raise LenetlabError(f"{path}: no checkpoint to resume from")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = json.loads(meta["state"])
        groups = json.loads(meta["param_groups"])
        scalars = json.loads(meta["optim_scalars"])
        plugins: dict[str, dict[str, Any]] = json.loads(meta.get("plugins", "{}"))
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise LenetlabError(f"{path}: corrupt checkpoint ({e})") from None
    msd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(msd, strict=True)
    except RuntimeError as e:
        raise LenetlabError(f"{path}: checkpoint does not match the model ({str(e).splitlines()[0]})") from None
    ostate: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            ostate.setdefault(int(pid), {})[key] = v
    for pid, d in scalars.items():
        ostate.setdefault(int(pid), {}).update(d)
    opt.load_state_dict({"state": ostate, "param_groups": groups})
    for k, v in tensors.items():
        if k.startswith("plugin."):
            _, name, key = k.split(".", 2)
            plugins.setdefault(name, {})[key] = v
    if state.get("lb"):
        # a checkpoint written before the trainer plugins: the LB controller's state and its best weights
        plugins["lb-restart"] = {"controller": state["lb"], **{
            f"best.{k[len('extra.'):]}": v for k, v in tensors.items() if k.startswith("extra.")}}
    state["plugins"] = plugins
    return state

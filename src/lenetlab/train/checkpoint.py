"""Training checkpoints: one safetensors file, written atomically every epoch.

The file holds the model weights (``model.<name>``), every tensor of the
optimiser state (``optim.<param index>.<key>``) and, in the safetensors
metadata, a JSON blob with the epoch, the global step and the optimiser's
non-tensor state. No pickle anywhere: a checkpoint from a stranger cannot
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
from safetensors.torch import load_file, save_file
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.fileio import atomic_write

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """``extra`` tensors (e.g. the best weights of the LB schedule) are stored as ``extra.<name>``."""
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().contiguous()
                                        for k, v in model.state_dict().items()}
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = v.detach().contiguous()
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
            "optim_scalars": json.dumps(scalars)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimiser in place; return the saved training state."""
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
    state["extra"] = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return state

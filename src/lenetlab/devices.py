"""Where models run: ``--device auto|cpu|cuda|mps`` on the commands, ``device=`` in the Python API.

``auto`` is CUDA if torch sees a GPU, else Apple's MPS if available, else the CPU; ``cuda:N`` picks one
GPU. A device that is not there is one clear error (:class:`LenetlabError`: one line, exit status 2, and
the command has written nothing yet). Random draws (shuffling, initialisation, noise, attack starts) are
made on CPU generators whatever the device, so a CPU run gives the same bits with ``--device cpu`` as
with the default on a machine without a GPU.

Example::

    from lenetlab import devices
    dev = devices.resolve("auto")        # torch.device('cuda') on a GPU machine, else mps or cpu
    p.add_argument("--device", type=devices.arg, default="auto")
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from lenetlab.errors import LenetlabError

if TYPE_CHECKING:   # pragma: no cover
    import torch

NAMES = ("auto", "cpu", "cuda", "mps")
_SYNTAX = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
HELP = "auto (CUDA, else MPS, else CPU; the default) | cpu | cuda | cuda:N | mps"


def arg(text: str) -> str:
    """argparse ``type``: a device name, checked for spelling only (cheap: torch is not imported here);
    :func:`resolve` checks that it is there when the command runs."""
    name = text.strip().lower() if isinstance(text, str) else text
    if not isinstance(name, str) or not _SYNTAX.match(name):
        raise LenetlabError(f"unknown device {text!r}; choose from: auto, cpu, cuda, cuda:N, mps")
    return name


def resolve(device: Any = "auto", what: str = "--device") -> torch.device:
    """``"auto"`` (or None), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device`` -> the
    ``torch.device`` to use; LenetlabError if it is not available here. ``what`` names the setting in the
    message (``--device`` on the command line, ``device`` in the API)."""
    import torch

    if device is None:
        device = "auto"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise LenetlabError(f"{what} must be a device name (auto, cpu, cuda, mps) or a torch.device, "
                            f"got {type(device).__name__}")
    name = arg(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            why = (f"this torch, {torch.__version__}, is built without it" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise LenetlabError(f"{what} {name}: CUDA is not available here: {why}; use {what} auto or cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise LenetlabError(f"{what} {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not _mps_available():
        raise LenetlabError(f"{what} mps: Apple's MPS backend is not available here; use {what} auto or cpu")
    return torch.device(name)


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def of(model: Any) -> torch.device:
    """The device of a model's first parameter (or buffer); the CPU for a model without any."""
    import itertools

    import torch

    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


def add_flag(parser: Any, what: str = "where the model runs") -> None:
    """``--device`` on a subcommand's parser (default auto)."""
    parser.add_argument("--device", type=arg, default="auto", help=f"{what}: {HELP}")


__all__ = ["NAMES", "arg", "resolve", "of", "add_flag"]

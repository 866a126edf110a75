"""lenetlab: LeNet-5, instrumented. See README.md and docs/api.md.

Example::

    import lenetlab
    model = lenetlab.create_model("lenet5", activation="abs")
    summary = lenetlab.fit({"model": "lenet5", "train": {"epochs": 1}}, out="runs/demo")
    run = lenetlab.load_run("runs/demo")
"""

from typing import Any

__version__ = "0.1.0"

# the Python API (lenetlab.api), each loaded on first use
_API = ("fit", "load_run", "evaluate", "attack", "noisy_accuracy", "fault_campaign", "export", "Run",
        "AttackOutcome")

__all__ = ["create_model", *_API, "__version__"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that ``import lenetlab.registry`` (or any light module) loads nothing else
    if name == "create_model":
        from lenetlab.models import create_model

        return create_model
    if name in _API:
        from lenetlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'lenetlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

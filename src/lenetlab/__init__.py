"""lenetlab: LeNet-5, instrumented. See README.md.

Example::

    import lenetlab
    model = lenetlab.create_model("lenet5", activation="abs")
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["create_model", "__version__"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that ``import lenetlab.registry`` (or any light module) loads nothing else
    if name == "create_model":
        from lenetlab.models import create_model

        return create_model
    raise AttributeError(f"module 'lenetlab' has no attribute {name!r}")

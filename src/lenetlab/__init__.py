"""lenetlab: LeNet-5, instrumented. See README.md.

Example::

    import lenetlab
    model = lenetlab.create_model("lenet5", activation="abs")
"""

__version__ = "0.1.0"

from lenetlab.models import create_model  # noqa: E402

__all__ = ["create_model", "__version__"]

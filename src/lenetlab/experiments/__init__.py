"""Paper reproductions (``lenetlab reproduce NAME``), one module per paper."""

from lenetlab.experiments.base import Cells, Claim, Context, Experiment, Result, reproduce

__all__ = ["Cells", "Claim", "Context", "Experiment", "Result", "reproduce", "load_all"]

_MODULES = ("abs", "fused", "cascade", "noise", "faults", "zo", "snn", "tt", "matrix", "deploy")


def load_all() -> None:
    """Import every experiment module present (each registers itself)."""
    import importlib

    for m in _MODULES:
        try:
            importlib.import_module(f"lenetlab.experiments.{m}")
        except ModuleNotFoundError as e:
            if e.name != f"lenetlab.experiments.{m}":
                raise

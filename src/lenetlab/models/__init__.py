"""Model registry: ``create_model(name, **overrides)``; ``lenetlab list models``."""

from lenetlab.models import activations, classic, deep, lenet5, pca_logreg, spiking  # noqa: F401  (register)
from lenetlab.models.base import create_model, make_config, model_entry, param_count

__all__ = ["create_model", "make_config", "model_entry", "param_count"]

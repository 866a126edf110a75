"""Model registry: ``create_model(name, **overrides)``; ``lenetlab list models``.

Each model module registers its models (``@register_model``); the registry imports them, as listed in
:data:`lenetlab.catalogue.BUILTINS`, the first time a model is looked up.
"""

from lenetlab.models.base import create_model, make_config, model_entry, param_count

__all__ = ["create_model", "make_config", "model_entry", "param_count"]

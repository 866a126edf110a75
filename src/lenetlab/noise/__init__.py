"""Hardening against noisy analog computation (Wang, Borras, Klein, Froening 2025; docs/papers/noise.md).

- :mod:`lenetlab.noise.inject`: additive Gaussian noise after every layer of any
  registered model, through hooks (the model is not edited);
- :mod:`lenetlab.noise.qat`: fake-quant with a straight-through estimator and a
  *constant* activation scale;
- :mod:`lenetlab.noise.training`: the step ``fit`` uses to train with QAT and/or noise on.
"""

from lenetlab.noise.inject import SITES, NoiseInjector, noisy_accuracy, noisy_accuracy_sweep
from lenetlab.noise.qat import QATWrapper, apply_qat

__all__ = ["SITES", "NoiseInjector", "noisy_accuracy", "noisy_accuracy_sweep", "QATWrapper", "apply_qat"]

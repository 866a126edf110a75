"""Tensor-network compression of LeNet-5 (docs/papers/tn.md).

- :mod:`lenetlab.compress.tt`: TT-SVD, tensor-train / MPO linear and conv layers
  (Novikov et al. 2015), the shallow-TN baseline;
- :mod:`lenetlab.compress.adtn`: the deep brick-wall tensor network generating a
  weight tensor (ADTN, Qing, Zhou, Li, Ran 2023);
- :mod:`lenetlab.compress.base`: the ``Compressor`` base class (registry kind
  ``compressor``), the compressed model ``lenet5_tt`` / ``lenet5_adtn`` and
  :func:`compress_model`;
- ``lenetlab compress RUN_DIR --method tt|adtn ...`` (:mod:`lenetlab.compress.cli`).

Example::

    from lenetlab.rundir import load_model
    from lenetlab.compress import compress_model
    model, cfg = load_model("runs/demo")
    small = compress_model(model, "adtn", "c5,f6", depth=4)
"""

from lenetlab.compress.base import (  # noqa: F401  (registers the compressors and models)
    Compressor,
    LeNet5TN,
    compress_model,
    layer_error,
    parse_layers,
)

__all__ = ["Compressor", "LeNet5TN", "compress_model", "layer_error", "parse_layers"]

"""Integer-only int8 LeNet-5 (docs/papers/faults.md): ``lenetlab quantize`` and the integer engine.

- :mod:`.run`: quantise a trained run into a *quantised run directory* (``model_int8.flat`` + ``quant.json``
  with float vs int8 accuracy), reusing the deploy work's post-training quantisation
  (:mod:`lenetlab.deploy.quantize`: per-channel int8 weights, calibrated activation scales, fixed-point
  requantisation) - one spec, ``docs/flat-format.md``;
- :mod:`.int8`: the one int8 executor (exact int32 accumulation, fixed-point requantisation, pooling and
  LUT activations on the integer grid) that the NumPy runtime, the engine, the fused simulator and the fault
  campaigns all run;
- :mod:`.engine`: the vectorised integer engine faults are injected into, bit-exact with
  :func:`lenetlab.deploy.runtime.run` (and so with the C runtime).
"""

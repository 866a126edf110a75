"""Hardware faults in quantised LeNet-5 (Ahmadilivani et al. 2023, docs/papers/faults.md).

- :mod:`.models`: registered fault models (bit flip, stuck-at-0/1) and random bit-error rates;
- :mod:`.campaign`: fault lists, :class:`~.campaign.Campaign` with the naive one-forward-per-fault oracle,
  SDC rates with Wilson intervals;
- :mod:`.fast`: the fast campaign engine behind ``Campaign.fast`` (cached prefix, faults batched, masked
  faults stopped early);
- :mod:`.nvf`: analytic neuron vulnerability factors (DeepVigor-style);
- :mod:`.harden`: selective neuron splitting and selective TMR of the most vulnerable neurons.
"""

from lenetlab.faults import models  # noqa: F401  (registers the fault models)

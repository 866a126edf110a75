"""Problem-dependent effort (Rohlfs 2022/23, docs/papers/cascade.md): resolution and model cascades.

- :mod:`~lenetlab.cascade.core`: the cascade rule (true coarse-to-fine vs the
  paper's most-confident-so-far), vectorised over images and levels;
- :mod:`~lenetlab.cascade.resolution`: pixelated 7 -> 14 -> 28 ladders, data
  accounted as sum of s^2 read;
- :mod:`~lenetlab.cascade.model_cascade`: cheapest model first, cost in MACs
  (:mod:`lenetlab.models.macs`), and the "most confident model" ensemble;
- :mod:`~lenetlab.cascade.selection`: threshold sweeps, and the cheapest
  threshold within an accuracy budget, chosen on validation images.

``lenetlab cascade RUN_DIR...`` and ``lenetlab reproduce cascade`` use them.
"""

from lenetlab.cascade.core import RULES, CascadeOutcome, most_confident, run_cascade, run_cascade_lazy
from lenetlab.cascade.model_cascade import (
    Member,
    make_member,
    member_from_run,
    member_probs,
    model_cascade,
    most_confident_ensemble,
    order_by_cost,
)
from lenetlab.cascade.resolution import (
    data_costs,
    parse_ladder,
    pixelate,
    resolution_cascade,
    resolution_probs,
)
from lenetlab.cascade.selection import SweepPoint, cheapest_within, select_threshold, sweep_thresholds

__all__ = ["RULES", "CascadeOutcome", "Member", "SweepPoint", "cheapest_within", "data_costs", "make_member",
           "member_from_run", "member_probs", "model_cascade", "most_confident", "most_confident_ensemble",
           "order_by_cost", "parse_ladder", "pixelate", "resolution_cascade", "resolution_probs", "run_cascade",
           "run_cascade_lazy", "select_threshold", "sweep_thresholds"]

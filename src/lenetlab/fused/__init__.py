"""Fused-layer execution of LeNet-5's conv stack (USEFUSE: Ibrahim, Usman, Lee 2024/25; docs/papers/fused.md).

- :mod:`~lenetlab.fused.stages`: the conv/pool layers (with their activations) and their names.
- :mod:`~lenetlab.fused.schedule`: a group of layers + output tile size + stride policy, and its pyramids.
- :mod:`~lenetlab.fused.simulate`: exact tile-by-tile execution, stitched, against the unfused model.
- :mod:`~lenetlab.fused.counting`: off-chip traffic, on-chip buffer, MACs, operational intensity.
- :mod:`~lenetlab.fused.end`: early negative detection with an MSDF digit-serial model.
- :mod:`~lenetlab.fused.table`: one row per schedule (``lenetlab fused``, ``lenetlab reproduce fused``).

Example::

    from lenetlab.deploy.export import build_flat
    from lenetlab.fused import schedule_rows
    fm = build_flat(model, cfg, int8=True)
    rows = schedule_rows(fm, "conv1,pool1,conv2,pool2", [1, 2, 3, 4, 5], ("uniform", "ragged"), images)
"""

from lenetlab.fused.counting import Counts, count_fused, count_layer_by_layer
from lenetlab.fused.end import EndResult, end_analysis, end_layer
from lenetlab.fused.schedule import POLICIES, Schedule, plan, pyramid, tile_ranges
from lenetlab.fused.simulate import group_io, run_schedule
from lenetlab.fused.stages import Stage, select, stages
from lenetlab.fused.table import parse_tiles, schedule_rows

__all__ = ["Counts", "EndResult", "POLICIES", "Schedule", "Stage", "count_fused", "count_layer_by_layer",
           "end_analysis", "end_layer", "group_io", "parse_tiles", "plan", "pyramid", "run_schedule",
           "schedule_rows", "select", "stages", "tile_ranges"]

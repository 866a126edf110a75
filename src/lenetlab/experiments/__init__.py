"""Paper reproductions (``lenetlab reproduce NAME``), one module per paper.

Each module registers its experiment; :data:`lenetlab.catalogue.BUILTINS` lists the modules.
"""

from lenetlab.experiments.base import Cells, Claim, Context, Experiment, Result, Timings, reproduce

__all__ = ["Cells", "Claim", "Context", "Experiment", "Result", "Timings", "reproduce"]

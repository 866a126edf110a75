"""The one catalogue of lenetlab's built-in components: which modules to import to register them.

A component registers itself where it is defined (``@register(kind, name)``);
this file only says which modules hold such definitions. The registry imports
every module in :data:`BUILTINS` the first time it is asked for anything, then
the outside plugins (Python entry points, group ``lenetlab.plugins``, see
:mod:`lenetlab.registry`). A module missing here is a bug that
``tests/test_registry.py`` reports; a module listed here that fails to import
fails loudly - there is no "optional" built-in.

This module imports nothing, so reading it costs nothing.
"""

from __future__ import annotations

BUILTINS: tuple[str, ...] = (
    # data and models
    "lenetlab.data.datasets",
    "lenetlab.models.activations",
    "lenetlab.models.lenet5",
    "lenetlab.models.classic",
    "lenetlab.models.spiking",
    "lenetlab.models.deep",
    "lenetlab.models.pca_logreg",
    # training: optimisers, schedules, presets, trainer plugins, learning rules
    "lenetlab.train.optim",
    "lenetlab.train.schedules",
    "lenetlab.train.presets",
    "lenetlab.train.lb_restart",
    "lenetlab.train.zeroth_order",
    "lenetlab.train.plugins",     # the trainer_plugin base (its plugins register in the modules around it)
    "lenetlab.train.lbfgs",
    "lenetlab.rules.base",
    "lenetlab.rules.builtin",
    "lenetlab.noise.training",
    # capabilities
    "lenetlab.attacks.gradient",
    "lenetlab.attacks.transfer",
    "lenetlab.attacks.art_attacks",   # art:* (ART imported only when one runs)
    "lenetlab.faults.models",
    "lenetlab.compress.base",
    # exporters (lenetlab export --format)
    "lenetlab.deploy.export",
    "lenetlab.deploy.c_runtime",
    "lenetlab.deploy.web",
    "lenetlab.deploy.onnx_export",
    # experiments (lenetlab reproduce NAME)
    "lenetlab.experiments.abs",
    "lenetlab.experiments.fused",
    "lenetlab.experiments.cascade",
    "lenetlab.experiments.noise",
    "lenetlab.experiments.faults",
    "lenetlab.experiments.zo",
    "lenetlab.experiments.snn",
    "lenetlab.experiments.tt",
    "lenetlab.experiments.matrix",
    "lenetlab.experiments.deploy",
    "lenetlab.experiments.lenet5",
)

# Which of BUILTINS to import for one kind (lenetlab.registry loads only these when asked for that kind):
# the modules whose own code registers its components. tests/test_registry.py checks, in a fresh process,
# that these are exactly the modules that do.
KINDS: dict[str, tuple[str, ...]] = {
    "activation": ("lenetlab.models.activations",),
    "attack": ("lenetlab.attacks.gradient", "lenetlab.attacks.transfer", "lenetlab.attacks.art_attacks"),
    "compressor": ("lenetlab.compress.base",),
    "dataset": ("lenetlab.data.datasets",),
    "experiment": ("lenetlab.experiments.abs", "lenetlab.experiments.fused", "lenetlab.experiments.cascade",
                   "lenetlab.experiments.noise", "lenetlab.experiments.faults", "lenetlab.experiments.zo",
                   "lenetlab.experiments.snn", "lenetlab.experiments.tt", "lenetlab.experiments.matrix",
                   "lenetlab.experiments.deploy", "lenetlab.experiments.lenet5"),
    "exporter": ("lenetlab.deploy.export", "lenetlab.deploy.c_runtime", "lenetlab.deploy.web",
                 "lenetlab.deploy.onnx_export"),
    "fault_model": ("lenetlab.faults.models",),
    "model": ("lenetlab.models.lenet5", "lenetlab.models.classic", "lenetlab.models.spiking",
              "lenetlab.models.deep", "lenetlab.models.pca_logreg", "lenetlab.compress.base"),
    "optimizer": ("lenetlab.train.optim",),
    "preset": ("lenetlab.train.presets",),
    "rule": ("lenetlab.rules.builtin",),
    "schedule": ("lenetlab.train.schedules", "lenetlab.train.lb_restart"),
    "trainer_plugin": ("lenetlab.train.lb_restart", "lenetlab.train.zeroth_order", "lenetlab.train.lbfgs",
                       "lenetlab.rules.base", "lenetlab.noise.training"),
}

# Modules that own ``lenetlab`` subcommands: each defines ``add_commands(subparsers)``.
COMMANDS: tuple[str, ...] = (
    "lenetlab.quant.cli",
    "lenetlab.fused.cli",
    "lenetlab.cascade.cli",
    "lenetlab.noise.cli",
    "lenetlab.faults.cli",
    "lenetlab.attacks.cli",
    "lenetlab.compress.cli",
    "lenetlab.plot_cli",
)

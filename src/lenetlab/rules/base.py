"""One base class for learning rules, and ``attach_rule`` (Lin & Sengupta 2025, docs/papers/snn-attacks.md).

A rule changes only the *backward* pathway of a model: the forward pass, the
loss and the optimiser step stay the trainer's own. :meth:`Rule.install`
receives the model's blocks - ``(weight layer, block-output module)`` pairs,
from ``model.rule_blocks()`` (``lenet5_snn``) or the attributes of the modern
``lenet5`` - and installs hooks through an :class:`Installer`, which
remembers how to undo every one of them. The returned :class:`RuleHandle`
has ``parameters()`` (extra trainable parameters; none for the built-in
rules, whose feedback matrices and local classifiers are fixed) and
``remove()``.

Feedback matrices are a pure function of ``(seed, block index)`` (their own
``torch.Generator``, the global RNG is untouched), so an attack can rebuild
a run's exact learning pathway from its config (``train.rule.name``,
``train.seed``). :class:`RulePlugin` is how ``fit`` trains with a rule
(``lenetlab train --rule dfa``).

Example::

    from lenetlab.rules import attach_rule
    handle = attach_rule(model, "dfa", seed=0)
    loss_fn(model(x), y).backward()      # DFA gradients in every .grad
    handle.remove()
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lenetlab.errors import LenetlabError
from lenetlab.registry import get, names, register
from lenetlab.train.plugins import TrainContext, TrainerPlugin


class RuleHandle:
    """What ``attach_rule`` returns: extra parameters and the undo."""

    def __init__(self, name: str, undo: list[Callable[[], None]], params: list[nn.Parameter] | None = None,
                 state: dict[str, Any] | None = None):
        self.name = name
        self._undo = undo
        self._params = list(params or [])
        self.state = state if state is not None else {}   # feedback matrices / local heads, by block index (for tests)

    def parameters(self) -> list[nn.Parameter]:
        return list(self._params)

    def remove(self) -> None:
        for fn in reversed(self._undo):
            fn()
        self._undo = []


class Installer:
    """Hooks a rule installs on a model, each with its undo."""

    def __init__(self, model: nn.Module, seed: int):
        self.model = model
        self.seed = seed
        self.undo: list[Callable[[], None]] = []
        self.state: dict[str, Any] = {}

    def generator(self, index: int, tag: str) -> torch.Generator:
        """A private generator for block ``index``: the same matrices for the same (seed, rule, block)."""
        salt = sum(ord(c) * 31 ** i for i, c in enumerate(tag)) % 100_003
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt * 101 + index)

    def replace_forward(self, module: nn.Module, fn: Callable[..., torch.Tensor]) -> None:
        """Swap ``module.forward`` for ``fn`` on this instance only (the state dict is untouched)."""
        module.forward = fn

        def undo() -> None:
            del module.forward
        self.undo.append(undo)

    def wrap_output(self, module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace ``module``'s output by ``fn(output)`` (a forward hook)."""
        h = module.register_forward_hook(lambda m, i, o: fn(o))
        self.undo.append(h.remove)


class Rule:
    """Subclasses set ``name``/``description`` and implement :meth:`install`.

    ``recommended`` maps a model name to the ``train`` settings the rule was
    tuned with on it (see :func:`recommended_train`); empty means the preset's
    own settings are fine.
    """

    name = ""
    description = ""
    recommended: dict[str, dict[str, Any]] = {}

    def install(self, inst: Installer, blocks: list[tuple[nn.Module, nn.Module | None]],
                time_major: bool) -> None:
        raise NotImplementedError


def recommended_train(rule: str, model: str) -> dict[str, Any]:
    """The ``train`` overrides rule ``rule`` recommends on model ``model`` ({} if none).

    Config resolution (:func:`lenetlab.train.presets.resolve`, so ``lenetlab
    train --rule X``, sweeps and ``lenetlab reproduce snn-attacks``) applies
    them on top of the preset; a TOML file or flags (``--lr``, ``--set
    train.batch_size=...``) still override them.
    """
    if rule not in names("rule"):
        raise LenetlabError(f"unknown rule {rule!r}; choose from: {', '.join(names('rule'))}")
    return dict(get("rule", rule).recommended.get(model, {}))


def model_blocks(model: nn.Module) -> list[tuple[nn.Module, nn.Module | None]]:
    """The (weight layer, block-output module) pairs of a model, last one the output layer."""
    if hasattr(model, "rule_blocks"):
        return model.rule_blocks()
    from lenetlab.models.lenet5 import LeNet5

    if isinstance(model, LeNet5):
        return [(model.conv1, model.act1), (model.conv2, model.act2), (model.fc1, model.act3),
                (model.fc2, model.act4), (model.fc3, None)]
    name = getattr(model, "model_name", type(model).__name__)
    raise LenetlabError(f"learning rules need lenet5 (and its variants) or lenet5_snn; got {name}")


def attach_rule(model: nn.Module, rule: Any, seed: int | None = None) -> RuleHandle:
    """Install a learning rule on ``model``. ``rule``: a name or a TrainConfig (uses ``.rule.name``/``.seed``)."""
    if not isinstance(rule, str):
        tc = rule
        if tc.zo.method != "bp":
            raise LenetlabError(f"train.rule {tc.rule.name!r} changes the backward pass and cannot be combined "
                                f"with train.method {tc.zo.method!r}")
        rule, seed = tc.rule.name, tc.seed if seed is None else seed
    if rule not in names("rule"):
        raise LenetlabError(f"unknown rule {rule!r}; choose from: {', '.join(names('rule'))}")
    impl: Rule = get("rule", rule)()
    blocks = model_blocks(model)
    inst = Installer(model, 0 if seed is None else int(seed))
    impl.install(inst, blocks, bool(getattr(model, "rule_time_major", False)))
    return RuleHandle(rule, inst.undo, state=inst.state)


@register("trainer_plugin", "rule")
class RulePlugin(TrainerPlugin):
    """Train with a local learning rule (``train.rule.name`` other than bp): the backward pathway is replaced,
    the forward, loss and optimiser step stay ``fit``'s. Stateless: the feedback matrices are a function of
    ``(train.seed, block)``."""

    order = 20

    @classmethod
    def active(cls, tc: Any) -> bool:
        return tc.rule.name != "bp"

    @classmethod
    def recommended(cls, train: dict[str, Any], model: str) -> dict[str, Any]:
        # a local learning rule's tuned batch size / lr on this model (FA, DFA)
        section = train.get("rule")
        rule = section.get("name") if isinstance(section, dict) else None
        return recommended_train(str(rule), model) if rule and rule != "bp" else {}

    def setup(self, ctx: TrainContext) -> list[nn.Parameter]:
        self.handle = attach_rule(ctx.model, ctx.tc)
        return self.handle.parameters()   # LE's local classifiers would train with the model (none built in)

    def teardown(self, ctx: TrainContext) -> None:
        self.handle.remove()

"""Learning rules - BP, FA, DFA, LE - on ``lenet5`` and ``lenet5_snn`` (Lin & Sengupta 2025).

``lenetlab train --model lenet5_snn --rule dfa``; ``lenetlab list rules``.
"""

from lenetlab.rules import builtin  # noqa: F401  (registers the rules)
from lenetlab.rules.base import Installer, Rule, RuleHandle, attach_rule, model_blocks, recommended_train

__all__ = ["Installer", "Rule", "RuleHandle", "attach_rule", "model_blocks", "recommended_train"]

"""Attack library: objectives (SINGLE / TOTAL / SignSum / DGBA / MINMAX) x methods (FGSM /
PGD (I-FGSM) / MI-FGSM / APGD) on one shared loop. Entry points: `attack(...)` and `Attack`.

Attacks run in pixel space ([0, 1], the model normalises), L-inf budget `eps` in 1/255 units,
on any model whose `forward(x)` returns a mapping task -> tensor. A new objective or method is
one file that calls `register_objective` / `register_method`; the built-ins, imported below,
register themselves the same way.
"""
from __future__ import annotations

# Built-ins register themselves on import (objectives first: the registry keeps their order).
from mtl.attacks import objectives, dgba, minmax  # noqa: F401  isort: skip
from mtl.attacks import fgsm, pgd, mifgsm, apgd  # noqa: F401  isort: skip
from mtl.attacks.apgd_official import dataset_clean_losses, with_dataset_clean_losses
from mtl.attacks.attack_fn import attack
from mtl.attacks.attack_object import Attack
from mtl.attacks.base import AttackMethod
from mtl.attacks.inputs import attacked_tasks
from mtl.attacks.modes import eval_mode
from mtl.attacks.objective import Objective
from mtl.attacks.options import Option
from mtl.attacks.registry import (METHODS, OBJECTIVES, accepted_options, available_objectives,
                                  method_names, objective_names, register_method,
                                  register_objective, validate_attack)
from mtl.attacks.spec import AttackSpec

__all__ = ["Attack", "AttackMethod", "AttackSpec", "METHODS", "OBJECTIVES", "Objective",
           "Option", "accepted_options", "attack", "attack_tasks", "available_objectives",
           "dataset_clean_losses", "eval_mode", "method_names", "objective_names", "register_method",
           "register_objective", "validate_attack", "with_dataset_clean_losses"]


attack_tasks = attacked_tasks  # the earlier name

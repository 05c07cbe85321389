"""PGD / I-FGSM — Kurakin, Goodfellow, Bengio, "Adversarial examples in the physical world"
(2017, I-FGSM) and Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks"
(ICLR 2018, PGD with random start).

K steps of size alpha along sign(c), each followed by projection onto the eps-ball and [0, 1].
Distance: L-inf.

Options: alpha (1/255 units; default eps / steps, the I-FGSM choice), random_start (default
False: uniform start in the eps-ball, Madry et al.), seed (default 0, for the random start).
Alias: 'ifgsm'.
"""
from __future__ import annotations

from typing import ClassVar, Mapping

from mtl.attacks.base import ALPHA, RANDOM_START, SEED, AttackMethod
from mtl.attacks.options import Option
from mtl.attacks.registry import register_method


class PGD(AttackMethod):
    """Projected gradient (sign) ascent: I-FGSM without random start, PGD with it."""

    name: ClassVar[str] = "pgd"
    option_specs: ClassVar[Mapping[str, Option]] = {"alpha": ALPHA, "random_start": RANDOM_START,
                                                    "seed": SEED}


register_method(PGD, aliases=("ifgsm",))

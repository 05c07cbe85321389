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

from typing import Any, ClassVar, Mapping

from mtl.attacks.base import Attack


class PGD(Attack):
    """Projected gradient (sign) ascent: I-FGSM without random start, PGD with it."""

    name: ClassVar[str] = "pgd"
    defaults: ClassVar[Mapping[str, Any]] = {"alpha": None, "random_start": False, "seed": 0}

"""`eval_mode(model)`: eval mode for crafting, with every module's own mode saved once and restored.

Saving and restoring each module's `training` flag walks the whole module tree; done per attack
call and per scored batch it is bookkeeping that grows with the number of calls (28k `train()`
calls in one profiled trial). Wrapping a whole evaluation pass in `with eval_mode(model):` saves
the modes once; `Attack` calls inside it (which use the same context manager) then only check
that the model is still held in eval mode and pay nothing else.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

from torch import nn

_HELD: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # models an outer eval_mode holds


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block and restore every module's mode after it.

    Nested use on a model an outer block holds (and that is still in eval mode) costs nothing.
    """
    if model in _HELD and not model.training:
        yield model
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    _HELD.add(model)
    try:
        yield model
    finally:
        _HELD.discard(model)
        for module, mode in modes:
            module.training = mode


@contextmanager
def held_eval(models: Iterable[nn.Module]) -> Iterator[None]:
    """`eval_mode` for several models at once: an evaluation pass over a surrogate and its
    targets saves and restores their modes once, not per batch or per attack."""
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(eval_mode(model))
        yield

"""The numeric limits of a configuration, in one place, each with its reason.

Values past these are refused when the config is read (before any work), because what they
would feed fails or runs for ever later: torch takes seeds as int64, an attack of 10**9 steps
never ends, a retry count of -1 means "retry for ever" to Ray Tune.
"""
from __future__ import annotations

MAX_SEED = 2**63 - 1
"""Seeds go to torch.manual_seed / numpy generators, which take a signed 64-bit integer."""

MAX_STEPS = 10_000
"""Iterations of one attack (white-box, cross-task, adversarial training): a PGD step is a
forward and backward pass per batch; past 10,000 an attack stops being an experiment."""

MAX_ATTACKS = 1_000
"""Attack configurations (methods x objectives x eps) run on every kept checkpoint."""

MAX_SAMPLES = 10**9
"""Samples of a split of a dataset whose own factory states no bound (its registered check
may state a tighter one, as scenes does): the index of a sample must fit an int32-sized
sampler, and nobody trains a trial on more."""

MAX_EVAL_SAMPLES = 10**7
"""Test images attacked per checkpoint; also at most the test split (``dataset.test``)."""

MAX_FAILURES = 100
"""Retries of a failed trial (0..100); Ray Tune reads -1 as "retry for ever"."""

DEFAULT_MAX_TRIALS = 10_000
"""Trials of one sweep unless ``max_trials`` says more: a grid over several long lists grows
multiplicatively (``layouts: all`` with 6 tasks is 120,196 layouts) and each trial trains a
model, so a larger sweep must be asked for."""

MAX_CHOICES = 1_000
"""Values of one search ``choice`` (each is checked like an axis value)."""

MAX_TRIALS = 1_000_000
"""The most ``max_trials`` may allow: every trial is validated and scheduled one by one."""

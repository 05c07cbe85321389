"""Shared pytest setup: small thread counts, an isolated cache, deterministic torch."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)  # module-scoped fixtures (rendering, training) run before the below


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Every test runs torch on one thread, whatever the code under test set before.

    Tiny tensors gain nothing from a second thread, and on a loaded 2-core machine OpenMP
    barriers made small training loops up to ~18x slower with 2 threads than with 1 (measured).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Scene renders go to a per-session cache, never to the user's home."""
    os.environ["MTLSWEEP_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def _registries() -> list[dict]:
    """Every process-wide registry a test may add to (tasks, datasets, models, attacks)."""
    import mtl.attacks.registry as attacks
    import mtl.data.registry as data
    import mtl.models.registry as models
    import mtl.tasks as tasks
    return [tasks._REGISTRY, data._REGISTRY._entries, models._REGISTRY._entries,
            attacks._OBJECTIVES, attacks._METHODS, attacks._ALIASES]


@pytest.fixture(autouse=True)
def _isolated_registries() -> Iterator[None]:
    """What a test registers (a task, a dataset, an attack) does not leak into the next test:
    two tests may define a task of the same name differently, as two user projects would."""
    saved = [dict(r) for r in _registries()]
    yield
    for registry, before in zip(_registries(), saved):
        registry.clear()
        registry.update(before)

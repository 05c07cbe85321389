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

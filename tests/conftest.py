"""Shared pytest setup: small thread counts, an isolated cache, deterministic torch."""
from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # Tiny tensors: one thread is faster than two (thread start-up dominates), and it keeps
    # tests from fighting Ray workers for the cores.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Scene renders go to a per-session cache, never to the user's home."""
    os.environ["MTLSWEEP_CACHE"] = str(tmp_path_factory.mktemp("cache"))

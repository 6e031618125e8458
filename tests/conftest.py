"""Shared pytest fixtures, and the ``gpu`` marker's skip when no CUDA device is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grasp_dl.data import examples


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every test marked ``gpu`` when ``torch.cuda.is_available()`` is false, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is false")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pal13_path() -> Path:
    """The real Gaia DR3 archive export around Palomar 13, shipped inside the package."""
    return examples.pal13_path()

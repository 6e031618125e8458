"""Shared pytest fixtures, and the ``gpu`` marker's deselection when no CUDA device is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grasp_dl.data import examples


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests marked ``gpu`` when ``torch.cuda.is_available()`` is false.

    They are not part of a CPU run (pytest reports them as deselected, not as skipped); a GPU
    machine runs them, and ``scripts/gpu_check.sh`` runs them alone with ``-m gpu``.
    """
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if "gpu" in item.keywords]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if "gpu" not in item.keywords]


@pytest.fixture(scope="session")
def pal13_path() -> Path:
    """The real Gaia DR3 archive export around Palomar 13, shipped inside the package."""
    return examples.pal13_path()

"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from grasp_dl.data import examples


@pytest.fixture(scope="session")
def pal13_path() -> Path:
    """The real Gaia DR3 archive export around Palomar 13, shipped inside the package."""
    return examples.pal13_path()

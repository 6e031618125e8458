"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pal13_path() -> Path:
    """The real Gaia DR3 archive export around Palomar 13 (../shared/data beside the repository)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gaia_dr3_pal13_cone.csv"
    if not path.is_file():
        pytest.fail(
            f"real Gaia test data not found at {path}: the tests expect the 'shared' folder "
            "(with data/gaia_dr3_pal13_cone.csv) to sit beside the repository checkout."
        )
    return path

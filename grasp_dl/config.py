"""Where the Hydra configs live, from a source checkout, an editable install or a wheel."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def conf_dir() -> Path:
    """The ``conf/`` directory: top level of the checkout, else ``grasp_dl/conf`` in the wheel."""
    checkout = Path(__file__).resolve().parents[1] / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    packaged = Path(str(importlib.resources.files("grasp_dl") / "conf"))
    if (packaged / "train.yaml").is_file():
        return packaged
    raise FileNotFoundError(
        f"grasp-dl's configs were not found in {checkout} or {packaged}: reinstall the package"
    )

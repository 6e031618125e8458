"""Where the Hydra configs live, from a source checkout, an editable install or a wheel."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from grasp_dl.runtime.errors import ConfigError


def conf_dir() -> Path:
    """The folder of grasp-dl's Hydra configs (the one every command and helper composes from).

    Returns
    -------
    pathlib.Path
        ``conf/`` at the top of a source checkout or editable install when it holds ``train.yaml``,
        else the copy packaged in the wheel as ``grasp_dl/conf``.

    Raises
    ------
    ConfigError
        If neither folder holds ``train.yaml`` (a broken install).
    """
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    packaged = Path(str(importlib.resources.files("grasp_dl") / "conf"))
    if (packaged / "train.yaml").is_file():
        return packaged
    raise ConfigError(f"grasp-dl's configs were not found in {checkout} or {packaged}: reinstall the package")

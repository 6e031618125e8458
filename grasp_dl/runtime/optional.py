"""Optional dependencies: import them, or say which extra of grasp-dl to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from grasp_dl.runtime.errors import MissingDependencyError

#: The extra of grasp-dl that installs each optional module (pyproject.toml's optional-dependencies).
EXTRAS = {
    "optuna": "sweep",
    "hydra_plugins.hydra_optuna_sweeper": "sweep",
    "hydra_plugins.hydra_joblib_launcher": "sweep",
    "hydra_plugins.hydra_submitit_launcher": "sweep",
    "nbclient": "dev",
    "nbformat": "dev",
}


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported (False for a module hidden or absent).

    Parameters
    ----------
    name : str
        A module name, e.g. 'optuna'.

    Returns
    -------
    bool
    """
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def import_optional(name: str, purpose: str) -> ModuleType:
    """Import the optional module ``name``, or raise an error naming the extra that installs it.

    Parameters
    ----------
    name : str
        The module, e.g. 'optuna'.
    purpose : str
        What needs it, for the message (e.g. 'optimize_hyperparameters(n_trials=...)').

    Returns
    -------
    module
        The imported module.

    Raises
    ------
    MissingDependencyError
        If the module cannot be imported.
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        extra = EXTRAS.get(name, "dev")
        raise MissingDependencyError(
            f"{purpose} needs {name.split('.')[-1]}, which is not installed: pip install 'grasp-dl[{extra}]'"
        ) from error


#: Command-line overrides that need a Hydra plugin, and the plugin's module.
CLI_PLUGINS = {
    "hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hydra/sweeper=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hydra/launcher=local_parallel": "hydra_plugins.hydra_joblib_launcher",
    "hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher",
    "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=submitit_local": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=survey_slurm": "hydra_plugins.hydra_submitit_launcher",
}


def check_cli_plugins(overrides: list[str]) -> None:
    """Fail early, naming the extra, when a command-line override needs a Hydra plugin that is absent.

    Parameters
    ----------
    overrides : list of str
        The command line's overrides, e.g. ``['-m', 'hparams_search=optuna']``.

    Raises
    ------
    MissingDependencyError
        If an override needs a plugin that cannot be imported.
    """
    for override in overrides:
        module = CLI_PLUGINS.get(override.lstrip("+~").replace(" ", ""))
        if module is not None:
            import_optional(module, override)

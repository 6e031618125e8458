"""Device names of the notebook facade ('auto', 'cpu', 'cuda', 'cuda:N', 'gpu', 'mps')."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from grasp_dl.runtime.errors import ConfigError


def trainer_overrides(device: str) -> list[str]:
    """The Hydra trainer overrides that train on ``device``.

    Parameters
    ----------
    device : str
        'auto' (Lightning chooses), 'cpu', 'cuda' / 'gpu', 'cuda:N' / 'gpu:N' or 'mps'.

    Returns
    -------
    list of str
        e.g. ``["trainer.accelerator=gpu", "trainer.devices=[1]"]``; empty for 'auto'.

    Raises
    ------
    ConfigError
        For any other name.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return []
    if name in ("cpu", "mps"):
        return [f"trainer.accelerator={name}", "trainer.devices=1"]
    if name in ("cuda", "gpu"):
        return ["trainer.accelerator=gpu", "trainer.devices=1"]
    match = re.fullmatch(r"(?:cuda|gpu):(\d+)", name)
    if match:
        return ["trainer.accelerator=gpu", f"trainer.devices=[{match.group(1)}]"]
    raise ConfigError(f"unknown device={device!r}: choose 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def inference_device(device: str) -> torch.device:
    """Where predictions run: the GPU for 'auto' when there is one, else as ``device`` says.

    Parameters
    ----------
    device : str
        A name :func:`trainer_overrides` accepts.

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    ConfigError
        For an unknown name.
    """
    name = str(device).strip().lower()
    trainer_overrides(name)  # validates the name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("gpu"):
        name = "cuda" + name[3:]
    return torch.device(name)


@contextlib.contextmanager
def single_cpu_thread(device: torch.device | str) -> Iterator[None]:
    """Within it, torch computes on one CPU thread when ``device`` is the CPU (restored after).

    The package's tensors on the CPU are small (a chunk of a network's forward pass, an E-step over
    a few thousand stars): a second intra-op thread barely shortens them, and on a busy machine it
    spins against the other processes and threads, which can make such a loop ten times slower.

    Parameters
    ----------
    device : torch.device or str
        Where the computation runs; on a GPU nothing changes.
    """
    if torch.device(device).type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

"""GPU memory statistics (the seed's ``gpu_memory_usage``)."""

from __future__ import annotations

from typing import Any

import torch

from grasp_dl.runtime.errors import ConfigError


def gpu_memory_usage(device: int | str | torch.device | None = None) -> dict[str, Any]:
    """Memory of a CUDA device in MiB; zeros on a CPU-only machine.

    Parameters
    ----------
    device : int, str or torch.device, optional
        The CUDA device; the current one by default.

    Returns
    -------
    dict
        ``available``, ``device``, ``name``, ``allocated_mb``, ``reserved_mb``,
        ``max_allocated_mb``, ``free_mb`` and ``total_mb``.

    Raises
    ------
    ConfigError
        When ``device`` is not a CUDA device.
    """
    if not torch.cuda.is_available():
        return {
            "available": False,
            "device": "cpu",
            "name": "no GPU: running on the CPU",
            "allocated_mb": 0.0,
            "reserved_mb": 0.0,
            "max_allocated_mb": 0.0,
            "free_mb": 0.0,
            "total_mb": 0.0,
        }
    index = torch.device(device if device is not None else f"cuda:{torch.cuda.current_device()}")
    if index.type != "cuda":
        raise ConfigError(f"gpu_memory_usage needs a CUDA device, got {device!r}")
    free, total = torch.cuda.mem_get_info(index)
    mib = float(2**20)
    return {
        "available": True,
        "device": str(index),
        "name": torch.cuda.get_device_name(index),
        "allocated_mb": torch.cuda.memory_allocated(index) / mib,
        "reserved_mb": torch.cuda.memory_reserved(index) / mib,
        "max_allocated_mb": torch.cuda.max_memory_allocated(index) / mib,
        "free_mb": free / mib,
        "total_mb": total / mib,
    }

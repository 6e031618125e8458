"""Shared pytest fixtures, and the ``gpu`` marker's deselection when no CUDA device is present."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from grasp_dl.data import examples


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n auto``), each worker computes on its share of the CPU cores.

    Two workers on two cores with torch's default of two threads each would spin four threads
    against each other; the processes a test starts (the console, DDP) inherit the same share.
    """
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


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


@pytest.fixture
def run_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[[list[str], Path], subprocess.CompletedProcess]:
    """``grasp-dl ARGS`` run by the console script's entry point, ``grasp_dl.cli.main``, in this process.

    ``run_main(args, cwd)`` returns the exit status, stdout and stderr as ``subprocess.run`` would,
    without a new interpreter's start-up (seconds of imports); an exception that escapes ``main`` (a
    traceback) fails the test. For what only a real process shows (its exit, the console's lines, a
    signal), tests still start one (test_console, test_hardening, test_train's usage).
    """
    from grasp_dl.cli import main

    def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", list(sys.argv))  # main sets it for Hydra
        sigterm = signal.getsignal(signal.SIGTERM)  # main installs its clean-up on SIGTERM
        capsys.readouterr()
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = 0 if exc.code is None else exc.code
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run

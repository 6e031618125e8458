"""The tutorial notebooks run top to bottom (nbclient) in this interpreter, and are committed without outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
QUICKSTART = NOTEBOOKS / "01_quickstart.ipynb"
REUSE = NOTEBOOKS / "02_reuse.ipynb"
TUTORIAL = NOTEBOOKS / "03_tutorial.ipynb"
#: A kernel name of our own, so that no other 'python3' kernel (a user's, another venv's) is picked.
KERNEL = "grasp-dl-tests"
#: Each notebook, outputs cleared, stays small in the repository.
MAX_NOTEBOOK_BYTES = 30_000


@pytest.fixture
def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec that starts this interpreter (the venv's python), first on JUPYTER_PATH."""
    from ipykernel.kernelspec import install

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    install(kernel_name=KERNEL, prefix=str(tmp_path))
    return KERNEL


def run_notebook(path: Path, kernel_name: str) -> nbformat.NotebookNode:
    """Execute a notebook in its own folder (as Jupyter does) and return it with its outputs."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    return notebook


def _text(notebook: nbformat.NotebookNode) -> str:
    """Everything the code cells printed or returned as text."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _images(notebook: nbformat.NotebookNode) -> int:
    """How many PNG images the notebook displayed."""
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def test_the_test_kernel_is_this_interpreter(kernel_name, tmp_path):
    spec = json.loads((tmp_path / "share" / "jupyter" / "kernels" / KERNEL / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable


@pytest.mark.parametrize("path", [QUICKSTART, REUSE, TUTORIAL], ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(kernel_name):
    notebook = run_notebook(QUICKSTART, kernel_name)
    text = _text(notebook)
    assert "the reloaded model predicts the same groups" in text
    assert "member_f1" in text and "Gaussian mixture" in text
    # history, members, two latent spaces, comparison, reliability: Figures display inline
    assert _images(notebook) >= 6


@pytest.mark.slow
def test_reuse_runs_top_to_bottom_on_pal13(kernel_name):
    notebook = run_notebook(REUSE, kernel_name)
    text = _text(notebook)
    assert "stars read from" in text and "gaia_dr3_pal13_cone.csv" in text
    assert "with member_prob > 0.5" in text and "wrote pal13_members.ecsv" in text
    assert _images(notebook) >= 3


def test_tutorial_runs_top_to_bottom_and_covers_the_seed_points(kernel_name):
    """The seed's promised tutorial: preparation, search, GPU/CPU training, comparison, interpretation, persistence."""
    notebook = run_notebook(TUTORIAL, kernel_name)
    text = _text(notebook)
    assert "of 4000 rows kept" in text and "missing:pmra+pmdec+parallax" in text  # preparation
    assert "best parameters:" in text and "clustering/silhouette" in text  # hyper-parameter search
    assert "training on: " + ("cuda" if __import__("torch").cuda.is_available() else "cpu") in text
    assert "Gaussian mixture" in text and "HDBSCAN" in text and "member_f1_oracle" in text  # comparison
    assert "members' mean pmra" in text and "simulated members" in text  # interpretation
    assert "the reloaded model predicts the same groups" in text  # persistence
    assert "dl_probability" in text
    # training history, comparison, members (PM, sky, CMD)
    assert _images(notebook) >= 3

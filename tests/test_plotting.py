"""Figures: built without pyplot, saved headless, showing what the metrics say."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from grasp_dl.figures.plotting import reliability_diagram
from grasp_dl.runtime.errors import ConfigError


def test_reliability_diagram_plots_the_curve_and_counts(tmp_path):
    rng = np.random.default_rng(0)
    prob = rng.uniform(size=2000)
    outcome = rng.uniform(size=2000) < prob  # calibrated by construction
    fig = reliability_diagram(prob, outcome, n_bins=10)
    assert isinstance(fig, Figure)
    top, bottom = fig.axes
    line = top.get_lines()[1]
    np.testing.assert_allclose(line.get_xdata(), (np.arange(10) + 0.5) / 10)
    np.testing.assert_allclose(line.get_ydata(), line.get_xdata(), atol=0.1)
    assert "Brier" in top.get_legend().get_texts()[1].get_text()
    assert sum(p.get_height() for p in bottom.patches) == 2000
    path = tmp_path / "reliability.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reliability_diagram_skips_empty_bins_and_rejects_bad_input():
    fig = reliability_diagram([0.05, 0.95, 0.97], [0, 1, 1], n_bins=10)
    assert len(fig.axes[0].get_lines()[1].get_xdata()) == 2
    with pytest.raises(ConfigError, match="within"):
        reliability_diagram([1.5], [1])

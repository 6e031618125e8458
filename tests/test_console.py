"""A grasp-dl command prints its own lines once, without Lightning's tips; ``-v`` brings those back."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from collections import Counter

import pytest

from grasp_dl.runtime.console import QUIET_WARNINGS, quiet_frameworks, split_verbose

TIP = "Tip: For seamless cloud logging"
NO_OPTIMIZER = "configure_optimizers` returned `None`"


def _train(tmp_path, *flags):
    run_dir = tmp_path / "run"
    args = [*flags, "train", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "grasp_dl.cli", *args], cwd=tmp_path, capture_output=True, timeout=300)
    # bytes, not text=True: universal newlines would turn a progress bar's redraws into lines
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    return out + err


def _repeated_lines(text):
    # progress bars redraw with carriage returns: only whole printed lines count, and a bar's own draws
    # (tqdm's rate field) are not log lines: two validation passes draw the same empty bar twice
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.split("\n")]
    printed = [line for line in lines if line and not re.search(r"(it|s)/(s|it)\]", line)]
    return [line for line, n in Counter(printed).items() if n > 1]


@pytest.mark.slow
def test_default_run_is_quiet_and_prints_each_line_once(tmp_path):
    """The console script end to end: it trains, exits 0, says where its final model is, and says it quietly."""
    out = _train(tmp_path)
    assert TIP not in out
    assert NO_OPTIMIZER not in out
    assert "is deprecated" not in out
    assert _repeated_lines(out) == []
    final = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"final model: {final}" in out and final.is_file()


@pytest.mark.slow
def test_verbose_brings_lightning_messages_back_once(tmp_path):
    out = _train(tmp_path, "-v")
    assert TIP in out and "GPU available" in out
    assert _repeated_lines(out) == []


def test_verbose_flag_is_taken_out_of_the_hydra_overrides():
    assert split_verbose(["-v", "train", "seed=1"]) == (True, ["train", "seed=1"])
    assert split_verbose(["train", "--verbose"]) == (True, ["train"])
    assert split_verbose(["train", "seed=1"]) == (False, ["train", "seed=1"])


def test_only_the_named_warnings_are_silenced():
    """The filters match their own messages; a different warning of the same category still shows."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_frameworks(verbose=False):
            warnings.warn(
                "`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer",
                UserWarning,
                stacklevel=1,
            )
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
            warnings.warn("a real problem", UserWarning, stacklevel=1)
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
        with quiet_frameworks(verbose=True):
            warnings.warn(
                "`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer",
                UserWarning,
                stacklevel=1,
            )
    assert [str(w.message) for w in caught] == [
        "a real problem",
        "something else is deprecated",
        "`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer",
    ]
    assert len(QUIET_WARNINGS) == 2

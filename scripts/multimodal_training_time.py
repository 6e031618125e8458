"""Training time of ``model=multimodal`` against ``model=xd`` on real cones, and what each run agrees with.

On each cone, each repeat trains ``model=xd`` then ``model=multimodal`` (``grasp_dl.jobs.train.train``, the product
path: the default callbacks without the TensorBoard figures, one process, ``OMP_NUM_THREADS`` as the
caller sets it) on the same catalogue, and prints per run the wall time, the process's CPU time (on a
shared machine the wall time also counts the other processes' load; the CPU time counts this run's
work), the EM iterations (epochs), and, when the cone has a reference membership (``NAME.ref.csv``
beside it, Vasiliev & Baumgardt 2021), the F1 of ``member_prob > 0.5`` against ``memberprob > 0.5`` over
every row, and over the stars brighter and fainter than G = 18.5 (the published membership is
astrometric: where the proper motions are poor, the faint end, it is no truth for a model that also
reads the CMD). The last line is the median ratio multimodal / xd of both times over every run.

Run
---
    OMP_NUM_THREADS=1 python scripts/multimodal_training_time.py                      # NGC 6681, 10 679 stars
    OMP_NUM_THREADS=1 python scripts/multimodal_training_time.py --cone ngc6522 ngc6624 ngc6637 ngc6681
    OMP_NUM_THREADS=1 python scripts/multimodal_training_time.py --repeats 2 --set model.ensemble_size=3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from grasp_dl.data.examples import vb21_field_path
from grasp_dl.inference.predict import predict_catalog
from grasp_dl.jobs import train as pipeline
from grasp_dl.runtime.config import conf_dir


def train_once(model: str, cone: Path, extra: Sequence[str], output: Path) -> tuple[float, float, object]:
    """Train ``model`` on ``cone``; return wall seconds, CPU seconds and the result."""
    overrides = [
        f"model={model}",
        "data=catalog",
        f"data.path={cone}",
        "trainer.enable_progress_bar=false",
        "callbacks.tensorboard_figures=null",
        *(extra if model == "multimodal" else []),
    ]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output)
    wall, cpu = time.perf_counter(), time.process_time()
    result = pipeline.train(cfg, score_clusters=False)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def f1(member_prob: np.ndarray, truth: np.ndarray) -> float:
    """F1 of member_prob > 0.5 against the reference's members."""
    predicted = np.nan_to_num(member_prob) > 0.5
    return 2 * float((predicted & truth).sum()) / max(float(predicted.sum() + truth.sum()), 1.0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--cone", nargs="+", default=["ngc6681"], help="Gaia cones (CSV): paths, or names of the shipped fields"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="Hydra override for model=multimodal")
    args = parser.parse_args(argv)
    print(f"multimodal overrides: {args.set or 'none'}")
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    for cone in args.cone:
        path = Path(cone) if Path(cone).is_file() else vb21_field_path(cone)
        catalog = pd.read_csv(path)
        reference = path.with_name(path.name.replace(".csv", ".ref.csv"))
        truth = None
        if reference.is_file():
            ref = pd.read_csv(reference).set_index("source_id")["memberprob"]
            truth = ref.reindex(catalog["source_id"]).to_numpy() > 0.5
        bright = catalog["phot_g_mean_mag"].to_numpy(float) < 18.5
        for _repeat in range(args.repeats):
            times = {}
            for model in ("xd", "multimodal"):
                with tempfile.TemporaryDirectory() as tmp:
                    wall, cpu, result = train_once(model, path, args.set, Path(tmp))
                    table, _ = predict_catalog(result.module, catalog)
                times[model] = (wall, cpu)
                agreement = "-"
                if truth is not None:
                    p = table["member_prob"].to_numpy()
                    agreement = " / ".join(f"{f1(p[rows], truth[rows]):.3f}" for rows in (slice(None), bright, ~bright))
                print(
                    f"{path.stem:10s} ({len(catalog):6d} stars) {model:10s} wall {wall:7.1f} s  cpu {cpu:7.1f} s  "
                    f"epochs {result.module.current_epoch:3d}  F1 all / G<18.5 / G>=18.5 {agreement}",
                    flush=True,
                )
            ratios["wall"].append(times["multimodal"][0] / times["xd"][0])
            ratios["cpu"].append(times["multimodal"][1] / times["xd"][1])
    print(
        f"multimodal / xd: wall x{statistics.median(ratios['wall']):.2f}, cpu x{statistics.median(ratios['cpu']):.2f}"
    )


if __name__ == "__main__":
    main()

"""Speed and clustering quality together, for choosing the training defaults (batch size, matmul precision).

For each setting and simulated field it pretrains the product's autoencoder and trains DEC and
VaDE with the product's defaults (conf/model/dec.yaml, conf/model/vade.yaml), changing only the
setting under test, and prints the member F1 of the group each model names as the cluster (as
in scripts/benchmark_accuracy.py) beside the wall time of the three trainings and the
autoencoder's training throughput. Seeds vary the simulation, the split and the weights.

    python scripts/benchmark_defaults.py                                  # batch 256 / 1024 / 4096
    python scripts/benchmark_defaults.py --batch-sizes 1024 --matmul-precisions highest high medium
    python scripts/benchmark_defaults.py --fields m4 --seeds 0 --batch-sizes 256 512

Run it alone (or pinned to a free core with OMP_NUM_THREADS=1): it is a timing as well.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_accuracy as acc  # noqa: E402  (a sibling script, not part of the package)


def run_setting(field: str, seed: int, batch_size: int, epochs: int) -> dict[str, float]:
    """F1 of DEC and VaDE and the training times on one field with one batch size."""
    dm = acc.load_field(field, None, seed)
    dm.batch_size = batch_size
    truth = acc.truth_of(dm)
    ae, ae_seconds = acc.pretrain_autoencoder(dm, epochs, seed)
    dec = acc.run_deep("DEC", ae, dm, truth, 3, epochs, seed, acc.product_dec_optimizer())
    vade = acc.run_vade(ae, dm, truth, 3, epochs, seed)
    n_train = len(dm.train_index)
    return {
        "dec_f1": dec.f1,
        "vade_f1": vade.f1,
        "seconds": ae_seconds + dec.seconds + vade.seconds,
        "ae_stars_per_s": n_train * epochs / ae_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", nargs="+", default=["m4", "ngc6397", "47tuc_smc"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--matmul-precisions", nargs="+", default=["highest"], choices=["highest", "high", "medium"])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each phase (the product's default)")
    args = parser.parse_args()
    acc.quiet()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| batch | matmul | field | DEC F1 (per seed) | VaDE F1 (per seed) | train s (mean) | AE stars/s (mean) |")
    print("|---|---|---|---|---|---|---|")
    for batch, precision in itertools.product(args.batch_sizes, args.matmul_precisions):
        torch.set_float32_matmul_precision(precision)
        for field in args.fields:
            runs = [run_setting(field, seed, batch, args.epochs) for seed in args.seeds]
            dec = " / ".join(f"{r['dec_f1']:.3f}" for r in runs)
            vade = " / ".join(f"{r['vade_f1']:.3f}" for r in runs)
            seconds = statistics.mean(r["seconds"] for r in runs)
            rate = statistics.mean(r["ae_stars_per_s"] for r in runs)
            print(f"| {batch} | {precision} | {field} | {dec} | {vade} | {seconds:.0f} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()

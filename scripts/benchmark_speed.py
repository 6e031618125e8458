"""Training throughput of grasp-dl against its floor and against the seed's per-row loader.

For each catalogue size N and batch size it trains the default autoencoder (5-64-32-16-8, batch
norm, dropout, Adam) for a few epochs three ways, each in a fresh subprocess so that its peak
resident memory is its own:

  (a) lightning  the product path: StellarCatalogDataModule + AutoencoderModule + a Lightning
                 Trainer with the default callbacks and TensorBoard logging, as `grasp-dl train` runs
  (b) bare       a plain PyTorch loop over pre-batched tensors (no framework, no loader): the floor
  (c) dataloader a per-row torch Dataset + DataLoader(shuffle=True) loop, as in the seed

It prints stars per second (training stars per second of training time, the first epoch
excluded as warm-up), peak RSS, and the ratios a/b and a/c; `--dec` adds DEC epochs of (a).
`--predict N` times `grasp-dl predict` on N simulated rows (wall time and peak memory).

    python scripts/benchmark_speed.py                          # N = 1e5, 1e6; batch 256, 1024, 4096
    python scripts/benchmark_speed.py --sizes 100000 --batch-sizes 256 --epochs 3
    python scripts/benchmark_speed.py --sizes --predict 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("lightning", "bare", "dataloader")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _catalogue(n: int):
    """A simulated M4-like cone of n stars (the bundled example's parameters), as a DataFrame."""
    from grasp_dl.data.simulate import simulate_field

    return simulate_field("m4", n_stars=n, seed=0)


def _prepared_tensor(n: int, batch_size: int):
    from grasp_dl.data.datamodule import StellarCatalogDataModule

    dm = StellarCatalogDataModule(catalog=_catalogue(n), batch_size=batch_size, val_fraction=0.0)
    dm.setup()
    return dm


class _EpochTimer:
    """Training time per epoch (Lightning callback built lazily to keep imports in the child)."""

    @staticmethod
    def make():
        import lightning as L

        class EpochTimer(L.Callback):
            def __init__(self) -> None:
                self.times: list[float] = []

            def on_train_epoch_start(self, trainer, pl_module) -> None:
                self._start = time.perf_counter()

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                self.times.append(time.perf_counter() - self._start)

        return EpochTimer()


def run_lightning(n: int, batch_size: int, epochs: int, dec: bool) -> dict:
    """(a) The product path, with the default callbacks and a TensorBoard logger."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from grasp_dl.callbacks import StarsPerSecondProgressBar
    from grasp_dl.models.autoencoder import AutoencoderModule
    from grasp_dl.models.dec import DECModule

    dm = _prepared_tensor(n, batch_size)
    n_train = len(dm.train_index)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        module = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
        phases = [("autoencoder", module)]
        for phase, mod in phases:
            timer = _EpochTimer.make()
            trainer = L.Trainer(
                max_epochs=epochs,
                accelerator="auto",
                devices=1,
                logger=TensorBoardLogger(tmp, name=phase),
                callbacks=[timer, ModelCheckpoint(dirpath=f"{tmp}/ckpt/{phase}", save_last=True, monitor="train/loss"),
                           StarsPerSecondProgressBar(refresh_rate=50)],
                enable_model_summary=False,
                num_sanity_val_steps=0,
                log_every_n_steps=50,
            )
            trainer.fit(mod, datamodule=dm)
            steady = timer.times[1:] or timer.times
            out[phase] = n_train * len(steady) / sum(steady)
            if dec and phase == "autoencoder":
                phases.append(("dec", DECModule.from_autoencoder(mod, n_clusters=3, n_init=4)))
    return out


def _plain_loop(n_rows: int, n_features: int, epochs: int, batches) -> dict:
    """Train the default autoencoder with Adam over ``batches()`` (an iterable per epoch); time epochs."""
    import torch
    import torch.nn.functional as F

    from grasp_dl.models.networks import StellarAutoencoder

    net = StellarAutoencoder(n_features)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in batches():
            opt.zero_grad(set_to_none=True)
            F.mse_loss(net(batch)[0], batch).backward()
            opt.step()
        times.append(time.perf_counter() - start)
    steady = times[1:] or times
    return {"autoencoder": n_rows * len(steady) / sum(steady)}


def run_bare(n: int, batch_size: int, epochs: int) -> dict:
    """(b) The floor: the same network and optimiser over pre-batched tensors, nothing else."""
    import torch

    dm = _prepared_tensor(n, batch_size)
    x = dm.data[dm.train_index]
    return _plain_loop(len(x), x.shape[1], epochs, lambda: x[torch.randperm(len(x))].split(batch_size))


def run_dataloader(n: int, batch_size: int, epochs: int) -> dict:
    """(c) The seed's way: a per-row Dataset and DataLoader with the default collate."""
    from torch.utils.data import DataLoader, Dataset

    class Rows(Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    dm = _prepared_tensor(n, batch_size)
    x = dm.data[dm.train_index]
    loader = DataLoader(Rows(x), batch_size=batch_size, shuffle=True)
    return _plain_loop(len(x), x.shape[1], epochs, lambda: loader)


def child(method: str, n: int, batch_size: int, epochs: int, dec: bool) -> None:
    """Run one measurement and print it as JSON (called in a subprocess)."""
    import torch

    torch.manual_seed(0)
    runner = {"lightning": lambda: run_lightning(n, batch_size, epochs, dec),
              "bare": lambda: run_bare(n, batch_size, epochs),
              "dataloader": lambda: run_dataloader(n, batch_size, epochs)}[method]
    rates = runner()
    print(json.dumps({"rates": rates, "peak_rss_mib": _peak_rss_mib()}))


def measure(method: str, n: int, batch_size: int, epochs: int, dec: bool) -> dict:
    """One measurement in a fresh Python process."""
    cmd = [sys.executable, __file__, "--child", method, str(n), str(batch_size), str(epochs), str(int(dec))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"{method} N={n} batch={batch_size} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predict_benchmark(n: int) -> None:
    """Time `grasp-dl predict` on n simulated rows with a small trained model; print wall time and peak RSS."""
    from grasp_dl.data.catalog import write_catalog

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        train = [sys.executable, "-m", "grasp_dl.cli", "train", "data.simulate.n_stars=20000", "trainer.max_epochs=2",
                 "model.pretrain_epochs=2", "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"]
        subprocess.run(train, check=True, capture_output=True)
        catalogue = tmp / "big.parquet"
        start = time.perf_counter()
        chunks = []
        from grasp_dl.data.simulate import simulate_field
        import pandas as pd

        step = 1_000_000
        for i in range(0, n, step):
            chunks.append(simulate_field("m4", n_stars=min(step, n - i), seed=i // step))
        write_catalog(pd.concat(chunks, ignore_index=True), catalogue)
        del chunks
        print(f"wrote {n:,} rows in {time.perf_counter() - start:.0f} s ({catalogue.stat().st_size / 2**20:.0f} MiB)")
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "grasp_dl.cli", "predict",
               f"ckpt_path={run}/checkpoints/last.ckpt", f"data.path={catalogue}", f"output={tmp}/out.parquet",
               f"hydra.run.dir={tmp}/p"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        rss = next(line for line in proc.stderr.splitlines() if "Maximum resident" in line).split(":")[-1]
        print(f"| predict | {n:,} rows | {wall:.1f} s | {n / wall:,.0f} stars/s | peak RSS {int(rss) / 2**20:.2f} GiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    parser.add_argument("--dec", action="store_true", help="also time DEC epochs on the Lightning path")
    parser.add_argument("--predict", type=int, default=0, help="time grasp-dl predict on this many rows")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, n, batch, epochs, dec = args.child
        child(method, int(n), int(batch), int(epochs), bool(int(dec)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}")
    if args.sizes:
        print("| N | batch | (a) lightning stars/s | (b) bare stars/s | (c) dataloader stars/s | a/b | a/c "
              "| peak RSS a / b / c (MiB) |" + (" DEC stars/s |" if args.dec else ""))
        print("|---|---|---|---|---|---|---|---|" + ("---|" if args.dec else ""))
    for n in args.sizes:
        for batch in args.batch_sizes:
            res = {m: measure(m, n, batch, args.epochs, args.dec and m == "lightning") for m in METHODS}
            a, b, c = (res[m]["rates"]["autoencoder"] for m in METHODS)
            rss = " / ".join(f"{res[m]['peak_rss_mib']:.0f}" for m in METHODS)
            row = f"| {n:,} | {batch} | {a:,.0f} | {b:,.0f} | {c:,.0f} | {a / b:.2f} | {a / c:.2f} | {rss} |"
            if args.dec:
                row += f" {res['lightning']['rates'].get('dec', float('nan')):,.0f} |"
            print(row, flush=True)
    if args.predict:
        predict_benchmark(args.predict)


if __name__ == "__main__":
    main()

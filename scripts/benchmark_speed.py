"""Training throughput of grasp-dl against its floor and against the seed's per-row loader; predict at scale.

For each catalogue size N and batch size it trains the default autoencoder (5-64-32-16-8, batch
norm, dropout, Adam) three ways, each in a fresh subprocess so that its peak resident memory is
its own:

  (a) lightning  the product path as a user runs it: conf/train.yaml composed by Hydra with
                 model=autoencoder (and model=dec for --dec), run by grasp_dl.pipeline.train with
                 the default callbacks (progress bar, checkpoints, early stopping, TensorBoard
                 figures) and the TensorBoard logger
  (b) bare       a plain PyTorch loop over pre-batched tensors on the device (no framework, no
                 loader): the floor
  (c) dataloader a per-row torch Dataset + DataLoader(shuffle=True) loop with a host-to-device
                 copy per batch, as in the seed

Stars per second are training stars per second of training time (from the first to the last
training batch of an epoch; validation and end-of-epoch work excluded), the median over the
epochs after the first (warm-up). All three train on the same rows of the same simulated M4-like
cone, on the GPU when there is one; each is run ``--repeats`` times and the fastest counts. It prints the ratios a/b and a/c and peak RSS; `--dec` adds
DEC epochs of (a) (after as many autoencoder epochs).

`--predict N` times `grasp-dl predict` on N simulated rows (a Parquet file written chunk by chunk):
wall time and peak memory of the command.

    python scripts/benchmark_speed.py                          # N = 1e5, 1e6; batch 256, 1024, 4096
    python scripts/benchmark_speed.py --sizes 100000 --batch-sizes 256 --epochs 4 --dec
    python scripts/benchmark_speed.py --sizes --predict 10000000
    python scripts/benchmark_speed.py --precision bf16-mixed   # on a GPU
    python scripts/benchmark_speed.py --compile --sizes 100000 --batch-sizes 256

Run it alone on the machine: it is a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

METHODS = ("lightning", "bare", "dataloader")
#: Rows simulated per piece when writing the --predict catalogue.
PIECE = 1_000_000


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class EpochTimes(L.Callback):
    """Training time of every epoch: first training batch start to last training batch end.

    Named by ``_target_`` in the composed config, so it is instantiated like every product callback;
    the times are kept per module class (the autoencoder and DEC phases) at class level.
    """

    times: dict[str, list[float]] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            EpochTimes.times.setdefault(type(pl_module).__name__, []).append(time.perf_counter() - self.start)


def _config(n: int, batch_size: int, epochs: int, dec: bool, precision: str, compile_: bool, out: str):
    """conf/train.yaml as `grasp-dl train` composes it, sized for this measurement."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from grasp_dl.config import conf_dir

    overrides = [
        f"data.simulate.n_stars={n}",
        f"data.batch_size={batch_size}",
        f"trainer.max_epochs={epochs}",
        f"trainer.precision={precision}",
        f"compile={str(compile_).lower()}",
        "model=dec" if dec else "model=autoencoder",
    ]
    if dec:
        overrides.append(f"model.pretrain_epochs={epochs}")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = out
        cfg.callbacks.epoch_times = {"_target_": f"{__name__}.EpochTimes"}
    return cfg


def _steady_rate(n_rows: int, times: list[float]) -> float:
    """Stars per second of the median epoch after the first (warm-up)."""
    steady = times[1:] or times
    return n_rows / statistics.median(steady)


def run_lightning(n: int, batch_size: int, epochs: int, dec: bool, precision: str, compile_: bool) -> dict:
    """(a) The product path: pipeline.train on the composed config, default callbacks and logger."""
    from grasp_dl import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(n, batch_size, epochs, dec, precision, compile_, tmp)
        result = pipeline.train(cfg)
        n_train = len(result.datamodule.train_index)
    rates = {"autoencoder": _steady_rate(n_train, EpochTimes.times["AutoencoderModule"])}
    if dec:
        rates["dec"] = _steady_rate(n_train, EpochTimes.times["DECModule"])
    return rates


def _training_rows(n: int, batch_size: int):
    """The standardised training rows (a) trains on, from the same composed config."""
    from grasp_dl import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        dm = pipeline.build_datamodule(_config(n, batch_size, 1, False, "32-true", False, tmp))
    return dm.data[dm.train_index]


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _plain_loop(n_rows: int, n_features: int, epochs: int, batches, precision: str) -> dict:
    """Train the default autoencoder with Adam over ``batches()`` (an iterable per epoch); time epochs."""
    import torch
    import torch.nn.functional as F

    from grasp_dl.models.networks import StellarAutoencoder

    device = _device()
    net = StellarAutoencoder(n_features).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in batches():
            batch = batch.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.mse_loss(net(batch)[0], batch)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"autoencoder": _steady_rate(n_rows, times)}


def run_bare(n: int, batch_size: int, epochs: int, precision: str) -> dict:
    """(b) The floor: the same network and optimiser over pre-batched tensors on the device, nothing else."""
    import torch

    x = _training_rows(n, batch_size).to(_device())
    return _plain_loop(
        len(x), x.shape[1], epochs, lambda: x[torch.randperm(len(x), device=x.device)].split(batch_size), precision
    )


def run_dataloader(n: int, batch_size: int, epochs: int, precision: str) -> dict:
    """(c) The seed's way: a per-row Dataset and DataLoader with the default collate, copied per batch."""
    from torch.utils.data import DataLoader, Dataset

    class Rows(Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    x = _training_rows(n, batch_size)
    loader = DataLoader(Rows(x), batch_size=batch_size, shuffle=True, pin_memory=_device().type == "cuda")
    return _plain_loop(len(x), x.shape[1], epochs, lambda: loader, precision)


def child(method: str, n: int, batch_size: int, epochs: int, dec: bool, precision: str, compile_: bool) -> None:
    """Run one measurement and print it as JSON (called in a subprocess)."""
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    runner = {
        "lightning": lambda: run_lightning(n, batch_size, epochs, dec, precision, compile_),
        "bare": lambda: run_bare(n, batch_size, epochs, precision),
        "dataloader": lambda: run_dataloader(n, batch_size, epochs, precision),
    }[method]
    rates = runner()
    print(json.dumps({"rates": rates, "peak_rss_mib": _peak_rss_mib()}))


def measure(method: str, n: int, batch_size: int, args: argparse.Namespace, dec: bool) -> dict:
    """The best of ``args.repeats`` measurements, each in a fresh Python process.

    Another process on the machine can only slow a run down, so the fastest repeat is the
    least disturbed one.
    """
    cmd = [sys.executable, __file__, "--child", method, str(n), str(batch_size), str(args.epochs), str(int(dec)),
           args.precision, str(int(args.compile))]
    runs = []
    for _ in range(args.repeats):
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            raise RuntimeError(f"{method} N={n} batch={batch_size} failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rates = {phase: max(run["rates"][phase] for run in runs) for phase in runs[0]["rates"]}
    return {"rates": rates, "peak_rss_mib": max(run["peak_rss_mib"] for run in runs)}


def write_big_catalogue(n: int, path: Path) -> None:
    """n simulated M4-like rows written to Parquet a million at a time (never all in memory)."""
    from grasp_dl.data.catalog import CatalogChunkWriter
    from grasp_dl.data.simulate import simulate_field

    with CatalogChunkWriter(path) as writer:
        for i in range(0, n, PIECE):
            piece = simulate_field("m4", n_stars=min(PIECE, n - i), seed=i // PIECE)
            piece["source_id"] = piece["source_id"] + i  # unique over the pieces
            writer.write(piece)


def predict_benchmark(n: int) -> None:
    """Time `grasp-dl predict` on n simulated rows with a small trained model; print wall time and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        train = [sys.executable, "-m", "grasp_dl.cli", "train", "data.simulate.n_stars=20000", "trainer.max_epochs=2",
                 "model.pretrain_epochs=2", "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"]
        subprocess.run(train, check=True, capture_output=True)
        catalogue = tmp / "big.parquet"
        start = time.perf_counter()
        write_big_catalogue(n, catalogue)
        print(f"wrote {n:,} rows in {time.perf_counter() - start:.0f} s ({catalogue.stat().st_size / 2**20:.0f} MiB)")
        output = tmp / "out.parquet"
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "grasp_dl.cli", "predict",
               f"ckpt_path={run}/checkpoints/last.ckpt", f"data.path={catalogue}", f"output={output}",
               f"hydra.run.dir={tmp}/p"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        rss = next(line for line in proc.stderr.splitlines() if "Maximum resident" in line).split(":")[-1]
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(output).metadata.num_rows
        print("| command | rows in / out | wall time | stars/s | peak RSS |\n|---|---|---|---|---|")
        print(f"| grasp-dl predict | {n:,} / {rows:,} | {wall:.1f} s | {n / wall:,.0f} | {int(rss) / 2**20:.2f} GiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest counts")
    parser.add_argument("--dec", action="store_true", help="also time DEC epochs on the Lightning path")
    parser.add_argument("--precision", default="32-true", help="trainer.precision, e.g. bf16-mixed on a GPU")
    parser.add_argument("--compile", action="store_true", help="(a) with compile=true (torch.compile)")
    parser.add_argument("--predict", type=int, default=0, help="time grasp-dl predict on this many rows")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, n, batch, epochs, dec, precision, compile_ = args.child
        child(method, int(n), int(batch), int(epochs), bool(int(dec)), precision, bool(int(compile_)))
        return
    import torch

    device = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, precision {args.precision}"
          f"{', compile' if args.compile else ''}")
    if args.sizes:
        print("| N | batch | (a) lightning stars/s | (b) bare stars/s | (c) dataloader stars/s | a/b | a/c "
              "| peak RSS a / b / c (MiB) |" + (" (a) DEC stars/s |" if args.dec else ""))
        print("|---|---|---|---|---|---|---|---|" + ("---|" if args.dec else ""))
    for n in args.sizes:
        for batch in args.batch_sizes:
            res = {m: measure(m, n, batch, args, args.dec and m == "lightning") for m in METHODS}
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

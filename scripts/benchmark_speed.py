"""Training throughput of grasp-dl against its floor and against the seed's per-row loader; predict at scale.

For each catalogue size N and batch size it trains the default autoencoder (5-64-32-16-8, batch
norm, dropout, the configured Adam) three ways:

  (a) lightning  the product path as a user runs it: conf/train.yaml composed by Hydra with
                 model=autoencoder (and model=dec for --dec), run by grasp_dl.jobs.train.train with
                 the default callbacks (progress bar, checkpoints, early stopping, TensorBoard
                 figures) and the TensorBoard logger
  (b) bare       a plain PyTorch loop over pre-batched tensors on the device (no framework, no
                 loader): the floor
  (c) dataloader a per-row torch Dataset + DataLoader(shuffle=True) loop with a host-to-device
                 copy per batch, as in the seed

Paired timing. This machine's speed drifts by 20-30% within seconds (a shared host), far more
than the differences measured, so the three are interleaved in one process: after each training
step of (a) (a block of ``data.batches_per_step`` mini-batches) a callback runs as many steps of
(b) and of (c), each on its own network and optimiser, alternating which goes first. (a)'s time is
everything from the end of those steps to the end of its next step (Lightning's loop, hooks,
callbacks, logging, its loader); (b)'s and (c)'s are their own steps, their per-epoch shuffles
included. Validation and end-of-epoch work are left out, as is the first epoch (warm-up). So the
three see the same machine state and the ratios a/b and a/c are steady from run to run; each
configuration is still run ``--repeats`` times, and the repeat with the lowest a/b is reported.

Peak resident memory comes from separate runs of each method alone (one process each, two
epochs), since a shared process has one peak.

`--precision bf16-mixed` trains all three in that precision; on a GPU the timing synchronises
the device at each step boundary. `--dec` adds the DEC phase of (a) (after as many autoencoder
epochs), as stars per second of its training epochs.

`--predict N` times `grasp-dl predict` on N simulated rows (a Parquet file written chunk by chunk)
with a small model trained first (`--predict-model`, default dec): wall time, CPU time and peak
memory of the command, and the load average (other processes on a shared machine slow it).

    python scripts/benchmark_speed.py                          # N = 1e5, 1e6; batch 256, 1024, 4096
    python scripts/benchmark_speed.py --sizes 100000 --batch-sizes 256 --epochs 4 --dec
    python scripts/benchmark_speed.py --sizes --predict 10000000
    python scripts/benchmark_speed.py --sizes --predict 10000000 --predict-model xd   # the default model
    python scripts/benchmark_speed.py --precision bf16-mixed   # on a GPU
    python scripts/benchmark_speed.py --compile --sizes 100000 --batch-sizes 256
    python scripts/benchmark_speed.py --sizes 100000 --batch-sizes 256 --set data.batches_per_step=1

Run it alone on the machine: it is a timing.
"""

from __future__ import annotations

import argparse
import contextlib
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


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


class FloorLoop:
    """(b) or (c): the default autoencoder and the module's optimiser, trained one mini-batch per call."""

    def __init__(self, x, batch_size: int, optimizer_config: dict, precision: str, per_row_loader: bool) -> None:
        import hydra.utils
        import torch

        from grasp_dl.models.networks import StellarAutoencoder

        self.device = x.device
        self.x = x if not per_row_loader else x.cpu()
        self.batch_size = batch_size
        self.per_row_loader = per_row_loader
        self.net = StellarAutoencoder(x.shape[1]).to(self.device)
        self.optimizer = hydra.utils.instantiate({**optimizer_config, "_partial_": True})(self.net.parameters())
        self.dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        self.batches = iter(())
        self.seconds = 0.0
        self.stars = 0

    def _epoch(self):
        """One epoch of batches: a shuffled gather and slices (b), or a per-row DataLoader (c)."""
        import torch
        from torch.utils.data import DataLoader, Dataset

        if not self.per_row_loader:
            return iter(self.x[torch.randperm(len(self.x), device=self.device)].split(self.batch_size))

        class Rows(Dataset):
            def __init__(self, x):
                self.x = x

            def __len__(self):
                return len(self.x)

            def __getitem__(self, i):
                return self.x[i]

        pin = self.device.type == "cuda"
        return iter(DataLoader(Rows(self.x), batch_size=self.batch_size, shuffle=True, pin_memory=pin))

    def steps(self, n: int) -> None:
        """Train ``n`` mini-batches, adding their time and stars to the totals."""
        import torch
        import torch.nn.functional as F

        start = time.perf_counter()
        for _ in range(n):
            batch = next(self.batches, None)
            if batch is None:
                self.batches = self._epoch()
                batch = next(self.batches)
            batch = batch.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                loss = F.mse_loss(self.net(batch)[0], batch)
            loss.backward()
            self.optimizer.step()
            self.stars += len(batch)
        _sync(self.device)
        self.seconds += time.perf_counter() - start


class PairedFloors(L.Callback):
    """Interleave (b) and (c) with the autoencoder phase of (a), step for step (see the module doc).

    Instantiated by ``_target_`` in the composed config; totals are kept at class level.
    """

    totals: dict[str, list[float]] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from grasp_dl.models.autoencoder import AutoencoderModule

        self.active = isinstance(pl_module, AutoencoderModule)
        if not self.active:
            return
        dm = trainer.datamodule
        x = dm.split_tensor("train", pl_module.device)
        precision = str(trainer.precision)
        optimizer = pl_module.hparams.optimizer
        self.floors = {
            "bare": FloorLoop(x, dm.batch_size, optimizer, precision, per_row_loader=False),
            "dataloader": FloorLoop(x, dm.batch_size, optimizer, precision, per_row_loader=True),
        }
        PairedFloors.totals = {m: [0.0, 0] for m in METHODS}
        self.mark = None
        self.flip = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active:
            _sync(pl_module.device)
            self.mark = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self.active or trainer.current_epoch == 0:
            return
        from grasp_dl.data.loader import batch_stars, is_block

        _sync(pl_module.device)
        total = PairedFloors.totals["lightning"]
        total[0] += time.perf_counter() - self.mark
        total[1] += batch_stars(batch)
        n_steps = len(batch) if is_block(batch) else 1
        order = ("dataloader", "bare") if self.flip else ("bare", "dataloader")
        self.flip = not self.flip
        for method in order:
            self.floors[method].steps(n_steps)
        for method in ("bare", "dataloader"):
            PairedFloors.totals[method] = [self.floors[method].seconds, self.floors[method].stars]
        self.mark = time.perf_counter()


def _config(
    n: int, batch_size: int, epochs: int, dec: bool, precision: str, compile_: bool, out: str, paired: bool = False
):
    extra = os.environ.get("BENCHMARK_OVERRIDES", "").split()
    """conf/train.yaml as `grasp-dl train` composes it, sized for this measurement."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from grasp_dl.runtime.config import conf_dir

    overrides = [
        f"data.simulate.n_stars={n}",
        f"data.batch_size={batch_size}",
        f"trainer.max_epochs={epochs}",
        f"trainer.precision={precision}",
        f"compile={str(compile_).lower()}",
        "model=dec" if dec else "model=autoencoder",
        *extra,
    ]
    if dec:
        overrides.append(f"model.pretrain_epochs={epochs}")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = out
        cfg.callbacks.epoch_times = {"_target_": f"{__name__}.EpochTimes"}
        if paired:
            cfg.callbacks.paired_floors = {"_target_": f"{__name__}.PairedFloors"}
    return cfg


def _steady_rate(n_rows: int, times: list[float]) -> float:
    """Stars per second of the median epoch after the first (warm-up)."""
    steady = times[1:] or times
    return n_rows / statistics.median(steady)


def run_paired(n: int, batch_size: int, epochs: int, dec: bool, precision: str, compile_: bool) -> dict:
    """(a), (b) and (c) interleaved step for step in one process; stars per second of each."""
    from grasp_dl.jobs import train as pipeline

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(n, batch_size, epochs, dec, precision, compile_, tmp, paired=True)
        result = pipeline.train(cfg)
        n_train = len(result.datamodule.train_index)
    rates = {method: stars / seconds for method, (seconds, stars) in PairedFloors.totals.items()}
    if dec:
        rates["dec"] = _steady_rate(n_train, EpochTimes.times["DECModule"])
    return rates


def run_alone(method: str, n: int, batch_size: int, epochs: int, precision: str) -> None:
    """One method alone, for its peak resident memory: (a) the product path, (b) or (c) a floor loop."""
    from grasp_dl.jobs import train as pipeline

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(n, batch_size, epochs, False, precision, False, tmp)
        if method == "lightning":
            pipeline.train(cfg)
            return
        dm = pipeline.build_datamodule(cfg)
        x = dm.split_tensor("train", _device())
        floor = FloorLoop(x, batch_size, dict(cfg.model.optimizer), precision, per_row_loader=method == "dataloader")
        floor.steps(epochs * -(-len(x) // batch_size))


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def child(kind: str, n: int, batch_size: int, epochs: int, dec: bool, precision: str, compile_: bool) -> None:
    """Run one measurement and print it as JSON (called in a subprocess)."""
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):
        if kind == "paired":
            out = {"rates": run_paired(n, batch_size, epochs, dec, precision, compile_)}
        else:
            run_alone(kind, n, batch_size, epochs, precision)
            out = {}
    print(json.dumps({**out, "peak_rss_mib": _peak_rss_mib()}))


def _run_child(args: argparse.Namespace, kind: str, n: int, batch_size: int, epochs: int, dec: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        str(n),
        str(batch_size),
        str(epochs),
        str(int(dec)),
        args.precision,
        str(int(args.compile)),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} N={n} batch={batch_size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(n: int, batch_size: int, args: argparse.Namespace) -> dict:
    """Paired rates (the repeat with the lowest a/b: the conservative one) and each method's peak RSS alone."""
    runs = [_run_child(args, "paired", n, batch_size, args.epochs, args.dec)["rates"] for _ in range(args.repeats)]
    worst = min(runs, key=lambda r: r["lightning"] / r["bare"])
    rss = {
        m: _run_child(args, m, n, batch_size, 2, False)["peak_rss_mib"] if args.rss else float("nan") for m in METHODS
    }
    return {"rates": worst, "all_ab": [r["lightning"] / r["bare"] for r in runs], "rss": rss}


def write_big_catalogue(n: int, path: Path) -> None:
    """n simulated M4-like rows written to Parquet a million at a time (never all in memory)."""
    from grasp_dl.data.catalog import CatalogChunkWriter
    from grasp_dl.data.simulate import simulate_field

    with CatalogChunkWriter(path) as writer:
        for i in range(0, n, PIECE):
            piece = simulate_field("m4", n_stars=min(PIECE, n - i), seed=i // PIECE)
            piece["source_id"] = piece["source_id"] + i  # unique over the pieces
            writer.write(piece)


def predict_benchmark(n: int, model: str = "dec") -> None:
    """Time `grasp-dl predict` on n simulated rows with a small trained ``model``; print wall time and peak RSS.

    The load average of the machine is printed with it (a shared machine's timings depend on it),
    and the CPU time (user + system) of the command beside the wall time.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        epochs = ["trainer.max_epochs=2"] + (["model.pretrain_epochs=2"] if model != "xd" else [])
        train = [
            sys.executable,
            "-m",
            "grasp_dl.cli",
            "train",
            f"model={model}",
            "data.simulate.n_stars=20000",
            *epochs,
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run}",
        ]
        subprocess.run(train, check=True, capture_output=True)
        catalogue = tmp / "big.parquet"
        start = time.perf_counter()
        write_big_catalogue(n, catalogue)
        print(f"wrote {n:,} rows in {time.perf_counter() - start:.0f} s ({catalogue.stat().st_size / 2**20:.0f} MiB)")
        output = tmp / "out.parquet"
        cmd = [
            "/usr/bin/time",
            "-v",
            sys.executable,
            "-m",
            "grasp_dl.cli",
            "predict",
            f"ckpt_path={run}/checkpoints/last.ckpt",
            f"data.path={catalogue}",
            f"output={output}",
            f"hydra.run.dir={tmp}/p",
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        timing = {
            key.strip(): value.strip() for key, _, value in (line.rpartition(":") for line in proc.stderr.splitlines())
        }
        rss = int(timing["Maximum resident set size (kbytes)"])
        cpu = float(timing["User time (seconds)"]) + float(timing["System time (seconds)"])
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(output).metadata.num_rows
        print(f"model={model}, load average {os.getloadavg()[0]:.1f} at the end")
        print("| command | rows in / out | wall time | CPU time | stars/s | peak RSS |\n|---|---|---|---|---|---|")
        print(
            f"| grasp-dl predict | {n:,} / {rows:,} | {wall:.1f} s | {cpu:.1f} s | {n / wall:,.0f} | "
            f"{rss / 2**20:.2f} GiB |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    parser.add_argument(
        "--repeats", type=int, default=2, help="paired runs per configuration; the lowest a/b is reported"
    )
    parser.add_argument("--dec", action="store_true", help="also time DEC epochs on the Lightning path")
    parser.add_argument("--precision", default="32-true", help="trainer.precision, e.g. bf16-mixed on a GPU")
    parser.add_argument("--compile", action="store_true", help="(a) with compile=true (torch.compile)")
    parser.add_argument("--no-rss", dest="rss", action="store_false", help="skip the peak-memory runs")
    parser.add_argument("--predict", type=int, default=0, help="time grasp-dl predict on this many rows")
    parser.add_argument(
        "--predict-model", default="dec", help="the model --predict trains and scores with (dec, vade, xd)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further Hydra override of the product path, e.g. data.batches_per_step=1",
    )
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n, batch, epochs, dec, precision, compile_ = args.child
        child(kind, int(n), int(batch), int(epochs), bool(int(dec)), precision, bool(int(compile_)))
        return
    os.environ["BENCHMARK_OVERRIDES"] = " ".join(args.overrides)
    import torch

    device = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, precision {args.precision}"
        f"{', compile' if args.compile else ''}; paired timing, lowest a/b of {args.repeats} runs"
        f"{'; ' + ' '.join(args.overrides) if args.overrides else ''}"
    )
    if args.sizes:
        print(
            "| N | batch | (a) lightning stars/s | (b) bare stars/s | (c) dataloader stars/s | a/b | a/c "
            "| a/b of each repeat | peak RSS a / b / c (MiB) |" + (" (a) DEC stars/s |" if args.dec else "")
        )
        print("|---|---|---|---|---|---|---|---|---|" + ("---|" if args.dec else ""))
    for n in args.sizes:
        for batch in args.batch_sizes:
            res = measure(n, batch, args)
            a, b, c = (res["rates"][m] for m in METHODS)
            rss = " / ".join(f"{res['rss'][m]:.0f}" for m in METHODS)
            each = ", ".join(f"{r:.2f}" for r in res["all_ab"])
            row = f"| {n:,} | {batch} | {a:,.0f} | {b:,.0f} | {c:,.0f} | {a / b:.2f} | {a / c:.2f} | {each} | {rss} |"
            if args.dec:
                row += f" {res['rates'].get('dec', float('nan')):,.0f} |"
            print(row, flush=True)
    if args.predict:
        predict_benchmark(args.predict, args.predict_model)


if __name__ == "__main__":
    main()

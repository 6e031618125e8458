"""VaDE's membership uncertainty against G magnitude for the true members of a simulated field.

Gaia's astrometric errors grow steeply with magnitude (about 0.02 mas at G=15, 0.5 at G=20), so
a faint member scatters out of the cluster's tight proper-motion clump towards the field. The
model sees only the features (no error columns), so its uncertainty has to come from where a
star lands: this script shows that it does. It trains an autoencoder and VaDE (product
defaults, ``conf/model/vade.yaml``) on one simulated cone, scores it with ``predict_catalog``
(as ``grasp-dl predict`` does) and prints, per G-magnitude bin of the true cluster members:
the median proper-motion error, the mean and 90th percentile of ``member_prob_std`` (spread
over draws z ~ q(z|x)), the mean and 90th percentile of the entropy, the mean member_prob and
the fraction recovered (member_prob > 0.5).

    python scripts/vade_uncertainty_vs_magnitude.py                     # m4, 20 + 20 epochs
    python scripts/vade_uncertainty_vs_magnitude.py --field ngc6397 --n-stars 20000
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence

import lightning as L
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.simulate import SIMULATED_FIELDS, load_simulation_config
from grasp_dl.inference.predict import predict_catalog
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.vade import VaDEModule
from grasp_dl.runtime.config import conf_dir

MAG_EDGES = (10.0, 15.0, 17.0, 18.0, 19.0, 20.0, 21.0)


def make_trainer(max_epochs: int) -> L.Trainer:
    """A quiet Trainer: no logger, checkpoints, progress bar or summary."""
    return L.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def train_vade(dm: StellarCatalogDataModule, ae_epochs: int, epochs: int, seed: int) -> VaDEModule:
    """Autoencoder then VaDE with the product's defaults (conf/model/vade.yaml)."""
    L.seed_everything(seed, verbose=False)
    autoencoder = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    make_trainer(ae_epochs).fit(autoencoder, datamodule=dm)
    config = OmegaConf.to_container(OmegaConf.load(conf_dir() / "model" / "vade.yaml"))
    options = {
        k: config[k]
        for k in (
            "n_clusters",
            "init",
            "n_init",
            "kl_warmup_epochs",
            "n_samples",
            "logvar_min",
            "logvar_max",
            "recon_logvar",
            "optimizer",
        )
    }
    module = VaDEModule.from_autoencoder(autoencoder, seed=seed, **options)
    make_trainer(epochs).fit(module, datamodule=dm)
    return module.eval()


def magnitude_table(table: pd.DataFrame, out: pd.DataFrame) -> pd.DataFrame:
    """Uncertainty statistics of the scored true members per G-magnitude bin."""
    members = (table["truth"] == "cluster").to_numpy() & (out["label"] >= 0).to_numpy()
    frame = pd.DataFrame(
        {
            "G": table["phot_g_mean_mag"].to_numpy()[members],
            "pm_error": np.hypot(table["pmra_error"], table["pmdec_error"]).to_numpy()[members],
            "std": out["member_prob_std"].to_numpy()[members],
            "entropy": out["entropy"].to_numpy()[members],
            "member_prob": out["member_prob"].to_numpy()[members],
        }
    )
    frame["bin"] = pd.cut(frame["G"], MAG_EDGES)
    grouped = frame.groupby("bin", observed=True)
    return pd.DataFrame(
        {
            "members": grouped.size(),
            "pm_error (mas/yr)": grouped["pm_error"].median(),
            "std mean": grouped["std"].mean(),
            "std p90": grouped["std"].quantile(0.9),
            "entropy mean": grouped["entropy"].mean(),
            "entropy p90": grouped["entropy"].quantile(0.9),
            "member_prob mean": grouped["member_prob"].mean(),
            "recovered": grouped["member_prob"].apply(lambda p: float((p > 0.5).mean())),
        }
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Train on one simulated field and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--field", default="m4", choices=SIMULATED_FIELDS)
    ap.add_argument("--n-stars", type=int, default=None, help="override the config's n_stars")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ae-epochs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    overrides = {"seed": args.seed} | ({"n_stars": args.n_stars} if args.n_stars else {})
    dm = StellarCatalogDataModule(simulate=load_simulation_config(args.field) | overrides, seed=args.seed)
    dm.setup()
    module = train_vade(dm, args.ae_epochs, args.epochs, args.seed)
    out, summary = predict_catalog(module, dm.table)
    result = magnitude_table(dm.table, out)
    print(
        f"{args.field}: {summary['n_scored']} stars scored, cluster = group {summary['cluster_group']}; "
        f"true members per G bin:\n"
    )
    print(result.to_markdown(floatfmt=".4f") if _has_tabulate() else result.to_string(float_format="%.4f"))


def _has_tabulate() -> bool:
    """Whether pandas can print markdown (needs the optional tabulate package)."""
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()

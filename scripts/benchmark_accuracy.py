"""Accuracy benchmark: deep clustering against classical baselines on the simulated fields.

What it measures
----------------
For each bundled simulated cone (``grasp_dl.data.simulate.SIMULATED_FIELDS``), the catalogue is
prepared exactly as the product prepares it (``StellarCatalogDataModule`` with the default
features: ra/dec -> xi/eta, pmra, pmdec, parallax; quality cuts; robust standardisation), and
every method clusters the same usable stars (``dm.data``):

* ``default`` -- what ``grasp-dl train`` trains with no model choice (``model=auto``: the
  error-deconvolved spatial mixture ``model=xd``, or ``model.fallback_model`` when the catalogue
  lacks error columns), through the product path: ``conf/train.yaml`` composed by Hydra,
  ``grasp_dl.jobs.train.train`` on the shared data module, predictions from
  ``grasp_dl.inference.predict.predict_catalog`` (what ``grasp-dl predict`` writes). Its group
  count is the model's own (xd: the BIC's); it also reports ``dPM`` (|summary mean PM - truth|,
  mas/yr) and the summary's ``cluster_found``.
* ``DEC (seed)`` -- the seed project's DEC: k-means initialisation in latent space, DEC's
  unit-scale Student-t kernel, target p ~ q^2 / f (balance 1). Reproduces the known failure.
* ``DEC``  -- our defaults: mixture initialisation on the features, Student-t mixture kernel,
  balance 0.
* ``IDEC`` -- our defaults with the reconstruction loss kept (gamma = 0.1).
* ``VaDE`` -- variational deep embedding (Jiang et al. 2017) with the settings and optimiser of
  ``conf/model/vade.yaml`` (mixture started from a full-covariance GMM on the features, KL
  warm-up, Adam lr 1e-3); its member probability is p(cluster | mean of q(z|x)).
* ``GMM-2``, ``GMM-3`` -- scikit-learn GaussianMixture (full covariance, n_init=3).
* ``HDBSCAN`` -- scikit-learn HDBSCAN (min_cluster_size=50); noise (-1) counts as non-member.

The four deep models start from one autoencoder pretrained per field (AutoencoderModule
defaults, ``--ae-epochs`` epochs, batch 256) and train ``--dec-epochs`` epochs with the
optimiser of ``conf/model/dec.yaml`` (the product's; Adam, lr 1e-4), VaDE with its own
(``conf/model/vade.yaml``).

How to read the table
---------------------
* ``F1``  -- member F1 of the group the method *names* as the cluster, with no truth used:
  the rule of :mod:`grasp_dl.membership.rules` (most concentrated on the sky, tightest in proper
  motion) picks the group, and a star is a member when its probability of that group is > 0.5
  (HDBSCAN: when its label is that group). This is what a user gets.
* ``F1*`` -- the oracle member F1: the best F1 of any group against the truth. It says whether
  the method *found* the cluster as one of its groups at all. ``F1* >> F1`` means the cluster
  was found but the wrong group was named (or the 0.5 threshold cut it); a low ``F1*`` means no
  group matches the cluster. F1* uses hard (argmax) groups and F1 the 0.5 threshold, so with
  three or more groups F1 can come out slightly above F1*.
* ``ARI`` -- adjusted Rand index of the hard labels against every true class (cluster, field,
  galaxy, tails). For HDBSCAN the noise stars form one extra group in the ARI.
* ``Brier``, ``ECE`` -- calibration of member_prob (the named group's probability) against
  truth == cluster: mean squared error and 15-bin expected calibration error (lower is better;
  HDBSCAN gives no probability).

Times are wall-clock seconds on this machine; the deep models' times exclude the shared
autoencoder pretraining, which has its own column.

Ablation of the hard-field ingredients (``--ablation``)
-----------------------------------------------------
Each ingredient of :mod:`grasp_dl.models.ingredients` switched on and off, for DEC and VaDE
from one shared autoencoder per field, and for the error-deconvolved mixture alone (``XD``,
:func:`grasp_dl.models.ingredients.xd_start_mixture`: model=xd's mixture with the ``model.xd``
switches as options, which is also what ``init=xd`` starts the deep models from). Rows: ``plain`` (init=gmm_features, nothing else), ``full`` (init=xd with its spatial
profile and error deconvolution, spatial_prior, noise_augmentation), ``full`` minus one
ingredient (errors: no deconvolution and no noise augmentation; spatial: no Plummer profile
and no radius-dependent weight; noise augmentation alone), ``full`` plus the photometric
term, ``full`` with ``n_clusters=auto`` (BIC), and ``full`` with ``log_radius`` as an extra
input feature, or with the errors (pmra_error, pmdec_error, parallax_error) as input features
(each with its own autoencoder). Per field: member F1 of the named group on the stars with
astrometry, and ``dPM`` = |recovered mean proper motion - simulated cluster.pm_mean| (mas/yr,
the Euclidean norm over pmra and pmdec; the recovered mean is ``cluster_summary``'s: weighted
by member_prob over the stars with member_prob > 0.5). ``F1 (no astrometry)`` scores the
2-parameter stars from their position with the trained module's position model.

Run
---
    python scripts/benchmark_accuracy.py                       # all fields, config sizes
    python scripts/benchmark_accuracy.py --fields m4 --n-stars 5000 --output /tmp/acc.json
    python scripts/benchmark_accuracy.py --ablation --ae-epochs 10 --dec-epochs 10

Takes several minutes per field on a 2-core CPU (mostly the three DEC trainings, VaDE and HDBSCAN).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from sklearn.cluster import HDBSCAN
from sklearn.mixture import GaussianMixture

from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.simulate import SIMULATED_FIELDS, load_simulation_config
from grasp_dl.membership.rules import MEMBER_THRESHOLD, choose_cluster_group
from grasp_dl.metrics import evaluate_clustering
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.dec import DECModule
from grasp_dl.models.vade import VaDEModule

METHODS = ("default", "DEC (seed)", "DEC", "IDEC", "VaDE", "GMM-2", "GMM-3", "HDBSCAN")
#: DECModule settings of each deep method (on top of n_clusters, seed and the optimiser).
DEEP_SETTINGS: dict[str, dict[str, Any]] = {
    "DEC (seed)": {
        "init": "kmeans",
        "kernel": "dec",
        "balance": 1.0,
        "variant": "dec",
        "anchor": {"weight": 0.0, "fallback": False},
    },  # the seed had no start anchor
    "DEC": {"init": "gmm_features", "kernel": "mixture", "balance": 0.0, "variant": "dec"},
    "IDEC": {"init": "gmm_features", "kernel": "mixture", "balance": 0.0, "variant": "idec", "gamma": 0.1},
}
#: The product's clustering-phase optimiser, as in conf/model/dec.yaml (read from there when present).
FALLBACK_DEC_OPTIMIZER: dict[str, Any] = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-4}
HDBSCAN_MIN_CLUSTER_SIZE = 50
HDBSCAN_MIN_SAMPLES: int | None = None  # None: sklearn's default (= min_cluster_size)
GMM_N_INIT = 3


@dataclass
class MethodResult:
    """Scores of one method on one field."""

    f1: float
    f1_oracle: float
    ari: float
    seconds: float
    cluster_group: int
    n_predicted_members: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FieldResult:
    """Everything measured on one field."""

    field: str
    n_rows: int
    n_usable: int
    n_true_members: int
    ae_seconds: float
    methods: dict[str, MethodResult]


# ----------------------------------------------------------------------------- setup


def quiet() -> None:
    """Silence Lightning's info logs and the usual warnings so the table stays readable."""
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_trainer(max_epochs: int) -> L.Trainer:
    """A bare CPU/auto Trainer: no progress bar, logger, checkpoints or model summary."""
    return L.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def product_dec_optimizer() -> dict[str, Any]:
    """The optimiser of conf/model/dec.yaml (the product's DEC phase), else the fallback copy."""
    path = Path(__file__).resolve().parents[1] / "conf" / "model" / "dec.yaml"
    try:
        from omegaconf import OmegaConf

        optimizer = OmegaConf.load(path).get("optimizer")
        if optimizer is not None:
            return dict(OmegaConf.to_container(optimizer, resolve=True))
    except Exception:  # noqa: BLE001 - a missing or odd file falls back to the copy
        pass
    return dict(FALLBACK_DEC_OPTIMIZER)


def product_vade_options() -> dict[str, Any]:
    """VaDEModule options of conf/model/vade.yaml (the product's VaDE phase, optimiser included)."""
    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[1] / "conf" / "model" / "vade.yaml"
    config = OmegaConf.to_container(OmegaConf.load(path))
    skip = {
        "defaults",
        "_target_",
        "n_clusters",
        "seed",
        "cluster_index",
        "cluster_group",
        "pretrain",
        "pretrain_epochs",
        "pretrained_ckpt",
        "n_clusters_range",
        "monitor",
    }
    return {k: v for k, v in config.items() if k not in skip}


def load_field(name: str, n_stars: int | None, seed: int) -> StellarCatalogDataModule:
    """The product's data module for one simulated field, set up (prepared and standardised)."""
    overrides: dict[str, Any] = {"seed": seed}
    if n_stars is not None:
        overrides["n_stars"] = n_stars
    dm = StellarCatalogDataModule(simulate=load_simulation_config(name) | overrides, seed=seed)
    dm.setup()
    return dm


def truth_of(dm: StellarCatalogDataModule) -> np.ndarray:
    """True class of every usable star (aligned with dm.data)."""
    return dm.table["truth"].to_numpy()[dm.prepared.mask].astype(str)


def physical(dm: StellarCatalogDataModule) -> np.ndarray:
    """Usable stars' features back in physical units (for the cluster-naming rule)."""
    return dm.scaler.inverse_transform(dm.data.numpy())


# ----------------------------------------------------------------------------- scoring


def score(
    truth: np.ndarray,
    labels: np.ndarray,
    member: np.ndarray,
    member_group: int,
    seconds: float,
    ari_labels: np.ndarray | None = None,
    member_prob: np.ndarray | None = None,
    **extra: Any,
) -> MethodResult:
    """F1 (named group), F1* (oracle) and ARI of one method's output."""
    membership = evaluate_clustering(truth, labels, predicted_member=member, member_prob=member_prob)
    partition = membership if ari_labels is None else evaluate_clustering(truth, ari_labels)
    if member_prob is not None:
        extra.update(brier=membership.get("brier"), ece=membership.get("ece"))
    return MethodResult(
        f1=float(membership["member_f1"]),
        f1_oracle=float(membership["member_f1_oracle"]),
        ari=float(partition["ari"]),
        seconds=seconds,
        cluster_group=int(member_group),
        n_predicted_members=int(membership["n_predicted_members"]),
        extra={
            "member_precision": float(membership["member_precision"]),
            "member_recall": float(membership["member_recall"]),
            "group_sizes": np.bincount(labels[labels >= 0]).tolist() if (labels >= 0).any() else [],
            **extra,
        },
    )


# ----------------------------------------------------------------------------- methods


def pretrain_autoencoder(dm: StellarCatalogDataModule, epochs: int, seed: int) -> tuple[AutoencoderModule, float]:
    """The shared autoencoder of the deep methods (product defaults) and its training time."""
    L.seed_everything(seed, verbose=False)
    start = time.perf_counter()
    ae = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    make_trainer(epochs).fit(ae, datamodule=dm)
    return ae, time.perf_counter() - start


def compose_default(name: str, seed: int, ae_epochs: int, epochs: int, out: str) -> Any:
    """conf/train.yaml composed as ``grasp-dl train data=<field>`` would (no model choice: the default).

    Made quiet and short: no logger or callbacks, outputs under ``out``; a fallback deep model
    trains ``ae_epochs`` autoencoder and ``epochs`` clustering epochs like the other deep methods.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from grasp_dl.runtime.config import conf_dir

    overrides = [f"data={name}", f"seed={seed}", f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false"]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = out
        cfg.logger = None
        cfg.callbacks = None
        cfg.model.pretrain_epochs = ae_epochs
    return cfg


def run_default(
    name: str, dm: StellarCatalogDataModule, truth: np.ndarray, seed: int, ae_epochs: int, epochs: int
) -> MethodResult:
    """Train the product's default setting on the field's data module and score what it predicts."""
    import tempfile

    from grasp_dl.inference.predict import predict_catalog
    from grasp_dl.jobs import train as pipeline

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = pipeline.train(compose_default(name, seed, ae_epochs, epochs, tmp), datamodule=dm)
        table, summary = predict_catalog(result.module, dm.table, center=list(dm.prepared.center))
    seconds = time.perf_counter() - start
    usable = table.iloc[dm.usable_rows()]
    prob_columns = [c for c in table.columns if c.startswith("prob_")]
    prob = np.nan_to_num(usable[prob_columns].to_numpy(float), nan=0.0)
    member_prob = np.nan_to_num(usable["member_prob"].to_numpy(float), nan=0.0)
    truth_pm = load_simulation_config(name)["cluster"]["pm_mean"]
    dpm = float(np.hypot(summary["mean_pmra"] - truth_pm[0], summary["mean_pmdec"] - truth_pm[1]))
    return score(
        truth,
        prob.argmax(axis=1),
        member_prob > MEMBER_THRESHOLD,
        int(summary.get("cluster_group", result.module.cluster_group)),
        seconds,
        member_prob=member_prob,
        setting=result.setting.removeprefix("setting: ").split(" (")[0].split(":")[0],
        n_groups=len(prob_columns),
        dpm=dpm,
        cluster_found=summary.get("cluster_found"),
        found_reason=summary.get("cluster_reason"),
    )


def run_deep(
    name: str,
    ae: AutoencoderModule,
    dm: StellarCatalogDataModule,
    truth: np.ndarray,
    n_clusters: int,
    epochs: int,
    seed: int,
    optimizer: dict[str, Any],
) -> MethodResult:
    """Train one DEC variant from the shared autoencoder and score the group it names."""
    L.seed_everything(seed, verbose=False)
    start = time.perf_counter()
    module = DECModule.from_autoencoder(
        ae, n_clusters=n_clusters, seed=seed, optimizer=optimizer, **DEEP_SETTINGS[name]
    )
    trainer = make_trainer(epochs)
    trainer.fit(module, datamodule=dm)
    q = module.predict_proba(dm.data)
    group = module.decide_cluster_group(dm.data, q)
    seconds = time.perf_counter() - start
    q = q.cpu().numpy()
    member_prob = q[:, module.cluster_group]
    return score(
        truth,
        q.argmax(axis=1),
        member_prob > MEMBER_THRESHOLD,
        group,
        seconds,
        member_prob=member_prob,
        epochs_run=int(trainer.current_epoch),
    )


def run_vade(
    ae: AutoencoderModule, dm: StellarCatalogDataModule, truth: np.ndarray, n_clusters: int, epochs: int, seed: int
) -> MethodResult:
    """Train VaDE from the shared autoencoder and score the group it names (plus its uncertainty)."""
    L.seed_everything(seed, verbose=False)
    start = time.perf_counter()
    module = VaDEModule.from_autoencoder(ae, n_clusters=n_clusters, seed=seed, **product_vade_options())
    trainer = make_trainer(epochs)
    trainer.fit(module, datamodule=dm)
    q = module.predict_proba(dm.data)
    group = module.decide_cluster_group(dm.data, q)
    seconds = time.perf_counter() - start
    member_prob = q.cpu().numpy()[:, group]
    member_std = module.predict_proba_samples(dm.data)[1][:, group].cpu().numpy()
    return score(
        truth,
        q.cpu().numpy().argmax(axis=1),
        member_prob > MEMBER_THRESHOLD,
        group,
        seconds,
        member_prob=member_prob,
        epochs_run=int(trainer.current_epoch),
        mean_member_prob_std=float(member_std.mean()),
    )


def run_gmm(dm: StellarCatalogDataModule, truth: np.ndarray, k: int, seed: int) -> MethodResult:
    """A full-covariance Gaussian mixture on the standardised features, named by the same rule."""
    start = time.perf_counter()
    x = dm.data.numpy().astype(np.float64)
    gmm = GaussianMixture(k, covariance_type="full", random_state=seed, n_init=GMM_N_INIT)
    prob = gmm.fit(x).predict_proba(x)
    group = choose_cluster_group(prob, physical(dm), dm.feature_names)
    seconds = time.perf_counter() - start
    member_prob = prob[:, group]
    return score(truth, prob.argmax(axis=1), member_prob > MEMBER_THRESHOLD, group, seconds, member_prob=member_prob)


def run_hdbscan(dm: StellarCatalogDataModule, truth: np.ndarray) -> MethodResult:
    """HDBSCAN on the standardised features; the rule names one of its groups, noise is a non-member."""
    start = time.perf_counter()
    x = dm.data.numpy().astype(np.float64)
    labels = HDBSCAN(min_cluster_size=HDBSCAN_MIN_CLUSTER_SIZE, min_samples=HDBSCAN_MIN_SAMPLES, copy=True).fit_predict(
        x
    )
    clustered = labels >= 0
    n_groups = int(labels.max()) + 1
    group = -1
    if n_groups > 0:
        # Noise belongs to no group: judge the groups on the clustered stars only. The rule's
        # "all stars" reference terms then shift every score alike, so the choice is the same.
        onehot = np.eye(n_groups)[labels[clustered]]
        group = choose_cluster_group(onehot, physical(dm)[clustered], dm.feature_names)
    seconds = time.perf_counter() - start
    # For the ARI the noise is one more group; for membership it stays unscored (-1 = non-member).
    ari_labels = np.where(clustered, labels, n_groups)
    return score(
        truth,
        labels,
        clustered & (labels == group),
        group,
        seconds,
        ari_labels=ari_labels,
        n_groups=n_groups,
        noise_fraction=float((~clustered).mean()),
    )


def benchmark_field(
    name: str,
    n_stars: int | None,
    seed: int,
    ae_epochs: int,
    dec_epochs: int,
    n_clusters: int,
    log: Callable[[str], None] = print,
) -> FieldResult:
    """Every method on one simulated field."""
    dm = load_field(name, n_stars, seed)
    truth = truth_of(dm)
    log(f"[{name}] {dm.prepared.n_usable} usable stars of {dm.prepared.n_rows}; pretraining the autoencoder")
    ae, ae_seconds = pretrain_autoencoder(dm, ae_epochs, seed)
    optimizer = product_dec_optimizer()
    results: dict[str, MethodResult] = {}
    results["default"] = run_default(name, dm, truth, seed, ae_epochs, dec_epochs)
    d = results["default"]
    log(
        f"[{name}] default ({d.extra['setting']}): F1 {d.f1:.3f} groups {d.extra['n_groups']} "
        f"dPM {d.extra['dpm']:.3f} cluster_found {d.extra['cluster_found']} ({d.seconds:.0f} s)"
    )
    for method in DEEP_SETTINGS:
        results[method] = run_deep(method, ae, dm, truth, n_clusters, dec_epochs, seed, optimizer)
        log(f"[{name}] {method}: F1 {results[method].f1:.3f} ({results[method].seconds:.0f} s)")
    results["VaDE"] = run_vade(ae, dm, truth, n_clusters, dec_epochs, seed)
    log(f"[{name}] VaDE: F1 {results['VaDE'].f1:.3f} ({results['VaDE'].seconds:.0f} s)")
    for k in (2, 3):
        results[f"GMM-{k}"] = run_gmm(dm, truth, k, seed)
    results["HDBSCAN"] = run_hdbscan(dm, truth)
    log(f"[{name}] HDBSCAN: F1 {results['HDBSCAN'].f1:.3f} ({results['HDBSCAN'].seconds:.0f} s)")
    return FieldResult(
        field=name,
        n_rows=int(dm.prepared.n_rows),
        n_usable=int(dm.prepared.n_usable),
        n_true_members=int((truth == "cluster").sum()),
        ae_seconds=ae_seconds,
        methods=results,
    )


# ----------------------------------------------------------------------------- output


def accuracy_table(results: Sequence[FieldResult]) -> str:
    """Markdown table: one row per field, F1 / F1* / ARI per method."""
    header = ["field", "n", "members"] + [f"{m} {s}" for m in METHODS for s in ("F1", "F1*", "ARI")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in results:
        cells = [r.field, str(r.n_usable), str(r.n_true_members)]
        for m in METHODS:
            s = r.methods[m]
            cells += [f"{s.f1:.3f}", f"{s.f1_oracle:.3f}", f"{s.ari:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_table(results: Sequence[FieldResult]) -> str:
    """Markdown: the default setting per field: what trained, its groups, dPM and cluster_found."""
    lines = [
        "| field | setting | groups | F1 | precision | recall | ARI | dPM (mas/yr) | cluster_found |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s = r.methods["default"]
        e = s.extra
        found = e.get("cluster_found")
        lines.append(
            f"| {r.field} | {e.get('setting') or '-'} | {e.get('n_groups')} | {s.f1:.3f} | "
            f"{e['member_precision']:.3f} | {e['member_recall']:.3f} | {s.ari:.3f} | {e['dpm']:.3f} | "
            f"{'-' if found is None else str(bool(found)).lower()} |"
        )
    return "\n".join(lines)


def calibration_table(results: Sequence[FieldResult]) -> str:
    """Markdown table: one row per field, Brier score and ECE of member_prob per method ('-': none)."""
    methods = [m for m in METHODS if any("brier" in r.methods[m].extra for r in results)]
    header = ["field"] + [f"{m} {s}" for m in methods for s in ("Brier", "ECE")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in results:
        cells = [r.field]
        for m in methods:
            extra = r.methods[m].extra
            cells += [f"{extra[k]:.4f}" if extra.get(k) is not None else "-" for k in ("brier", "ece")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_table(results: Sequence[FieldResult]) -> str:
    """Markdown table of wall-clock seconds per method (deep methods exclude the autoencoder)."""
    header = ["field", "AE pretrain", *METHODS]  # default: its whole product run
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in results:
        cells = [r.field, f"{r.ae_seconds:.1f}"] + [f"{r.methods[m].seconds:.1f}" for m in METHODS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(results: Sequence[FieldResult], args: argparse.Namespace, path: str) -> None:
    """All numbers (and the settings that produced them) as JSON."""
    payload = {
        "settings": {
            **vars(args),
            "dec_optimizer": product_dec_optimizer(),
            "vade_options": product_vade_options(),
            "hdbscan": {"min_cluster_size": HDBSCAN_MIN_CLUSTER_SIZE, "min_samples": HDBSCAN_MIN_SAMPLES},
            "gmm_n_init": GMM_N_INIT,
            "torch_threads": torch.get_num_threads(),
        },
        "fields": [asdict(r) for r in results],
    }
    Path(path).write_text(json.dumps(payload, indent=2, default=float))


# ----------------------------------------------------------------------------- ablation

#: Model settings of each ablation row (on top of n_clusters, seed and the product's optimiser).
FULL: dict[str, Any] = {"init": "xd", "spatial_prior": True, "noise_augmentation": True}
ABLATION: dict[str, dict[str, Any]] = {
    "plain": {"init": "gmm_features"},
    "full": FULL,
    "full - errors": {**FULL, "xd": {"use_errors": False}, "noise_augmentation": False},
    "full - spatial": {**FULL, "xd": {"spatial": False}, "spatial_prior": False},
    "full - noise augmentation": {**FULL, "noise_augmentation": False},
    "full + photometry": {**FULL, "xd": {"photometry": True}},
    "full, n_clusters=auto": {**FULL, "n_clusters": "auto"},
}
#: The error-deconvolved mixture alone, with its switches.
XD_ABLATION: dict[str, dict[str, Any]] = {
    "XD full": {},
    "XD - errors": {"use_errors": False},
    "XD - spatial": {"spatial": False},
    "XD + photometry": {"photometry": True},
}
#: Rows trained on extra input features (each with its own autoencoder): row name -> added features.
FEATURE_ROWS: dict[str, list[str]] = {
    "full + log_radius feature": ["log_radius"],
    "full + errors as inputs": ["pmra_error", "pmdec_error", "parallax_error"],
}


@dataclass
class AblationRow:
    """F1 and mean proper-motion error of one setting on one field."""

    f1: float
    dpm: float
    n_members: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _pm_error(dm: StellarCatalogDataModule, member_prob: np.ndarray, truth_pm: Sequence[float]) -> float:
    """|cluster_summary's mean proper motion - truth| over the usable stars (mas/yr)."""
    import pandas as pd

    from grasp_dl.membership.rules import cluster_summary

    catalog = dm.table.iloc[dm.usable_rows()].reset_index(drop=True)
    predictions = pd.DataFrame({"label": np.zeros(len(member_prob), int), "member_prob": member_prob})
    summary = cluster_summary(predictions, catalog, None, 0)
    return float(np.hypot(summary["mean_pmra"] - truth_pm[0], summary["mean_pmdec"] - truth_pm[1]))


def _f1(truth: np.ndarray, member: np.ndarray) -> float:
    tp = float((member & truth).sum())
    return 2.0 * tp / max(float(member.sum() + truth.sum()), 1.0)


def _no_astrometry_f1(dm: StellarCatalogDataModule, module: Any) -> float | None:
    """Member F1 of the position-only scores of the 2-parameter stars (None when none)."""
    from grasp_dl.inference.no_astrometry import no_astrometry_rows

    rows = no_astrometry_rows(dm.prepared.flags, dm.prepared.feature_names)
    if not rows.any():
        return None
    from grasp_dl.data.sky import gnomonic_project

    xi, eta = gnomonic_project(
        dm.table["ra"].to_numpy(float)[rows], dm.table["dec"].to_numpy(float)[rows], *dm.prepared.center
    )
    p = module.position_member_prob(np.hypot(xi, eta))
    truth = dm.table["truth"].to_numpy()[rows].astype(str) == "cluster"
    return _f1(truth, p > MEMBER_THRESHOLD)


def ablation_deep(
    kind: str,
    settings: dict[str, Any],
    ae: AutoencoderModule,
    dm: StellarCatalogDataModule,
    truth: np.ndarray,
    truth_pm: Sequence[float],
    n_clusters: int,
    epochs: int,
    seed: int,
) -> AblationRow:
    """Train DEC or VaDE with ``settings`` from the shared autoencoder; F1, dPM and no-astrometry F1."""
    from grasp_dl.models.model_selection import choose_n_clusters

    L.seed_everything(seed, verbose=False)
    start = time.perf_counter()
    settings = dict(settings)
    extra: dict[str, Any] = {}
    if settings.get("n_clusters") == "auto":
        settings["n_clusters"], settings["n_clusters_curve"] = choose_n_clusters(dm, {**settings, "seed": seed})
        extra["n_clusters_curve"] = settings["n_clusters_curve"]
    settings.setdefault("n_clusters", n_clusters)
    if kind == "DEC":
        module = DECModule.from_autoencoder(ae, seed=seed, optimizer=product_dec_optimizer(), **settings)
    else:
        module = VaDEModule.from_autoencoder(ae, seed=seed, **{**product_vade_options(), **settings})
    make_trainer(epochs).fit(module, datamodule=dm)
    q = module.predict_proba(dm.data)
    group = module.decide_cluster_group(dm.data, q)
    member_prob = q[:, group].cpu().numpy()
    extra["f1_no_astrometry"] = _no_astrometry_f1(dm, module)
    extra["n_clusters"] = int(module.hparams.n_clusters)
    return AblationRow(
        f1=_f1(truth, member_prob > MEMBER_THRESHOLD),
        dpm=_pm_error(dm, member_prob, truth_pm),
        n_members=int((member_prob > MEMBER_THRESHOLD).sum()),
        seconds=time.perf_counter() - start,
        extra=extra,
    )


def ablation_xd(
    options: dict[str, Any],
    dm: StellarCatalogDataModule,
    truth: np.ndarray,
    truth_pm: Sequence[float],
    n_clusters: int,
    seed: int,
) -> AblationRow:
    """The error-deconvolved spatial mixture alone, on the usable stars; component 0 is the cluster."""
    from grasp_dl.models.ingredients import xd_options, xd_start_mixture

    start = time.perf_counter()
    opts = xd_options(options)
    stars = dm.star_data("all", opts["photometry"])
    member_prob = xd_start_mixture(n_clusters, seed, opts).fit(stars).predict_proba(stars)[:, 0]
    return AblationRow(
        f1=_f1(truth, member_prob > MEMBER_THRESHOLD),
        dpm=_pm_error(dm, member_prob, truth_pm),
        n_members=int((member_prob > MEMBER_THRESHOLD).sum()),
        seconds=time.perf_counter() - start,
    )


def ablation_field(
    name: str,
    n_stars: int | None,
    seed: int,
    ae_epochs: int,
    dec_epochs: int,
    n_clusters: int,
    log: Callable[[str], None] = print,
    only: Sequence[str] | None = None,
) -> dict[str, AblationRow]:
    """Every ablation row on one field (or the rows named in ``only``)."""
    dm = load_field(name, n_stars, seed)
    truth = truth_of(dm) == "cluster"
    truth_pm = load_simulation_config(name)["cluster"]["pm_mean"]
    rows: dict[str, AblationRow] = {}

    def record(key: str, row: AblationRow) -> None:
        rows[key] = row
        log(f"[{name}] {key}: F1 {row.f1:.3f} dPM {row.dpm:.3f} ({row.seconds:.0f} s) {row.extra or ''}")

    wanted = lambda key: not only or key in only  # noqa: E731
    for key, options in XD_ABLATION.items():
        if wanted(key):
            record(key, ablation_xd(options, dm, truth, truth_pm, n_clusters, seed))
    deep = [(kind, key) for kind in ("VaDE", "DEC") for key in ABLATION if wanted(f"{kind} {key}")]
    if deep:
        ae, _ = pretrain_autoencoder(dm, ae_epochs, seed)
        for kind, key in deep:
            record(
                f"{kind} {key}",
                ablation_deep(kind, ABLATION[key], ae, dm, truth, truth_pm, n_clusters, dec_epochs, seed),
            )
    overrides: dict[str, Any] = {"seed": seed} | ({"n_stars": n_stars} if n_stars is not None else {})
    for row, extra_features in FEATURE_ROWS.items():
        kinds = [kind for kind in ("VaDE", "DEC") if wanted(f"{kind} {row}")]
        if not kinds:
            continue
        features = ["ra", "dec", "pmra", "pmdec", "parallax", *extra_features]
        dm_f = StellarCatalogDataModule(simulate=load_simulation_config(name) | overrides, seed=seed, features=features)
        dm_f.setup()
        ae_f, _ = pretrain_autoencoder(dm_f, ae_epochs, seed)
        for kind in kinds:
            record(
                f"{kind} {row}",
                ablation_deep(
                    kind, FULL, ae_f, dm_f, truth_of(dm_f) == "cluster", truth_pm, n_clusters, dec_epochs, seed
                ),
            )
    return rows


def ablation_table(results: dict[str, dict[str, AblationRow]]) -> str:
    """Markdown: one row per setting, F1 / dPM per field (and the no-astrometry F1 where measured)."""
    fields = list(results)
    keys = list(next(iter(results.values())))
    header = ["setting"] + [f"{f} {s}" for f in fields for s in ("F1", "dPM")] + ["F1 no-astrometry (per field)", "k"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for key in keys:
        cells = [key]
        for f in fields:
            row = results[f][key]
            cells += [f"{row.f1:.3f}", f"{row.dpm:.3f}"]
        no_astro = [results[f][key].extra.get("f1_no_astrometry") for f in fields]
        cells.append(" / ".join("-" if v is None else f"{v:.2f}" for v in no_astro))
        ks = [results[f][key].extra.get("n_clusters") for f in fields]
        cells.append(" / ".join("-" if v is None else str(v) for v in ks))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_ablation(args: argparse.Namespace) -> None:
    """The --ablation mode: every ingredient on and off, per field; prints the table."""
    start = time.perf_counter()
    results = {
        name: ablation_field(
            name, args.n_stars, args.seed, args.ae_epochs, args.dec_epochs, args.n_clusters, only=args.rows
        )
        for name in args.fields
    }
    print()
    print("Member F1 of the named group and dPM = |recovered mean PM - truth| (mas/yr), per field:\n")
    print(ablation_table(results))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.output:
        payload = {
            "settings": vars(args),
            "ablation": {f: {k: asdict(r) for k, r in rows.items()} for f, rows in results.items()},
        }
        Path(args.output).write_text(json.dumps(payload, indent=2, default=float))
        print(f"results written to {args.output}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", nargs="+", default=list(SIMULATED_FIELDS), choices=SIMULATED_FIELDS)
    ap.add_argument("--n-stars", type=int, default=None, help="override each config's n_stars")
    ap.add_argument("--seed", type=int, default=0, help="simulation, data split and model seed")
    ap.add_argument("--ae-epochs", type=int, default=20)
    ap.add_argument("--dec-epochs", type=int, default=20)
    ap.add_argument("--n-clusters", type=int, default=3, help="groups of the deep models")
    ap.add_argument("--output", default=None, help="write the results as JSON here")
    ap.add_argument("--ablation", action="store_true", help="switch each hard-field ingredient on and off instead")
    ap.add_argument("--rows", nargs="+", default=None, help="with --ablation: only these rows, e.g. 'VaDE full'")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print the tables."""
    args = parse_args(argv)
    quiet()
    if args.ablation:
        run_ablation(args)
        return
    start = time.perf_counter()
    results = [
        benchmark_field(name, args.n_stars, args.seed, args.ae_epochs, args.dec_epochs, args.n_clusters)
        for name in args.fields
    ]
    print()
    print("Member F1 of the named group (F1), oracle F1 of the best group (F1*), ARI:\n")
    print(accuracy_table(results))
    print("\nThe default setting (grasp-dl train with no model choice), per field:\n")
    print(default_table(results))
    print("\nCalibration of member_prob: Brier score and expected calibration error (lower is better):\n")
    print(calibration_table(results))
    print("\nWall-clock seconds (deep methods: clustering phase only; AE pretrain shared):\n")
    print(time_table(results))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.output:
        write_json(results, args, args.output)
        print(f"results written to {args.output}")


if __name__ == "__main__":
    main()

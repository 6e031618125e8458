"""Score a catalogue with a trained clustering checkpoint: one output row per input row, in order."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from grasp_dl.data.astrometry import (
    CMD_COLUMNS,
    CORRELATION_COLUMN,
    ERROR_COLUMNS,
    PHOTOMETRIC_ERROR_COLUMN_NAMES,
    StarData,
    astrometry_columns,
    star_data,
)
from grasp_dl.data.catalog import CatalogChunkWriter, iter_catalog, read_catalog, require_columns
from grasp_dl.data.prepare import PreparedCatalog, estimate_center, prepare_stellar_data
from grasp_dl.data.scaling import FeatureScaler
from grasp_dl.data.sky import angular_separation
from grasp_dl.data.training_catalog import CatalogNeeds
from grasp_dl.data.validation import FLAG_DUPLICATE_ID, flag_duplicate_ids, flag_nonfinite_probabilities
from grasp_dl.inference.no_astrometry import score_without_astrometry
from grasp_dl.inference.outputs import prediction_output, summary_json
from grasp_dl.inference.streaming import ReadAhead, WriteBehind, single_scoring_thread
from grasp_dl.membership.guards import (
    StarSample,
    check_table,
    finish_summary,
    zero_member_prob,
    zero_member_prob_file,
)
from grasp_dl.membership.rules import SummaryAccumulator, entropy
from grasp_dl.membership.summary import ClusterSummary
from grasp_dl.models.base import ClusteringModule, checkpoint_class
from grasp_dl.models.vade import VaDEModule
from grasp_dl.runtime.capabilities import (
    ComparesWithNull,
    FitsClusterAstrometry,
    PoolsWithStart,
    SamplesMembership,
    ScoresStarsWithErrors,
    SpreadsMembershipOfStars,
)
from grasp_dl.runtime.checkpoints import CLASS_KEY, checkpoint_kind, load_module, read_checkpoint
from grasp_dl.runtime.devices import inference_device
from grasp_dl.runtime.errors import CatalogError, CheckpointError, ConfigError
from grasp_dl.runtime.io_policy import RunLock, StagedOutputs, refuse_overwriting_inputs
from grasp_dl.runtime.options import check_center, check_predict_options
from grasp_dl.runtime.run_dir import figure_path, summary_path

log = logging.getLogger(__name__)

#: Stars scored per forward pass; bounds memory on large catalogues.
DEFAULT_CHUNK_SIZE = 262_144
#: A catalogue whose own centre is further than this from the model's is probably another field.
FAR_FROM_CENTER_DEG = 1.0


def load_clustering_module(ckpt_path: str | Path) -> ClusteringModule:
    """Load a clustering checkpoint (DEC, IDEC, VaDE, XD, ... written by ``grasp-dl train``) on the CPU, in eval mode.

    The file is read once with ``weights_only=True`` (:mod:`grasp_dl.runtime.checkpoints`); every way it can
    fail is one line.
    """
    content = read_checkpoint(ckpt_path)
    written_by = content.get(CLASS_KEY)
    try:
        module_class = checkpoint_class(content)
    except Exception:  # a class path that does not import, or names a function
        module_class = None
    if module_class is None and written_by is not None:
        raise CheckpointError(
            f"checkpoint {ckpt_path} names the class {str(written_by)[:100]!r}, which is not a grasp-dl clustering "
            "model: refused; give ckpt_path= a checkpoint written by grasp-dl train"
        )
    _check_stored_center(content, ckpt_path)
    if module_class is None:
        raise CheckpointError(
            f"checkpoint {ckpt_path} holds an {checkpoint_kind(content)} model (no cluster centres), ckpt_path "
            "needs a clustering checkpoint: train one first (e.g. grasp-dl train model=dec) and give its last.ckpt"
        )
    module = load_module(module_class, ckpt_path, kinds=(checkpoint_kind(content),), content=content)
    module.eval()
    return module


def _check_stored_center(content: dict[str, Any], ckpt_path: str | Path) -> None:
    """Refuse a checkpoint whose stored projection centre is not null or two finite numbers."""
    prep = content["hyper_parameters"].get("preprocessing")
    center = prep.get("center") if isinstance(prep, dict) else None
    try:
        if isinstance(center, str):
            raise ConfigError("a string")
        check_center(center, "the centre")
    except ConfigError:
        raise CheckpointError(
            f"checkpoint {ckpt_path} stores the centre {str(center)[:60]!r}, not [ra, dec] in degrees: the file was "
            "edited or damaged; give ckpt_path= a checkpoint written by grasp-dl train"
        ) from None


def scoring_device(module: ClusteringModule, device: str = "auto") -> torch.device:
    """Where ``module`` scores: the GPU for 'auto' when there is one, else as ``device`` says.

    An error-aware mixture (model=xd) scores with numpy and always stays on the CPU.

    Parameters
    ----------
    module : ClusteringModule
        The model to score with.
    device : str
        'auto', 'cpu', 'cuda', 'cuda:N' (as :func:`grasp_dl.runtime.devices.inference_device`).

    Returns
    -------
    torch.device
        The device to move the module to.

    Raises
    ------
    ConfigError
        For an unknown device name.
    """
    target = inference_device(device)
    return torch.device("cpu") if isinstance(module, ScoresStarsWithErrors) else target


def _check_features(prepared_names: list[str], stored_names: list[str], source: str) -> None:
    if prepared_names != stored_names:
        raise ConfigError(
            f"{source} gives features {prepared_names} but the model was trained on {stored_names}: "
            "use a checkpoint trained on these features"
        )


def resolve_center(
    stored: Sequence[float] | None, center: str | Sequence[float] | None, table: pd.DataFrame
) -> tuple[float, float] | None:
    """The centre to project around: the checkpoint's (None), the catalogue's own ('auto'), or given.

    Warns when the catalogue lies far from the stored centre (another cluster's cone).
    """
    if isinstance(center, str):
        if center != "auto":
            raise ConfigError(f"center={center!r}: give 'auto', [ra, dec] in degrees, or leave it unset")
        require_columns(table, ["ra", "dec"], source="the catalogue")
        return estimate_center(table["ra"].to_numpy(float), table["dec"].to_numpy(float))
    if center is not None:
        return float(center[0]), float(center[1])
    if stored is None:
        return None
    if {"ra", "dec"} <= set(table.columns):
        own = estimate_center(table["ra"].to_numpy(float), table["dec"].to_numpy(float))
        distance = float(angular_separation(own[0], own[1], stored[0], stored[1]))
        if distance > FAR_FROM_CENTER_DEG:
            log.warning(
                "the catalogue is centred %.1f deg from the model's centre (%.4f, %.4f): is it another "
                "cluster? pass center='auto' (data.center=auto) to use the catalogue's own centre",
                distance,
                stored[0],
                stored[1],
            )
    return float(stored[0]), float(stored[1])


def _member_prob_std(
    module: VaDEModule,
    scaled: np.ndarray,
    group: int,
    chunk_size: int,
    rows: np.ndarray | None = None,
    pool: tuple[np.ndarray, float] | None = None,
) -> np.ndarray:
    """Spread of the member probability over draws of z, scored ``chunk_size`` stars at a time.

    ``rows`` are the stars' positions in the whole catalogue: they seed each star's draws, so the
    result does not depend on ``chunk_size``. ``pool`` (the start's cluster probability of each
    star and its weight) pools every draw as ``member_prob`` is pooled.
    """
    rows = np.arange(len(scaled)) if rows is None else np.asarray(rows)
    parts = [
        module.predict_proba_samples(
            torch.from_numpy(scaled[i : i + chunk_size]),
            rows=torch.from_numpy(rows[i : i + chunk_size]),
            pool=None if pool is None else (pool[0][i : i + chunk_size], pool[1]),
        )[1][:, group]
        .cpu()
        .numpy()
        for i in range(0, len(scaled), chunk_size)
    ]
    return np.concatenate(parts) if parts else np.empty(0)


def _reported_pool(
    module: ClusteringModule, scaled: np.ndarray, stars: StarData | None
) -> tuple[np.ndarray, float] | None:
    """The start's opinion pooled into the reported probabilities of these stars (None where they are the model's own)."""
    if not len(scaled) or not isinstance(module, PoolsWithStart):
        return None
    return module.pool_start(torch.from_numpy(scaled), stars)


@dataclass
class PreparedForModule:
    """A catalogue prepared the way a checkpoint says: the table, its features and their scaling."""

    table: pd.DataFrame
    prepared: PreparedCatalog
    scaled: np.ndarray
    center: tuple[float, float] | None


def _preprocessing(module: ClusteringModule) -> dict[str, Any]:
    prep = module.hparams.preprocessing
    if not prep:
        raise ConfigError("the checkpoint carries no preprocessing state: it cannot prepare a catalogue")
    return prep


def prepare_table(
    module: ClusteringModule, table: pd.DataFrame, center: tuple[float, float] | None, allow_empty: bool = False
) -> PreparedForModule:
    """Prepare a catalogue already read (or one chunk of it) with the checkpoint's features, cuts and scaler.

    No outlier removal: every star with the features is scored. ``center`` is the resolved
    projection centre (:func:`resolve_center`).
    """
    prep = _preprocessing(module)
    prepared = prepare_stellar_data(
        table,
        features=prep["features"],
        outlier_removal=False,
        center=center,
        ruwe_max=prep.get("ruwe_max"),
        parallax_over_error_min=prep.get("parallax_over_error_min"),
        mag_range=prep.get("mag_range"),
        allow_empty=allow_empty,
        already_read=True,
    )
    _check_features(prepared.feature_names, list(prep["feature_names"]), "the catalogue")
    scaled = FeatureScaler.from_state(prep["scaler"]).transform(prepared.features)
    return PreparedForModule(table, prepared, scaled, center)


def prepare_for_module(
    module: ClusteringModule, catalog: Any, center: str | Sequence[float] | None = None
) -> PreparedForModule:
    """Read and prepare ``catalog`` with the checkpoint's columns, features, cuts and scaler.

    No outlier removal: every star with the features is scored. ``center`` as in :func:`resolve_center`.
    """
    prep = _preprocessing(module)
    table = read_catalog(catalog, prep.get("columns"))
    return prepare_table(module, table, resolve_center(prep["center"], center, table))


def _literature_cluster(
    module: ClusteringModule, cluster: str | None, center: str | Sequence[float] | None
) -> tuple[Any, str | Sequence[float] | None]:
    """The named cluster to check against (given, or the checkpoint's when the centre is its own), and the centre.

    A cluster given here sets the centre when ``center`` is None.
    """
    from grasp_dl.data.clusters import literature_cluster

    if cluster is not None:
        record = literature_cluster(str(cluster))
        return record, (list(record.center) if center is None else center)
    stored = (module.hparams.preprocessing or {}).get("cluster")
    if stored and center is None:
        return literature_cluster(stored), center
    return None, center


def _user_chose_group(module: ClusteringModule, cluster_group: int | None) -> bool:
    """Whether the user named the cluster's group (here, or as the model's override at training)."""
    return cluster_group is not None or module.hparams.get("cluster_group") is not None


def _cluster_group(module: ClusteringModule, cluster_group: int | None) -> int:
    """The group scored as the cluster: ``cluster_group`` if given (checked), else the module's."""
    group = int(module.cluster_group) if cluster_group is None else int(cluster_group)
    k = module.hparams.n_clusters
    if not 0 <= group < k:
        raise ConfigError(f"cluster_group={group} is not a group of this model: choose 0..{k - 1}")
    return group


def prepared_star_data(module: Any, ready: PreparedForModule) -> StarData:
    """Astrometry, error covariances and radius of the scored rows of a prepared catalogue (error-aware models).

    Parameters
    ----------
    module : LightningModule
        The model; its stored features say whether parallax is used.
    ready : PreparedForModule
        The prepared catalogue (or chunk).

    Returns
    -------
    StarData
        One row per usable star, in the order of ``ready.scaled``.

    Raises
    ------
    CatalogError
        When the catalogue lacks the error columns (named with ``model=xd``).
    ConfigError
        When there is no centre to measure the radius from.
    """
    needs = module.catalog_needs() if hasattr(module, "catalog_needs") else CatalogNeeds()
    what = needs.stars or "model=xd"
    if ready.center is None:
        raise ConfigError(f"{what} needs the cluster centre: train with ra and dec among data.features")
    features = list(_preprocessing(module)["features"])
    quantities = astrometry_columns(features)
    table = ready.table
    # Copy only the columns star_data reads (all of them when one is missing, for its message).
    needed = ["ra", "dec", *quantities, *(ERROR_COLUMNS[q] for q in quantities)]
    if needs.photometry:
        photometry = (*CMD_COLUMNS, "phot_bp_mean_mag", "phot_rp_mean_mag", *PHOTOMETRIC_ERROR_COLUMN_NAMES)
        needed += [c for c in photometry if c in table.columns]
    if set(needed) <= set(table.columns):
        table = table[needed + [CORRELATION_COLUMN] * (CORRELATION_COLUMN in table.columns)]
    rows = table.iloc[np.flatnonzero(ready.prepared.mask)]
    return star_data(rows, ready.center, quantities, photometry=needs.photometry, what=what)


def score_prepared(
    module: ClusteringModule,
    ready: PreparedForModule,
    group: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    first_row: int = 0,
    score_no_astrometry: bool = False,
) -> pd.DataFrame:
    """The per-star table of a prepared catalogue (or chunk): one row per input row, in input order.

    A catalogue without ``source_id`` gets row numbers instead, counted from ``first_row`` (the
    position of a streamed chunk in the whole catalogue). With ``score_no_astrometry``, stars
    without astrometry (2-parameter solutions) are scored from their position alone and flagged
    ``scored:no_astrometry`` (:mod:`grasp_dl.inference.no_astrometry`).
    """
    table, prepared, scaled = ready.table, ready.prepared, ready.scaled
    k = module.hparams.n_clusters
    prob = np.empty((0, k))
    stars = prepared_star_data(module, ready) if len(scaled) and module.scores_with_errors else None
    spread = None
    if stars is not None and isinstance(module, SpreadsMembershipOfStars):
        # model=multimodal: an ensemble's mean membership and its spread, from each star's errors and photometry
        prob, spread = module.predict_proba_spread(stars)
    elif stars is not None:
        # model=xd, or an anchored deep model pooled with its error-aware start: each star's own errors.
        prob = module.proba_with_errors(torch.from_numpy(scaled), stars).cpu().numpy()
    elif len(scaled):
        prob = np.concatenate(
            [
                module.predict_proba(torch.from_numpy(scaled[i : i + chunk_size])).cpu().numpy()
                for i in range(0, len(scaled), chunk_size)
            ]
        )
    n, mask = len(table), prepared.mask
    columns: dict[str, np.ndarray] = {}
    if "source_id" in table.columns:
        columns["source_id"] = table["source_id"].to_numpy()
    else:
        columns["source_id"] = np.arange(first_row, first_row + n)
    labels = np.full(n, -1, dtype=np.int64)
    labels[mask] = prob.argmax(axis=1)
    columns["label"] = labels
    # Group by group (rows of ``full``), so that each output column is one contiguous array.
    full = np.full((k, n), np.nan)
    full[:, mask] = prob.T
    for j in range(k):
        columns[f"prob_{j}"] = full[j]
    columns["member_prob"] = full[group].copy()
    ent = np.full(n, np.nan)
    ent[mask] = entropy(prob)
    columns["entropy"] = ent
    if spread is not None:
        std = np.full(n, np.nan)
        std[mask] = spread[:, group]
        columns["member_prob_std"] = std
    elif isinstance(module, SamplesMembership):
        std = np.full(n, np.nan)
        rows = first_row + np.flatnonzero(mask)
        pool = _reported_pool(module, scaled, stars)
        std[mask] = _member_prob_std(module, scaled, group, chunk_size, rows, pool)
        columns["member_prob_std"] = std
    columns["flag"] = prepared.flags.astype(str)
    out = pd.DataFrame(columns, index=pd.RangeIndex(n), copy=False)
    flag_nonfinite_probabilities(out)
    if score_no_astrometry:
        score_without_astrometry(out, module, table, prepared, ready.center, group)
    return out


def _warn_duplicates(n_repeats: int) -> None:
    if n_repeats:
        log.warning(
            "%d rows repeat a source_id seen earlier in the catalogue: only the first of each is scored, the "
            "repeats are flagged %s (ids written as floats, e.g. 6.0e+18, collide this way: export them as integers)",
            n_repeats,
            FLAG_DUPLICATE_ID,
        )


def with_model_astrometry(summary: ClusterSummary, module: Any) -> ClusterSummary:
    """The summary with the model's own fitted cluster astrometry (model=xd: the deconvolved mean), and that mean
    reported as the cluster's (:meth:`~grasp_dl.membership.summary.ClusterSummary.with_model_mean`).

    Parameters
    ----------
    summary : ClusterSummary
        The cluster summary of the predictions; it is not changed.
    module : LightningModule
        The model; those without ``cluster_astrometry`` add nothing.

    Returns
    -------
    ClusterSummary
        A new summary.
    """
    if isinstance(module, FitsClusterAstrometry):
        summary = summary.with_model_astrometry(module.cluster_astrometry())
    return summary.with_model_mean()


def null_options(module: Any) -> dict[str, float]:
    """The model's comparison with its no-cluster null for the verdict (model=xd with ``null_test``), else empty."""
    return module.null_options() if isinstance(module, ComparesWithNull) else {}


def predict_catalog(
    module: ClusteringModule,
    catalog: Any,
    *,
    cluster_group: int | None = None,
    center: str | Sequence[float] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    score_no_astrometry: bool = False,
    cluster: str | None = None,
) -> tuple[pd.DataFrame, ClusterSummary]:
    """Prepare ``catalog`` exactly as in training and return (per-star table, cluster summary), in memory.

    The table has one row per input row, in input order: ``source_id``, ``label`` (-1 where the
    star could not be scored), ``prob_0..prob_{k-1}``, ``member_prob``, ``entropy`` and ``flag``
    (why a row was not scored). A model that draws latent points (VaDE) adds ``member_prob_std``,
    the spread of the (pooled) member probability over draws z ~ q(z|x); DEC has no such column,
    rather than a 0 that would read as certainty. ``center`` as in :func:`resolve_center`,
    ``score_no_astrometry`` as in :func:`score_prepared`; :func:`predict_to_file` streams large
    catalogues.

    The named group is checked by the plausibility guards (:mod:`grasp_dl.membership.guards`):
    when it is no cluster, ``member_prob`` is 0 (unless ``cluster_group`` was given) and the summary
    says ``cluster_found: false`` and why. ``cluster`` (by default the checkpoint's
    ``data.cluster``) gives the centre when ``center`` is None and the published astrometry the
    summary is compared with.
    """
    group = _cluster_group(module, cluster_group)
    literature, center = _literature_cluster(module, cluster, center)
    ready = prepare_for_module(module, catalog, center)
    out = score_prepared(module, ready, group, chunk_size, score_no_astrometry=score_no_astrometry)
    _warn_duplicates(flag_duplicate_ids(out))
    scored = out["label"].to_numpy() >= 0
    check = check_table(
        out.loc[scored, "member_prob"].to_numpy(float), ready.table.loc[scored], ready.center, **null_options(module)
    )
    user_group = _user_chose_group(module, cluster_group)
    if not check["cluster_found"] and not user_group:
        zero_member_prob(out)
    summary = SummaryAccumulator(ready.center, group)
    summary.update(out, ready.table)
    return out, finish_summary(with_model_astrometry(summary.result(), module), check, user_group, literature)


#: Catalogue columns a prediction may use besides the model's features (identifier, astrometry and
#: its errors, quality-cut columns, photometry): a streamed catalogue is read for these only.
PREDICTION_COLUMNS = (
    "source_id",
    "ra",
    "dec",
    "pmra",
    "pmdec",
    "parallax",
    "pmra_error",
    "pmdec_error",
    "parallax_error",
    "pmra_pmdec_corr",
    "parallax_over_error",
    "ruwe",
    "astrometric_params_solved",
    "phot_g_mean_mag",
    "phot_bp_mean_mag",
    "phot_rp_mean_mag",
    "bp_rp",
    "bp_g",
    "g_rp",
    "phot_g_mean_flux_over_error",
    "phot_bp_mean_flux_over_error",
    "phot_rp_mean_flux_over_error",
)


def predict_to_file(
    module: ClusteringModule,
    catalog: Any,
    output: str | Path,
    *,
    cluster_group: int | None = None,
    center: str | Sequence[float] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    score_no_astrometry: bool = False,
    cluster: str | None = None,
    figure: str | Path | None = None,
    columns: dict[str, str] | None = None,
) -> ClusterSummary:
    """Score ``catalog`` ``chunk_size`` rows at a time and write the per-star table (.parquet or .csv) as it goes.

    The table of :func:`predict_catalog`, with memory bounded by the chunk: each chunk is read (only
    the columns prediction uses), prepared, scored and appended to a temporary file that replaces
    ``output`` once complete, the cluster summary accumulated on the way. Reading and writing run
    in background threads (:mod:`grasp_dl.inference.streaming`); the module scores where its
    weights are. ``center='auto'`` reads the positions once more first.

    The plausibility guards and the diagnostic figure (``figure``) use a bounded random sample of
    the scored stars (:class:`~grasp_dl.membership.guards.StarSample`); when the named group is no
    cluster, the file is rewritten chunk by chunk with ``member_prob`` 0. ``cluster_group`` and
    ``cluster`` as in :func:`predict_catalog`; ``columns`` maps the catalogue's names to Gaia names
    on top of the checkpoint's mapping.
    """
    group = _cluster_group(module, cluster_group)
    literature, center = _literature_cluster(module, cluster, center)
    prep = _preprocessing(module)
    columns = {**(prep.get("columns") or {}), **(columns or {})} or None
    keep = set(PREDICTION_COLUMNS) | set(PHOTOMETRIC_ERROR_COLUMN_NAMES) | set(prep["features"])
    chunks = iter_catalog(catalog, columns, chunk_size=chunk_size, keep=keep)
    first = next(chunks)
    if isinstance(center, str) and center == "auto":
        positions = pd.concat(iter_catalog(catalog, columns, chunk_size=chunk_size, keep=["ra", "dec"]))
        used_center = resolve_center(prep["center"], center, positions)
    else:
        used_center = resolve_center(prep["center"], center, first)
    summary = SummaryAccumulator(used_center, group)
    sample = StarSample()
    seen_ids: set[Any] = set()
    n_repeats = 0
    # The next chunk is read and the last one written while this one is prepared and scored.
    device = next(iter(module.parameters()), torch.empty(0)).device
    with ReadAhead(chunks) as rest, CatalogChunkWriter(output) as writer, single_scoring_thread(device):
        with WriteBehind(writer.write) as write:
            for table in itertools.chain([first], rest):
                ready = prepare_table(module, table, used_center, allow_empty=True)
                out = score_prepared(
                    module, ready, group, chunk_size, first_row=summary.n_rows, score_no_astrometry=score_no_astrometry
                )
                n_repeats += flag_duplicate_ids(out, seen_ids)
                write.write(out)
                summary.update(out, table)
                sample.update(out, table)
        result = with_model_astrometry(summary.result(), module)
        if result.n_scored == 0:
            reasons = ", ".join(f"{n} {flag}" for flag, n in result.not_scored.items())
            raise CatalogError(
                f"no usable star in the catalogue of {result.n_rows} rows ({reasons}): relax the quality "
                "cuts or score a catalogue with the model's features"
            )
    _warn_duplicates(n_repeats)
    check = sample.check(used_center, **null_options(module))
    stars = sample.rows
    user_group = _user_chose_group(module, cluster_group)
    if not check["cluster_found"] and not user_group:
        zero_member_prob_file(output, chunk_size)
        stars["member_prob"] = 0.0
    result = finish_summary(result, check, user_group, literature)
    if figure is not None:
        from grasp_dl.figures.diagnostics import write_diagnostic_figure

        write_diagnostic_figure(stars, result, figure, used_center)
    return result


def predict_command(cfg: DictConfig) -> tuple[ClusterSummary, Path, Path]:
    """``grasp-dl predict``: score ``cfg.data.path`` with ``cfg.ckpt_path``, streaming the table to ``cfg.output``.

    The catalogue is read, scored and written ``cfg.chunk_size`` rows at a time, so its size is
    bounded by the disk, not the memory. The outputs (table, summary, figure) are checked before
    any is written, written to temporary files and moved into place together at the end; the
    output is locked for the run, so a second run into it is refused
    (:mod:`grasp_dl.runtime.io_policy`).

    Parameters
    ----------
    cfg : DictConfig
        A composed ``predict`` config (``conf/predict.yaml``).

    Returns
    -------
    tuple
        The summary (with the checkpoint and catalogue paths added), the predictions file and
        the summary file (``<stem>.summary.json``).

    Raises
    ------
    ConfigError
        For a missing checkpoint, an output that is not .parquet or .csv, an output (or its summary
        or figure) that is a directory or in use by another run, a ``data.center`` that is not two
        numbers, or a ``cluster_group`` the model does not have.
    CatalogError
        When the catalogue has no usable star.
    """
    chunk_size = check_predict_options(cfg)
    output = prediction_output(cfg.output)
    figure = figure_path(output) if cfg.get("figures", True) else None
    written = {"output": output, "output's summary": summary_path(output), "output's figure": figure}
    refuse_overwriting_inputs(written, {"data.path": cfg.data.path, "ckpt_path": cfg.ckpt_path})
    center = check_center(cfg.data.get("center"))
    columns = cfg.data.get("columns")
    with RunLock(output, "output"), StagedOutputs(written) as staged:
        module = load_clustering_module(cfg.ckpt_path)
        # Moved once, before the first chunk: every forward pass then runs where the weights are.
        module.to(scoring_device(module, str(cfg.get("device", "auto"))))
        summary = predict_to_file(
            module,
            cfg.data.path,
            staged.temp("output"),
            cluster_group=cfg.get("cluster_group"),
            center=center,
            chunk_size=chunk_size,
            score_no_astrometry=bool(cfg.get("score_no_astrometry", False)),
            cluster=cfg.data.get("cluster"),
            figure=None if figure is None else staged.temp("output's figure"),
            columns=None if columns is None else dict(columns),
        )
        summary = summary.with_run(
            figure=None if figure is None else str(figure),
            start_vs_end=module.fit_results.get("start_vs_end") or None,
            checkpoint=str(cfg.ckpt_path),
            catalog=str(cfg.data.path),
        )
        summary_json(summary, staged.temp("output's summary"))
        staged.commit()
    return summary, output, summary_path(output)

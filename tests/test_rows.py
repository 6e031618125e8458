"""Results on the rows of the catalogue a prepared feature matrix came from (grasp_dl.data.rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import grasp_dl
from grasp_dl import DeepClusteringModel, evaluate_clustering, plot_cluster_comparison, prepare_stellar_data
from grasp_dl.data.feature_matrix import CatalogRows
from grasp_dl.data.rows import on_prepared_rows, split_prepared
from grasp_dl.data.simulate import simulate_field
from grasp_dl.runtime.errors import ConfigError


@pytest.fixture(scope="module")
def cone() -> pd.DataFrame:
    return simulate_field("m4", n_stars=1500, seed=11)


def test_expand_puts_values_on_the_catalogue_rows_with_a_fill():
    rows = CatalogRows(np.array([True, False, True, False]))
    np.testing.assert_array_equal(rows.expand(np.array([4, 7]), -1), [4, -1, 7, -1])
    probs = rows.expand(np.array([[0.2, 0.8], [0.6, 0.4]], dtype=np.float32), np.nan)
    assert probs.shape == (4, 2) and probs.dtype == np.float64
    assert np.isnan(probs[[1, 3]]).all() and probs[2, 0] == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="3 values for 2 prepared rows"):
        rows.expand(np.zeros(3), -1)


def test_split_prepared_separates_features_and_rows_and_rejects_slices(cone):
    prepared = prepare_stellar_data(cone)
    X, _ = prepared
    for given in (prepared, X, X * 1.0):
        data, rows = split_prepared(given)
        assert type(data) is np.ndarray and rows.mask is prepared.mask
        np.testing.assert_array_equal(data, X)
    plain = np.asarray(X)
    assert split_prepared(plain)[1] is None and split_prepared(plain)[0] is plain
    assert split_prepared(cone)[0] is cone and split_prepared(cone)[1] is None
    with pytest.raises(ConfigError, match="add_membership_columns") as error:
        split_prepared(X[:100])
    assert "100 rows cut from a feature matrix of" in str(error.value) and "np.asarray" in str(error.value)


def test_labels_per_catalogue_row_meet_the_matrix_on_its_rows(cone):
    X, names = prepare_stellar_data(cone)
    mask = X.catalog_rows.mask
    truth = cone["truth"]
    labels = np.where(mask, 0, -1)
    reduced_truth, reduced_labels, untouched, none = on_prepared_rows(X, truth, labels, np.zeros(len(X)), None)
    assert len(reduced_truth) == len(reduced_labels) == len(X) and none is None
    np.testing.assert_array_equal(reduced_truth, truth.to_numpy()[mask])
    assert len(untouched) == len(X)
    # nothing changes for a plain array
    assert on_prepared_rows(np.asarray(X), labels)[0] is labels
    # evaluate_clustering and plot_cluster_comparison take labels in either row space
    predicted = np.where(mask, (cone["truth"] == "cluster").astype(int), -1)
    full = evaluate_clustering(truth, predicted, X)
    assert full["n_scored"] == len(X) and full["n_unscored"] == 0 and full["ari"] > 0.9
    assert evaluate_clustering(truth.to_numpy()[mask], predicted, X)["ari"] == full["ari"]
    with pytest.raises(ConfigError, match="rows"):
        evaluate_clustering(truth, predicted, np.asarray(X))  # a plain array has no catalogue rows
    figure = plot_cluster_comparison(X, truth, predicted, names)
    assert len(figure.axes) == 2 * 3


@pytest.mark.slow
def test_predict_clusters_is_row_aligned_for_prepared_features_only(cone, tmp_path):
    X, _ = prepare_stellar_data(cone)
    model = DeepClusteringModel(
        n_clusters=2, pretrain_epochs=1, epochs=1, device="cpu", progress_bar=False, output_dir=tmp_path
    )
    model.fit(X)
    labels, probs = model.predict_clusters(X)
    mask = X.catalog_rows.mask
    assert labels.shape == (len(cone),) and probs.shape == (len(cone), 2)
    assert (labels[~mask] == -1).all() and np.isnan(probs[~mask]).all() and (labels[mask] >= 0).all()
    bare_labels, bare_probs = model.predict_clusters(np.asarray(X))
    assert len(bare_labels) == len(X)
    np.testing.assert_array_equal(labels[mask], bare_labels)
    np.testing.assert_allclose(probs[mask], bare_probs)
    assert model.predict(X).shape == (len(cone),) and model.predict_proba(X).shape == (len(cone), 2)
    latent = model.get_latent_representation(X)
    assert latent.shape == (len(cone), model.latent_dim) and np.isnan(latent[~mask]).all()
    assert np.isfinite(latent[mask]).all()
    # the seed's GRASP lines work on the catalogue's rows
    cone = cone.copy()
    cone["dl_cluster"] = labels
    cone["dl_probability"] = probs.max(axis=1)
    assert cone["dl_probability"].isna().sum() == (~mask).sum()
    # a slice of the matrix cannot be put back on the catalogue
    with pytest.raises(ConfigError, match="add_membership_columns"):
        model.predict_clusters(X[:50])
    # the figure helpers meet the row-aligned labels
    assert model.plot_latent_space(X, labels=labels) is not None
    assert grasp_dl.plot_cluster_comparison(X, cone["truth"], labels) is not None

"""FeatureScaler: robust and standard standardisation, plain state for checkpoints."""

import numpy as np
import pytest

from grasp_dl.data.scaling import FeatureScaler
from grasp_dl.runtime.errors import ConfigError


def test_robust_scaler_ignores_outliers():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(20000, 2))
    x[:100, 0] = 1e6  # a handful of wild values
    scaler = FeatureScaler("robust").fit(x)
    np.testing.assert_allclose(scaler.center_, [3.0, 3.0], atol=0.1)
    np.testing.assert_allclose(scaler.scale_, [2.0, 2.0], rtol=0.05)
    standard = FeatureScaler("standard").fit(x)
    assert standard.scale_[0] > 1000  # the mean/std scaler is dragged by the outliers


def test_transform_inverse_round_trip_and_dtype():
    x = np.random.default_rng(1).normal(size=(100, 3)) * [1, 10, 100]
    scaler = FeatureScaler("standard").fit(x)
    z = scaler.transform(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)
    np.testing.assert_allclose(scaler.inverse_transform(z), x, rtol=1e-4, atol=1e-3)


def test_constant_column_stays_finite():
    x = np.column_stack([np.ones(50), np.arange(50.0)])
    z = FeatureScaler("robust").fit(x).transform(x)
    assert np.isfinite(z).all()
    assert (z[:, 0] == 0).all()


def test_state_round_trip_is_plain():
    scaler = FeatureScaler("robust").fit(np.arange(20.0).reshape(10, 2))
    state = scaler.state_dict()
    assert all(isinstance(v, float) for v in state["center"] + state["scale"])
    again = FeatureScaler.from_state(state)
    x = np.array([[1.0, 2.0]])
    np.testing.assert_array_equal(again.transform(x), scaler.transform(x))


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown scaling method 'minmax'"):
        FeatureScaler("minmax")
    with pytest.raises(ConfigError, match="not fitted"):
        FeatureScaler().transform(np.zeros((2, 2)))
    scaler = FeatureScaler().fit(np.zeros((5, 3)) + np.arange(5.0)[:, None])
    with pytest.raises(ConfigError, match="fitted on 3 features but got 2"):
        scaler.transform(np.zeros((2, 2)))

"""The mixture's EM contract (sufficient statistics, M-step, state) and its Lightning driver (model=xd).

One EM iteration is one training epoch: the statistics of batches add up, the loop's fit is the
plain loop's, a killed run resumes to the uninterrupted run's fit, and two DDP processes fit
what one does.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from test_xd import _model_field

from grasp_dl.data.examples import vb21_field_path
from grasp_dl.jobs import train as pipeline
from grasp_dl.mixtures.cluster_field import ClusterFieldMixture, shape_parameter
from grasp_dl.mixtures.em import add_stats, bounded_minimum, flatten_stats, new_optimizer, run_em, unflatten_stats
from grasp_dl.mixtures.profile import plummer_log_density, plummer_log_density_t, profile_log_density
from grasp_dl.models.xd import XDModule

from hydra_configs import compose_config

XD = ["model=xd", "data.simulate.n_stars=3000", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


def _explored(n: int = 1500) -> tuple[ClusterFieldMixture, object]:
    stars, _ = _model_field(0, n // 10, n / 10)
    return ClusterFieldMixture(n_field=2, n_starts=1, seed=0).explore(stars), stars


def test_the_profile_has_one_definition_in_numpy_and_torch():
    r = np.linspace(0.0, 0.5, 7)
    np.testing.assert_allclose(
        plummer_log_density(r, math.log(0.05), 0.5), profile_log_density(r, math.log(0.05), 4.0, 0.5)
    )
    torch_value = plummer_log_density_t(torch.tensor(r), torch.tensor(math.log(0.05)), torch.tensor(0.5))
    np.testing.assert_allclose(torch_value.numpy(), plummer_log_density(r, math.log(0.05), 0.5), rtol=1e-6)


def test_statistics_of_two_halves_add_up_to_the_whole():
    mixture, stars = _explored()
    mixture.start_iteration()  # iteration 1: beta's candidates are scored too
    batch = mixture.em_batch(stars)
    whole = mixture.e_step(batch)
    assert "beta_ll" in whole and "scale_d" in whole
    half = len(batch) // 2
    parts = add_stats(mixture.e_step(batch.rows(slice(0, half))), mixture.e_step(batch.rows(slice(half, None))))
    for key, value in whole.items():
        torch.testing.assert_close(parts[key], value, rtol=1e-10, atol=1e-8, msg=key)
    flat, layout = flatten_stats(whole)
    assert all(torch.equal(unflatten_stats(flat, layout)[key], value) for key, value in whole.items())


def test_another_modality_weighs_in_on_the_memberships_through_log_extra():
    mixture, stars = _explored()
    mixture.start_iteration()
    batch = mixture.em_batch(stars)
    k = mixture.n_components
    plain = mixture.e_step(batch)
    # a log-density that is the same for every component changes the likelihood, never the memberships
    same = mixture.e_step(batch.with_log_extra(torch.full((len(batch), k), -1.5, dtype=torch.float64)))
    torch.testing.assert_close(same["mass"], plain["mass"])
    torch.testing.assert_close(same["loglik"], plain["loglik"] - 1.5 * len(batch))
    # one that favours the cluster moves mass to it, batch by batch as on the whole
    favour = torch.zeros((len(batch), k), dtype=torch.float64)
    favour[:, 0] = 2.0
    tilted = batch.with_log_extra(favour)
    whole = mixture.e_step(tilted)
    assert float(whole["mass"][0]) > float(plain["mass"][0]) + 1.0
    half = len(batch) // 2
    parts = add_stats(
        mixture.e_step(tilted.rows(slice(0, half))), mixture.e_step(tilted.rows(torch.arange(half, len(batch))))
    )
    torch.testing.assert_close(parts["mass"], whole["mass"], rtol=1e-10, atol=1e-8)
    # predict_proba takes the same term for every star, those without astrometry included
    all_extra = np.zeros((len(stars.radius), k))
    all_extra[:, 0] = 2.0
    p_plain, p_tilted = mixture.predict_proba(stars)[:, 0], mixture.predict_proba(stars, all_extra)[:, 0]
    assert (p_tilted >= p_plain - 1e-12).all() and p_tilted.mean() > p_plain.mean()
    with pytest.raises(ValueError, match="log_extra has"):
        batch.with_log_extra(favour[:-1])


def test_the_plain_loop_over_chunks_is_the_loop_over_the_whole_and_its_state_resumes():
    mixture, stars = _explored()
    mixture.tol = 0.0  # every iteration runs (the fit may converge in fewer than the loop's count)
    state = mixture.get_state()
    batch = mixture.em_batch(stars)
    run_em(mixture, lambda: [batch], 6, new_optimizer(shape_parameter()))
    chunked = ClusterFieldMixture(n_field=2, n_starts=1, seed=0, tol=0.0).set_state(state)
    run_em(chunked, lambda: batch.chunks(300), 3, new_optimizer(shape_parameter()))
    resumed = ClusterFieldMixture(n_field=2, n_starts=1, seed=0, tol=0.0).set_state(chunked.get_state())
    assert resumed.n_iter_ == 3
    run_em(resumed, lambda: batch.chunks(300), 6, new_optimizer(shape_parameter()))
    assert resumed.n_iter_ == mixture.n_iter_ == 6
    # equal up to the summation order's rounding, which the M-step's searches (tolerance 1e-6) may pass on
    np.testing.assert_allclose(resumed.predict_proba(stars), mixture.predict_proba(stars), atol=1e-5)
    np.testing.assert_allclose(resumed.cluster_mean_, mixture.cluster_mean_, atol=1e-6)


@pytest.mark.slow
def test_one_epoch_is_one_em_iteration_and_the_trainer_fits_what_the_plain_loop_does(tmp_path):
    result = pipeline.train(compose_config("train", [*XD, "model.max_iter=3"], tmp_path))
    module = result.module
    fitted = module.fitted_mixture()
    assert fitted.n_iter_ == 3 and module.current_epoch == 3
    stars = module.train_catalog.stars
    plain = module.new_mixture()
    plain.n_field = None  # the module's n_clusters is now the chosen number; the plain fit chooses again,
    plain.outliers_auto = module.hparams.cluster_outliers == "auto"  # the outlier group too
    plain.fit(stars)
    assert plain.n_iter_ == 3
    np.testing.assert_allclose(fitted.predict_proba(stars), plain.predict_proba(stars), atol=1e-5)
    np.testing.assert_allclose(fitted.cluster_mean_, plain.cluster_mean_, atol=1e-6)
    assert fitted.log_scale_ == pytest.approx(plain.log_scale_, abs=1e-5)
    # the module's parameter is what the M-step's gradient steps left: the mixture's scale, slope and beta
    np.testing.assert_allclose(module.em_shape.detach().numpy(), [fitted.log_scale_, fitted.slope_, fitted.beta_])


@pytest.mark.slow
def test_validation_scores_its_stars_at_the_sanity_check_and_the_last_epoch_only(tmp_path, monkeypatch):
    scored = []  # (sanity check?, epoch) of every validation batch scored
    mean_entropy = XDModule.mean_entropy

    def spy(self, q):
        scored.append((self.trainer.sanity_checking, self.current_epoch))
        return mean_entropy(q)

    monkeypatch.setattr(XDModule, "mean_entropy", spy)
    result = pipeline.train(compose_config("train", [*XD, "model.max_iter=3"], tmp_path))
    assert result.module.fitted_mixture().n_iter_ == 3
    assert any(sanity for sanity, _ in scored)
    assert {epoch for sanity, epoch in scored if not sanity} == {2}  # the third epoch, where the EM ends
    assert math.isfinite(float(result.metrics["val/entropy"]))


@pytest.mark.slow
def test_a_killed_fit_resumed_from_last_ends_where_the_uninterrupted_fit_does(tmp_path):
    whole = pipeline.train(compose_config("train", XD, tmp_path / "whole"))
    epochs = whole.module.fitted_mixture().n_iter_
    assert whole.module.fitted_mixture().converged_ and 5 < epochs < 100
    crashed = compose_config("train", XD, tmp_path / "crash")
    with open_dict(crashed):
        crashed.callbacks.crash = {"_target_": "hydra_configs.CrashAtEpochStart", "epoch": 4}
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline.train(crashed)
    saved = torch.load(tmp_path / "crash" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["fit_results"]["xd_mixture"]["n_iter"] == 4
    resumed = pipeline.train(compose_config("train", [*XD, "ckpt_path=last"], tmp_path / "crash"))
    stars = whole.module.train_catalog.stars
    a = whole.module.predict_proba_stars(stars)
    b = resumed.module.predict_proba_stars(stars)
    assert resumed.module.fitted_mixture().n_iter_ == epochs
    assert np.abs(a[:, 0] - b[:, 0]).max() < 1e-5
    np.testing.assert_array_equal(a.argmax(1), b.argmax(1))
    # a checkpoint written before the EM state had its own state-dict entries still loads
    old = torch.load(whole.checkpoint, weights_only=True)
    for key in ("em_shape", "_extra_state"):
        del old["state_dict"][key]
    torch.save(old, tmp_path / "old.ckpt")
    loaded = XDModule.load_from_checkpoint(tmp_path / "old.ckpt")
    np.testing.assert_allclose(loaded.predict_proba_stars(stars), a)


@pytest.mark.slow
def test_two_ddp_processes_fit_a_real_field_as_one_does(tmp_path):
    base = ["data=catalog", f"data.path={vb21_field_path('ngc6522')}", "trainer.enable_progress_bar=false"]
    single = pipeline.train(compose_config("train", base, tmp_path / "single"))
    ddp = pipeline.train(compose_config("train", [*base, "trainer=ddp_cpu"], tmp_path / "ddp"))
    stars = single.module.train_catalog.stars
    one, two = single.module.fitted_mixture(), ddp.module.fitted_mixture()
    a, b = one.predict_proba(stars)[:, 0] > 0.5, two.predict_proba(stars)[:, 0] > 0.5
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99
    error = np.sqrt(np.diag(one.cluster_mean_cov_))
    assert (np.abs(one.cluster_mean_ - two.cluster_mean_) < error).all()


def test_the_m_steps_bounded_search_is_scipys_bit_for_bit():
    """The M-step's scalar searches (scale, slope, beta, sigma's prior, eta_0): scipy's bounded Brent search step
    for step in Python floats, so the fit is the same to the last bit."""
    from scipy.optimize import minimize_scalar

    from grasp_dl.mixtures.cluster_field import _quadratic

    rng = np.random.default_rng(3)
    objectives = []
    for _ in range(300):  # parabolas through three candidates, as the scale and beta searches have them
        nodes = np.sort(rng.uniform(-3, 3, size=3))
        values = rng.normal(scale=10.0 ** rng.uniform(-3, 4), size=3)
        objectives.append((lambda x, n=nodes, v=values: float(_quadratic(x, n, v)), nodes[0], nodes[2]))
    m0, sigma2 = 250.0, 0.03
    objectives += [
        (lambda x: m0 * (2.0 * math.log(x) + sigma2 / x**2) + math.exp(5.0 * (x / 0.1 - 1.0)), 0.005, 0.5),
        (lambda x: abs(x - 0.3), 0.0, 1.0),  # a kink
        (lambda x: 1.0, -1.0, 1.0),  # flat
        (lambda x: -x, 1.5, 8.0),  # the minimum on a bound
        (lambda x: math.cos(3.0 * x) + 0.1 * x, -4.0, 4.0),  # several minima
    ]
    for xatol in (1e-4, 1e-5, 1e-6):
        for func, lower, upper in objectives:
            expected = minimize_scalar(func, bounds=(lower, upper), method="bounded", options={"xatol": xatol}).x
            assert bounded_minimum(func, lower, upper, xatol=xatol) == float(expected)
    # a search cut short by maxiter ends where scipy's does
    func = objectives[-1][0]
    cut = minimize_scalar(func, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-9, "maxiter": 5}).x
    assert bounded_minimum(func, -4.0, 4.0, xatol=1e-9, maxiter=5) == float(cut)
    with pytest.raises(ValueError):
        bounded_minimum(func, 1.0, -1.0)

"""Linear regression: streamed normal equations, ridge, Bayesian evidence maximisation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from numbec.models.regression import (
    NormalEquations,
    fit_bayesian,
    fit_ridge,
    log_evidence,
    predictive_variance,
)


def _problem(rng, n=400, m=12, noise=0.1, w_scale=1.0):
    phi = rng.normal(size=(n, m))
    w = rng.normal(0.0, w_scale, m)
    y = phi @ w + noise * rng.normal(size=n)
    return phi, y, w


def _equations(phi, y, block=37):
    eq = NormalEquations(phi.shape[1])
    for start in range(0, len(y), block):
        eq.add(phi[start:start + block], y[start:start + block])
    return eq


def test_blocks_add_up_to_the_full_design():
    rng = np.random.default_rng(0)
    phi, y, _ = _problem(rng)
    eq = _equations(phi, y)
    np.testing.assert_allclose(eq.gram, phi.T @ phi, rtol=1e-12)
    np.testing.assert_allclose(eq.rhs, phi.T @ y, rtol=1e-12)
    assert eq.n_rows == len(y)
    w = rng.normal(size=phi.shape[1])
    assert eq.residual_sum_of_squares(w) == pytest.approx(np.sum((y - phi @ w) ** 2))


def test_ridge_closed_form():
    rng = np.random.default_rng(1)
    phi, y, _ = _problem(rng)
    res = fit_ridge(_equations(phi, y), 0.5)
    expected = np.linalg.solve(phi.T @ phi + 0.5 * np.eye(phi.shape[1]), phi.T @ y)
    np.testing.assert_allclose(res.weights, expected, rtol=1e-10)
    assert res.rmse == pytest.approx(np.sqrt(np.mean((y - phi @ expected) ** 2)))
    with pytest.raises(ValueError, match="> 0"):
        fit_ridge(_equations(phi, y), 0.0)


def test_log_evidence_is_the_marginal_likelihood():
    """Against the Gaussian density of y ~ N(0, sigma_w^2 Phi Phi^T + sigma_v^2 I)."""
    rng = np.random.default_rng(2)
    phi, y, _ = _problem(rng, n=60, m=5)
    eq = _equations(phi, y)
    for sw2, sv2 in [(1.0, 0.01), (0.3, 0.2)]:
        cov = sw2 * phi @ phi.T + sv2 * np.eye(len(y))
        direct = multivariate_normal(mean=np.zeros(len(y)), cov=cov).logpdf(y)
        assert log_evidence(eq, sw2, sv2) == pytest.approx(direct, rel=1e-9)


def test_bayesian_recovers_noise_and_maximises_evidence():
    rng = np.random.default_rng(3)
    noise = 0.1
    phi, y, w_true = _problem(rng, n=2000, m=10, noise=noise)
    eq = _equations(phi, y)
    res = fit_bayesian(eq)
    assert np.sqrt(res.sigma_v2) == pytest.approx(noise, rel=0.05)
    np.testing.assert_allclose(res.weights, w_true, atol=0.02)
    assert res.gamma == pytest.approx(10, abs=0.1)  # every weight well determined
    best = log_evidence(eq, res.sigma_w2, res.sigma_v2)
    assert res.log_evidence == pytest.approx(best, rel=1e-9)
    for fw, fv in [(1.5, 1), (0.67, 1), (1, 1.2), (1, 0.83)]:
        assert log_evidence(eq, res.sigma_w2 * fw, res.sigma_v2 * fv) < best
    # posterior mean and covariance in closed form
    a = eq.gram / res.sigma_v2 + np.eye(10) / res.sigma_w2
    np.testing.assert_allclose(res.covariance, np.linalg.inv(a), rtol=1e-8)
    np.testing.assert_allclose(res.weights, np.linalg.solve(a, eq.rhs / res.sigma_v2),
                               rtol=1e-8)


def test_bayesian_prunes_pure_noise():
    """Targets unrelated to the design: the evidence drives the weights to zero."""
    rng = np.random.default_rng(4)
    phi = rng.normal(size=(300, 8))
    y = rng.normal(size=300)
    res = fit_bayesian(_equations(phi, y))
    assert res.gamma < 1.0
    assert np.abs(res.weights).max() < 0.05


def test_predictive_variance():
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(6, 4))
    a = rng.normal(size=(4, 4))
    cov = a @ a.T
    expected = np.array([r @ cov @ r for r in rows])
    np.testing.assert_allclose(predictive_variance(rows, cov, 0.3), expected + 0.3)
    np.testing.assert_allclose(predictive_variance(rows, cov, 0.3, include_noise=False),
                               expected)


def test_bad_input():
    eq = NormalEquations(3)
    with pytest.raises(ValueError, match="no training rows"):
        fit_bayesian(eq)
    with pytest.raises(ValueError, match="do not match"):
        eq.add(np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        eq.add(np.full((1, 3), np.nan), np.zeros(1))


def test_grouped_priors_maximise_the_evidence():
    """Two column groups whose weights differ by 100x in scale: one prior variance per group,
    each at a stationary point of the evidence, computed against the Gaussian density
    y ~ N(0, Phi diag(sigma_w,k^2) Phi^T + sigma_v^2 I)."""
    rng = np.random.default_rng(6)
    n, m = 150, 8
    phi = rng.normal(size=(n, m))
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    w_true = np.where(groups == 0, 3.0, 0.03) * rng.normal(size=m)
    y = phi @ w_true + 0.05 * rng.normal(size=n)
    eq = _equations(phi, y)
    res = fit_bayesian(eq, groups=groups)
    sw2 = np.array(res.sigma_w2_groups)
    assert sw2[0] > 100 * sw2[1]

    def evidence(sw2, sv2):
        cov = phi @ np.diag(sw2[groups]) @ phi.T + sv2 * np.eye(n)
        return multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(y)

    best = evidence(sw2, res.sigma_v2)
    assert res.log_evidence == pytest.approx(best, rel=1e-9)
    for factor in ([1.3, 1], [0.77, 1], [1, 1.3], [1, 0.77]):
        assert evidence(sw2 * np.array(factor), res.sigma_v2) < best
    for factor in (1.2, 0.83):
        assert evidence(sw2, res.sigma_v2 * factor) < best
    single = fit_bayesian(eq)
    assert res.log_evidence > single.log_evidence
    # one group is the ordinary fit
    same = fit_bayesian(eq, groups=np.zeros(m, dtype=int))
    np.testing.assert_array_equal(same.weights, single.weights)

"""Linear regression for the kernel models: Bayesian (evidence maximisation) and ridge.

The models are linear in their weights, ``y = Phi w + noise``. The design matrix Phi is never
held in memory: :class:`NormalEquations` accumulates ``A = Phi^T Phi``, ``b = Phi^T y`` and
``y^T y`` from the rows of one structure at a time, which is all either solver needs.

Bayesian linear regression (docs/method.md#bayesian-regression, VASP's scheme): prior
``w ~ N(0, sigma_w^2 I)``, noise ``N(0, sigma_v^2)``. With ``alpha = 1/sigma_w^2``,
``beta = 1/sigma_v^2`` and the eigendecomposition ``A = V diag(lam) V^T``::

    Sigma = (beta A + alpha I)^-1,   w = beta Sigma b,
    gamma = sum_k beta lam_k / (beta lam_k + alpha)   (number of well-determined weights)
    sigma_w^2 <- |w|^2 / gamma,      sigma_v^2 <- |y - Phi w|^2 / (n - gamma)

iterated to the maximum of the log evidence (:func:`log_evidence`, Bishop PRML eq. 3.86).
The predictive variance of a new row phi is ``sigma_v^2 + phi^T Sigma phi``.

Ridge: ``w = (A + lambda I)^-1 b`` by Cholesky with a fixed lambda; its "covariance"
``sigma_v^2 (A + lambda I)^-1`` uses the residual variance, for rough error bars only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = [
    "NormalEquations",
    "RegressionResult",
    "fit_bayesian",
    "fit_ridge",
    "log_evidence",
    "predictive_variance",
]


class NormalEquations:
    """Running sums ``A = Phi^T Phi`` (M, M), ``b = Phi^T y`` (M,), ``y^T y`` and row count."""

    def __init__(self, n_columns: int):
        self.n_columns = int(n_columns)
        self.gram = np.zeros((self.n_columns, self.n_columns))
        self.rhs = np.zeros(self.n_columns)
        self.yy = 0.0
        self.n_rows = 0

    def add(self, phi: np.ndarray, y: np.ndarray) -> None:
        """Add rows: phi (R, M) float64 design rows, y (R,) float64 targets.

        Raises
        ------
        ValueError
            Shapes that do not match, or NaN/inf values.
        """
        phi = np.asarray(phi, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        if phi.ndim != 2 or phi.shape != (y.size, self.n_columns):
            raise ValueError(f"design rows of shape {phi.shape} do not match "
                             f"{y.size} targets and {self.n_columns} columns")
        if not (np.isfinite(phi).all() and np.isfinite(y).all()):
            raise ValueError("design rows or targets contain NaN or inf")
        self.gram += phi.T @ phi
        self.rhs += phi.T @ y
        self.yy += float(y @ y)
        self.n_rows += y.size

    def residual_sum_of_squares(self, weights: np.ndarray) -> float:
        """``|y - Phi w|^2`` from the sums (no design matrix needed)."""
        w = np.asarray(weights)
        return max(float(self.yy - 2.0 * w @ self.rhs + w @ self.gram @ w), 0.0)


@dataclass
class RegressionResult:
    """Solution of a linear regression.

    weights (M,); covariance (M, M) posterior covariance Sigma (units of weights^2);
    sigma_v2 noise variance and sigma_w2 prior variance; gamma effective number of parameters;
    log_evidence (Bayesian only, else nan); n_iter; rmse training RMSE of the targets;
    method "bayesian" or "ridge".
    """

    weights: np.ndarray
    covariance: np.ndarray
    sigma_v2: float
    sigma_w2: float
    gamma: float
    log_evidence: float
    n_iter: int
    rmse: float
    method: str
    sigma_w2_groups: list | None = None

    def summary(self) -> dict:
        out = {"method": self.method, "sigma_v2": self.sigma_v2, "sigma_w2": self.sigma_w2,
               "gamma": self.gamma, "log_evidence": self.log_evidence,
               "n_iter": self.n_iter, "train_rmse": self.rmse}
        if self.sigma_w2_groups is not None:
            out["sigma_w2_groups"] = list(self.sigma_w2_groups)
        return out


def _check_equations(eq: NormalEquations) -> None:
    if eq.n_rows == 0:
        raise ValueError("no training rows: nothing to fit")


def log_evidence(eq: NormalEquations, sigma_w2: float, sigma_v2: float) -> float:
    """Log marginal likelihood ``ln p(y | sigma_w^2, sigma_v^2)`` of the linear model."""
    _check_equations(eq)
    lam = np.clip(np.linalg.eigvalsh(eq.gram), 0.0, None)
    mat = eq.gram / sigma_v2 + np.eye(eq.n_columns) / sigma_w2
    w = scipy.linalg.solve(mat, eq.rhs / sigma_v2, assume_a="pos")
    return _log_evidence_eig(eq, lam, w, sigma_w2, sigma_v2)


def _log_evidence_eig(eq, lam, w, sigma_w2, sigma_v2) -> float:
    alpha, beta = 1.0 / sigma_w2, 1.0 / sigma_v2
    m, n = eq.n_columns, eq.n_rows
    rss = eq.residual_sum_of_squares(w)
    return float(0.5 * m * np.log(alpha) + 0.5 * n * np.log(beta) - 0.5 * beta * rss
                 - 0.5 * alpha * (w @ w) - 0.5 * np.sum(np.log(beta * lam + alpha))
                 - 0.5 * n * np.log(2.0 * np.pi))


def fit_bayesian(eq: NormalEquations, sigma_w2: float = 1.0, sigma_v2: float | None = None,
                 max_iter: int = 200, tol: float = 1e-8, groups=None,
                 progress: bool = False) -> RegressionResult:
    """Bayesian linear regression with evidence maximisation (fixed-point iteration).

    sigma_w2, sigma_v2 : starting values (sigma_v2 default: 1 % of the mean square target).
    Converged when both variances change by less than ``tol`` relatively.
    groups : optional (M,) int labels 0..G-1 of the columns; each group gets its own prior
        variance ``sigma_w,g^2`` (MacKay's update ``sigma_w,g^2 = |w_g|^2 / gamma_g`` with
        ``gamma_g = sum_{k in g} (1 - Sigma_kk / sigma_w,g^2)``), e.g. the monopole and dipole
        weights of a combined model, whose columns have different scales. Started from the
        shared-prior optimum; converged at a relative change of ``max(tol, 1e-6)``.
    progress : a tqdm bar of the iterations (on stderr).

    Raises
    ------
    ValueError
        No rows were added.
    """
    _check_equations(eq)
    if groups is not None and np.unique(np.asarray(groups)).size > 1:
        # start from the optimum with one shared prior (cheap: one eigendecomposition)
        start = fit_bayesian(eq, sigma_w2, sigma_v2, max_iter, tol, progress=progress)
        return _fit_bayesian_groups(eq, np.asarray(groups, dtype=np.int64), start.sigma_w2,
                                    start.sigma_v2, max_iter, max(tol, 1e-6), progress)
    lam, vecs = np.linalg.eigh(eq.gram)
    lam = np.clip(lam, 0.0, None)
    proj = vecs.T @ eq.rhs
    if sigma_v2 is None:
        sigma_v2 = max(0.01 * eq.yy / eq.n_rows, 1e-12)
    sw2, sv2 = float(sigma_w2), float(sigma_v2)
    n_iter = 0
    bar = _iteration_bar("evidence", max_iter, progress)
    for n_iter in range(1, max_iter + 1):  # noqa: B007
        bar.update()
        alpha, beta = 1.0 / sw2, 1.0 / sv2
        w = vecs @ (beta * proj / (beta * lam + alpha))
        gamma = float(np.sum(beta * lam / (beta * lam + alpha)))
        rss = eq.residual_sum_of_squares(w)
        ww = float(w @ w)
        new_sw2 = ww / gamma if gamma > 0 and ww > 0 else sw2
        dof = eq.n_rows - gamma
        new_sv2 = max(rss / dof, 1e-300) if dof > 0 else sv2
        done = (abs(new_sw2 - sw2) <= tol * sw2) and (abs(new_sv2 - sv2) <= tol * sv2)
        sw2, sv2 = new_sw2, new_sv2
        if done:
            break
    bar.close()
    alpha, beta = 1.0 / sw2, 1.0 / sv2
    w = vecs @ (beta * proj / (beta * lam + alpha))
    gamma = float(np.sum(beta * lam / (beta * lam + alpha)))
    cov = (vecs / (beta * lam + alpha)) @ vecs.T
    rss = eq.residual_sum_of_squares(w)
    return RegressionResult(
        weights=w, covariance=cov, sigma_v2=sv2, sigma_w2=sw2, gamma=gamma,
        log_evidence=_log_evidence_eig(eq, lam, w, sw2, sv2), n_iter=n_iter,
        rmse=float(np.sqrt(rss / eq.n_rows)), method="bayesian")


def _iteration_bar(label: str, max_iter: int, show: bool):
    """tqdm bar counting iterations (at most ``max_iter``); disabled unless ``show``."""
    from tqdm.auto import tqdm

    return tqdm(total=max_iter, desc=label, unit="it", disable=not show, leave=False)


def _fit_bayesian_groups(eq, groups, sigma_w2, sigma_v2, max_iter, tol,
                         progress=False) -> RegressionResult:
    """Evidence maximisation with one prior variance per column group (dense Cholesky per
    iteration, O(M^3))."""
    m = eq.n_columns
    if groups.shape != (m,) or groups.min() < 0:
        raise ValueError(f"groups must be {m} non-negative labels, got shape {groups.shape}")
    n_groups = int(groups.max()) + 1
    if sigma_v2 is None:
        sigma_v2 = max(0.01 * eq.yy / eq.n_rows, 1e-12)
    sw2 = np.full(n_groups, float(sigma_w2))
    sv2 = float(sigma_v2)

    def solve(sw2, sv2, full=False):
        """alpha (M,), diag(Sigma) or Sigma, weights, log det(Sigma^-1)."""
        alpha = 1.0 / sw2[groups]
        mat = eq.gram / sv2 + np.diag(alpha)
        low = scipy.linalg.cholesky(mat, lower=True)
        w = scipy.linalg.cho_solve((low, True), eq.rhs / sv2)
        inv_low, info = scipy.linalg.lapack.dtrtri(low, lower=1)
        if info != 0:
            raise np.linalg.LinAlgError("posterior precision matrix is singular")
        cov = inv_low.T @ inv_low if full else np.einsum("ij,ij->j", inv_low, inv_low)
        logdet = 2.0 * np.sum(np.log(np.diag(low)))
        return alpha, cov, w, logdet

    n_iter = 0
    bar = _iteration_bar("evidence (per-group priors)", max_iter, progress)
    for n_iter in range(1, max_iter + 1):  # noqa: B007
        bar.update()
        alpha, cov_diag, w, _ = solve(sw2, sv2)
        well = 1.0 - alpha * cov_diag
        gamma_g = np.bincount(groups, weights=well, minlength=n_groups)
        ww_g = np.bincount(groups, weights=w * w, minlength=n_groups)
        new_sw2 = np.where((gamma_g > 0) & (ww_g > 0), ww_g / np.maximum(gamma_g, 1e-300), sw2)
        dof = eq.n_rows - gamma_g.sum()
        rss = eq.residual_sum_of_squares(w)
        new_sv2 = max(rss / dof, 1e-300) if dof > 0 else sv2
        done = (np.all(np.abs(new_sw2 - sw2) <= tol * sw2)
                and abs(new_sv2 - sv2) <= tol * sv2)
        sw2, sv2 = new_sw2, new_sv2
        if done:
            break
    bar.close()
    alpha, cov, w, logdet = solve(sw2, sv2, full=True)
    rss = eq.residual_sum_of_squares(w)
    n = eq.n_rows
    log_ev = float(0.5 * np.sum(np.log(alpha)) + 0.5 * n * np.log(1.0 / sv2) - 0.5 * rss / sv2
                   - 0.5 * np.sum(alpha * w * w) - 0.5 * logdet - 0.5 * n * np.log(2.0 * np.pi))
    gamma = float(np.sum(1.0 - alpha * np.diag(cov)))
    return RegressionResult(
        weights=w, covariance=cov, sigma_v2=sv2, sigma_w2=float(np.mean(sw2[groups])),
        gamma=gamma, log_evidence=log_ev, n_iter=n_iter, rmse=float(np.sqrt(rss / n)),
        method="bayesian", sigma_w2_groups=[float(v) for v in sw2])


def fit_ridge(eq: NormalEquations, regularization: float) -> RegressionResult:
    """Ridge regression ``w = (A + lambda I)^-1 b`` (Cholesky), lambda = ``regularization``."""
    _check_equations(eq)
    lam = float(regularization)
    if not lam > 0:
        raise ValueError(f"ridge regularization must be > 0, got {regularization}")
    mat = eq.gram + lam * np.eye(eq.n_columns)
    factor = scipy.linalg.cho_factor(mat)
    w = scipy.linalg.cho_solve(factor, eq.rhs)
    inv = scipy.linalg.cho_solve(factor, np.eye(eq.n_columns))
    dof = float(np.trace(inv @ eq.gram))
    rss = eq.residual_sum_of_squares(w)
    sv2 = rss / max(eq.n_rows - dof, 1.0)
    return RegressionResult(
        weights=w, covariance=sv2 * inv, sigma_v2=sv2, sigma_w2=sv2 / lam, gamma=dof,
        log_evidence=float("nan"), n_iter=1, rmse=float(np.sqrt(rss / eq.n_rows)),
        method="ridge")


def predictive_variance(phi: np.ndarray, covariance: np.ndarray, sigma_v2: float,
                        include_noise: bool = True) -> np.ndarray:
    """``phi_r^T Sigma phi_r (+ sigma_v^2)`` for each row of phi (R, M) -> (R,)."""
    var = np.einsum("rm,rm->r", phi @ covariance, phi)
    var = np.clip(var, 0.0, None)
    return var + sigma_v2 if include_noise else var

"""Polynomial kernel on normalised descriptors: values and descriptor gradients vs finite
differences."""

from __future__ import annotations

import numpy as np
import pytest

from numbec.models.kernels import check_zeta, int_power, kernel_gradient_matrix, normalize


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 7)) + 2.0  # mostly positive cosines, like real descriptors
    xs = rng.normal(size=(4, 7)) + 2.0
    unit_s, _ = normalize(xs)
    return rng, x, unit_s


def _y(x, unit_s, coef, power):
    """y_i (or y_ic) = sum_b A[i, (c,) b] (x_i/|x_i| . x_b)**power, evaluated directly."""
    k = ((x / np.linalg.norm(x, axis=1)[:, None]) @ unit_s.T) ** power
    if coef.ndim == 1:
        return k @ coef
    if coef.ndim == 2:
        return np.sum(k * coef, axis=1)
    return np.einsum("ib,icb->ic", k, coef)


def _central_differences(f, x, shape, h=1e-6):
    """d f(x)[i, ...] / d x[i, k] by central differences, all atoms i at once (f is per atom)."""
    fd = np.zeros(shape)
    for k in range(x.shape[1]):
        xp, xm = x.copy(), x.copy()
        xp[:, k] += h
        xm[:, k] -= h
        fd[..., k] = (f(xp) - f(xm)) / (2 * h)
    return fd


@pytest.mark.parametrize("power", [None, 2, 0])
def test_kernel_gradient_matrix_is_directional_derivative(data, power):
    """Each Jacobian row J_r (a direction in descriptor space) gives d(x_i.x_b)**p/dt along
    X_i + t J_r."""
    rng, x, unit_s = data
    zeta = 3
    p = zeta if power is None else power
    centre = np.array([0, 0, 2, 4, 1, 3])
    jac = rng.normal(size=(centre.size, x.shape[1]))
    unit, norms = normalize(x)
    out = kernel_gradient_matrix(jac @ unit_s.T, np.einsum("rk,rk->r", jac, unit[centre]),
                                 unit[centre] @ unit_s.T, norms[centre], zeta, power=power)
    h = 1e-6
    for r, i in enumerate(centre):
        xp = x[i] + h * jac[r]
        xm = x[i] - h * jac[r]
        kp = (xp / np.linalg.norm(xp) @ unit_s.T) ** p
        km = (xm / np.linalg.norm(xm) @ unit_s.T) ** p
        np.testing.assert_allclose(out[r], (kp - km) / (2 * h), atol=1e-8)


def test_normalize_is_scale_invariant_and_handles_isolated_rows(data):
    _, x, _ = data
    unit, norms = normalize(x)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0)
    np.testing.assert_allclose(normalize(3.7 * x)[0], unit, rtol=1e-14)
    np.testing.assert_allclose(norms, np.linalg.norm(x, axis=1))
    x = x.copy()
    x[2] = 0.0  # an isolated atom: no direction, so every kernel with it is zero
    unit, norms = normalize(x, allow_isolated=True)
    assert not unit[2].any() and norms[2] == 1.0
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="atom 3 is NaN"):
        normalize(x, allow_isolated=True)


def test_bad_input():
    with pytest.raises(ValueError, match="zeta"):
        check_zeta(0)
    with pytest.raises(ValueError, match="zeta"):
        check_zeta(2.5)
    assert check_zeta(3.0) == 3
    x = np.ones((3, 4))
    x[1] = 0.0
    with pytest.raises(ValueError, match="frame 2: atom 1 has no neighbour"):
        normalize(x, "frame 2")


def test_int_power_equals_numpy_power():
    x = np.random.default_rng(3).uniform(-1.2, 1.2, (7, 5))
    for p in range(8):
        np.testing.assert_allclose(int_power(x, p), x ** float(p), rtol=1e-14, atol=0)
    assert int_power(x, 1) is not x  # a new array, never a view of the input
    with pytest.raises(ValueError, match="p >= 0"):
        int_power(x, -1)


@pytest.mark.parametrize("zeta", [1, 2, 4])
@pytest.mark.parametrize("channels", ["monopole", "dipole", "both"])
def test_block_kernel_kernels_match_finite_differences(data, zeta, channels):
    """The Numba block kernels of a prediction (kernels_numba) against central differences of
    the kernel sums they differentiate: q_i = sum_b w_b c_ib**zeta and, per Cartesian a,
    y_ia = sum_b A[i, a, b] c_ib**(zeta - 1), c_ib = x_i . x_b with x_i = X_i / |X_i|."""
    from numbec.models.kernels_numba import finish_gradient, species_kernel_derivatives

    rng, x, unit_s = data
    mono, dip = channels in ("monopole", "both"), channels in ("dipole", "both")
    n_ch = int(mono) + 3 * int(dip)
    w = rng.normal(size=4) if mono else np.zeros(0)
    coef = rng.normal(size=(5, 3, 4))
    unit, norms = normalize(x)
    cos = unit @ unit_s.T
    dk = np.zeros((5, n_ch, 4))
    q, kernel_pow, radial = np.empty(5), np.empty((5, 4)), np.empty((5, n_ch))
    species_kernel_derivatives(cos, zeta, w, coef if dip and zeta >= 2 else np.zeros((0, 3, 0)),
                             dk, q, kernel_pow, radial)
    grad = (dk.reshape(5 * n_ch, 4) @ unit_s).reshape(5, n_ch, -1)
    finish_gradient(grad, radial, unit, norms)
    np.testing.assert_allclose(kernel_pow, cos ** (zeta - 1), rtol=1e-14)
    if mono:
        np.testing.assert_allclose(q, _y(x, unit_s, w, zeta), rtol=1e-13)

    def channels_of(xx):
        parts = [_y(xx, unit_s, w, zeta)[:, None]] if mono else []
        if dip:
            parts.append(_y(xx, unit_s, coef, zeta - 1))
        return np.concatenate(parts, axis=1)

    fd = _central_differences(channels_of, x, grad.shape)
    np.testing.assert_allclose(grad, fd, atol=1e-8)
    assert np.abs(fd).max() > 1e-3 or (zeta == 1 and not mono)

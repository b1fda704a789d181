"""Polynomial kernels on normalised descriptors and their descriptor gradients.

Equations: docs/method.md#kernels.

Scalar kernel (every model)::

    K(X_i, X_b) = (x_i . x_b) ** zeta,      x = X / |X|   (normalised descriptor)

Its gradient with respect to the (unnormalised) descriptor of the first argument is::

    dK/dX_i = zeta (x_i . x_b) ** (zeta - 1) (x_b - (x_i . x_b) x_i) / |X_i|

so the gradient of a local scalar ``y_i = sum_b w_b K(X_i, X_b)`` over all atoms is two matrix
products (BLAS), see :func:`kernel_gradient`.

Matrix (lambda = 1) kernel of the dipole model (docs/method.md#kernels), choice made here::

    K_{mu nu}(i, b) = (V_i^mu . V_b^nu) / s**2  *  K(X_i, X_b) ** ((zeta - 1) / zeta)
                    = (V_i^mu . V_b^nu) / s**2  *  (x_i . x_b) ** (zeta - 1)

``V_i^mu`` (Dv,) is the Cartesian component mu of the vector descriptor; ``s`` is a constant
scale (the RMS Frobenius norm of the training vector descriptors) rather than a per-environment
norm, so that the kernel stays linear in ``V_i`` and its derivative needs only the adjoint
products of :mod:`numbec.descriptors`. It is equivariant: rotating environment i by R maps
``K(i, b) -> R K(i, b)``.

Zeta must be a positive integer (odd powers of a cosine keep the sign; that is fine).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "check_zeta",
    "normalize",
    "polynomial_kernel",
    "kernel_gradient",
    "kernel_gradient_matrix",
    "gradient_from_derivatives",
    "int_power",
]


def check_zeta(zeta) -> int:
    """Return ``zeta`` as an int >= 1 or raise ValueError."""
    z = int(zeta)
    if z != zeta or z < 1:
        raise ValueError(f"kernel exponent zeta must be a positive integer, got {zeta}")
    return z


def normalize(values: np.ndarray, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Unit-normalise descriptor rows.

    values : (N, D) float64. Returns ``(unit (N, D), norms (N,))``. A zero descriptor (an
    isolated atom, no neighbour within the cutoff) has no direction: ValueError naming it.
    """
    values = np.asarray(values, dtype=np.float64)
    norms = np.linalg.norm(values, axis=1)
    bad = ~(norms > 0.0)
    if bad.any():
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}atom {int(np.flatnonzero(bad)[0])} has no neighbour within "
                         "the descriptor cutoff (zero descriptor); the kernel is undefined")
    return values / norms[:, None], norms


def int_power(x: np.ndarray, p: int) -> np.ndarray:
    """``x ** p`` for an integer ``p >= 0`` by repeated multiplication (numpy's ``**`` calls
    ``pow`` per element for exponents other than 2: ~25x slower for ``p = 3, 4``)."""
    p = int(p)
    if p < 0:
        raise ValueError(f"int_power needs p >= 0, got {p}")
    result = None
    base = x
    while p:
        if p & 1:
            result = base.copy() if result is None else result * base
        p >>= 1
        if p:
            base = base * base
    return np.ones_like(x) if result is None else result


def polynomial_kernel(unit_a: np.ndarray, unit_b: np.ndarray, zeta: int) -> np.ndarray:
    """``K[i, b] = (unit_a[i] . unit_b[b]) ** zeta``; (Na, D), (Nb, D) -> (Na, Nb)."""
    return int_power(unit_a @ unit_b.T, check_zeta(zeta))


def kernel_gradient(unit: np.ndarray, norms: np.ndarray, unit_sparse: np.ndarray,
                    coefficients: np.ndarray, zeta: int, power: int | None = None,
                    cos: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``y_i = sum_b A[i, ..., b] (x_i . x_b) ** power`` with respect to X_i.

    Parameters
    ----------
    unit : (N, D) normalised descriptors x_i; norms : (N,) their norms |X_i|.
    unit_sparse : (M, D) normalised sparse descriptors x_b.
    coefficients : (M,) weights w_b (the same for every i), or (N, M) / (N, C, M) per-atom
        coefficients ``A`` (C channels, e.g. Cartesian components).
    zeta : int, the kernel exponent; power : exponent used (default zeta).
    cos : (N, M) ``unit @ unit_sparse.T`` if the caller has it already (saves one GEMM).

    Returns
    -------
    (N, D) or (N, C, D) float64: ``dy_i/dX_i`` (per channel), in units of y per descriptor unit.
    Computed as two GEMMs: ``(A * p c^(p-1)) @ x_S`` minus the radial part along ``x_i``.
    """
    zeta = check_zeta(zeta)
    p = zeta if power is None else int(power)
    if cos is None:
        cos = unit @ unit_sparse.T                               # (N, M)
    coef = np.asarray(coefficients, dtype=np.float64)
    if p == 0:
        shape = (unit.shape[0],) + coef.shape[1:-1] + (unit.shape[1],) if coef.ndim > 1 \
            else unit.shape
        return np.zeros(shape)
    dpow = p * int_power(cos, p - 1)                             # (N, M)
    if coef.ndim == 1:
        a = dpow * coef[None, :]
        grad = a @ unit_sparse - np.sum(a * cos, axis=1)[:, None] * unit
        return grad / norms[:, None]
    if coef.ndim == 2:
        a = dpow * coef
        grad = a @ unit_sparse - np.sum(a * cos, axis=1)[:, None] * unit
        return grad / norms[:, None]
    return gradient_from_derivatives(dpow[:, None, :] * coef, cos, unit, norms, unit_sparse)


def gradient_from_derivatives(dk: np.ndarray, cos: np.ndarray, unit: np.ndarray,
                              norms: np.ndarray, unit_sparse: np.ndarray) -> np.ndarray:
    """Gradient of ``y_{i,c} = sum_b k_{icb}(x_i . x_b)`` with respect to X_i, given the
    derivatives ``dk`` (N, C, M) = ``k'_{icb}(x_i . x_b)``.

    cos : (N, M) x_i . x_b; unit : (N, D) x_i; norms : (N,) |X_i|; unit_sparse : (M, D) x_b.
    Returns (N, C, D) float64 ``sum_b dk_{icb} (x_b - (x_i . x_b) x_i) / |X_i|``: one
    (N*C, M) @ (M, D) product for all channels.
    """
    n, c, m = dk.shape
    # one (N*C, M) @ (M, D) GEMM: the stacked (N, C, M) @ (M, D) product is ~5x slower
    grad = (dk.reshape(n * c, m) @ unit_sparse).reshape(n, c, -1)
    grad -= np.einsum("icm,im->ic", dk, cos)[:, :, None] * unit[:, None, :]
    return grad / norms[:, None, None]


def kernel_gradient_matrix(projected: np.ndarray, radial: np.ndarray, cos: np.ndarray,
                           norms: np.ndarray, zeta: int, power: int | None = None) -> np.ndarray:
    """Derivatives of ``(x_i . x_b) ** power`` for every sparse point b, pushed through rows of
    a descriptor Jacobian: the training-side counterpart of :func:`kernel_gradient`.

    Parameters
    ----------
    projected : (R, M) ``J @ x_S^T``: rows of the Jacobian J (R, D) of the descriptor of the
        centre i(r) of each row (one row per pair and Cartesian direction) times the
        normalised sparse descriptors x_S (M, D).
    radial : (R,) ``J[r] . x_i(r)``.
    cos : (R, M) ``x_i(r) . x_b``; norms : (R,) ``|X_i(r)|``.

    Returns (R, M) float64: ``d (x_i . x_b)**power / d r`` of each Jacobian row.
    """
    zeta = check_zeta(zeta)
    p = zeta if power is None else int(power)
    if p == 0:
        return np.zeros_like(projected)
    dpow = p * int_power(cos, p - 1) / np.asarray(norms)[:, None]
    return (projected - radial[:, None] * cos) * dpow

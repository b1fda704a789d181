"""Polynomial kernels on normalised descriptors and their descriptor gradients.

Equations: docs/method.md#kernels.

Scalar kernel (every model)::

    K(X_i, X_b) = (x_i . x_b) ** zeta,      x = X / |X|   (normalised descriptor)

Its gradient with respect to the (unnormalised) descriptor of the first argument is::

    dK/dX_i = zeta (x_i . x_b) ** (zeta - 1) (x_b - (x_i . x_b) x_i) / |X_i|

so the gradient of a local scalar ``y_i = sum_b w_b K(X_i, X_b)`` over all atoms is two matrix
products (BLAS) around one element-wise pass (:mod:`numbec.models.kernels_numba`); for training
rows see :func:`kernel_gradient_matrix`.

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

__all__ = ["check_zeta", "int_power", "kernel_gradient_matrix", "normalize"]


def check_zeta(zeta) -> int:
    """Return ``zeta`` as an int >= 1 or raise ValueError."""
    z = int(zeta)
    if z != zeta or z < 1:
        raise ValueError(f"kernel exponent zeta must be a positive integer, got {zeta}")
    return z


def normalize(values: np.ndarray, where: str = "", *, allow_isolated: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """Unit-normalise descriptor rows.

    Parameters
    ----------
    values : (N, D) float64
        Descriptors, one row per atom.
    where : str
        Names the structure in error messages.
    allow_isolated : bool
        A zero descriptor (an isolated atom: no neighbour within the cutoff) has no
        direction. False: ValueError naming it. True: its unit row is zero (so every kernel
        with it is zero: the atom keeps its baseline) and its norm 1.

    Returns
    -------
    unit : (N, D) float64
    norms : (N,) float64, ``|X_i|`` (1 for isolated atoms).

    Raises
    ------
    ValueError
        A zero or non-finite descriptor (zero ones only without ``allow_isolated``).
    """
    values = np.asarray(values, dtype=np.float64)
    norms = np.linalg.norm(values, axis=1)
    prefix = f"{where}: " if where else ""
    if not np.isfinite(norms).all():
        atom = int(np.flatnonzero(~np.isfinite(norms))[0])
        raise ValueError(f"{prefix}descriptor of atom {atom} is NaN or inf")
    isolated = ~(norms > 0.0)
    if isolated.any():
        if not allow_isolated:
            raise ValueError(f"{prefix}atom {int(np.flatnonzero(isolated)[0])} has no neighbour "
                             "within the descriptor cutoff (zero descriptor); the kernel is "
                             "undefined")
        norms = np.where(isolated, 1.0, norms)
    return values / norms[:, None], norms


def int_power(x: np.ndarray, p: int) -> np.ndarray:
    """``x ** p`` for an integer ``p >= 0`` by repeated multiplication (numpy's ``**`` calls
    ``pow`` per element for exponents other than 2, which is much slower for ``p = 3, 4``:
    ~25x; measured 2026-11-25 at numbec commit 623f05e)."""
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


def kernel_gradient_matrix(projected: np.ndarray, radial: np.ndarray, cos: np.ndarray,
                           row_norms: np.ndarray, zeta: int, power: int | None = None
                           ) -> np.ndarray:
    """Derivatives of ``(x_i . x_b) ** power`` for every sparse point b, pushed through rows of
    a descriptor Jacobian: the training-side counterpart of the prediction's gradient.

    Parameters
    ----------
    projected : (R, M) ``J @ x_S^T``: rows of the Jacobian J (R, D) of the descriptor of the
        centre i(r) of each row (one row per pair and Cartesian direction) times the
        normalised sparse descriptors x_S (M, D).
    radial : (R,) ``J[r] . x_i(r)``.
    cos : (R, M) ``x_i(r) . x_b``; row_norms : (R,) ``|X_i(r)|`` of the centre of each row.

    Returns (R, M) float64: ``d (x_i . x_b)**power / d r`` of each Jacobian row.
    """
    zeta = check_zeta(zeta)
    p = zeta if power is None else int(power)
    if p == 0:
        return np.zeros_like(projected)
    dpow = p * int_power(cos, p - 1) / np.asarray(row_norms)[:, None]
    return (projected - radial[:, None] * cos) * dpow

"""Selection of sparse reference environments (docs/method.md#sparse-reference-environments).

Both methods work on unit-normalised descriptors ``x`` (rows), the space in which the kernel
``(x_i . x_b) ** zeta`` lives, and return indices into the rows, in selection order.

- :func:`cur_select`: CUR by statistical leverage scores with deflation. The leverage score of
  row i is ``sum_{k<K} U[i, k]**2`` (U: left singular vectors of the row matrix, K = number to
  select). Greedy selection takes the row of largest score and deflates the remaining rows by
  projecting out the chosen one; that is exactly a column-pivoted QR of ``U_K^T`` (Q-DEIM), done
  by LAPACK in one call. Deterministic: no random numbers.
- :func:`fps_select`: farthest-point sampling with the kernel-induced distance
  ``d(i, j)**2 = 2 - 2 (x_i . x_j)**zeta``, started from a row drawn with ``seed``
  (``seed=None``: the row farthest from the mean direction). Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from numbec.models import kernels

__all__ = ["SELECTION_METHODS", "cur_select", "fps_select", "select"]

SELECTION_METHODS = ("cur", "fps")


def _check(unit: np.ndarray, n_select: int, where: str) -> np.ndarray:
    unit = np.asarray(unit, dtype=np.float64)
    if unit.ndim != 2:
        raise ValueError(f"{where}: descriptors must be (n, D), got shape {unit.shape}")
    n_select = int(n_select)
    if n_select < 1:
        raise ValueError(f"{where}: n_sparse must be >= 1, got {n_select}")
    if n_select > unit.shape[0]:
        raise ValueError(
            f"{where}: n_sparse = {n_select} but only {unit.shape[0]} environments are "
            "available; lower n_sparse or add training frames")
    return unit


def cur_select(unit: np.ndarray, n_select: int, where: str = "CUR") -> np.ndarray:
    """Indices (n_select,) int64 of rows chosen by leverage-score CUR with deflation.

    unit : (n, D) float64 normalised descriptors. If n_select exceeds the numerical rank, the
    rows after the rank are the pivots LAPACK picks among (numerically) dependent rows.
    """
    unit = _check(unit, n_select, where)
    u, s, _ = np.linalg.svd(unit, full_matrices=False)
    k = min(int(n_select), u.shape[1])
    if n_select <= k:
        _, _, piv = scipy.linalg.qr(u[:, :k].T, mode="economic", pivoting=True)
        return np.asarray(piv[:n_select], dtype=np.int64)
    # more points than singular vectors: pivoted QR on all of them, then farthest points
    _, _, piv = scipy.linalg.qr(u.T, mode="economic", pivoting=True)
    chosen = list(piv[:k])
    rest = fps_select(unit, n_select, zeta=1, start=chosen)
    return np.asarray(rest, dtype=np.int64)


def fps_select(unit: np.ndarray, n_select: int, zeta: int = 1, seed: int | None = None,
               start=None, where: str = "FPS") -> np.ndarray:
    """Indices (n_select,) int64 of rows chosen by farthest-point sampling.

    unit : (n, D) float64 normalised descriptors; zeta : kernel exponent of the distance
    ``2 - 2 (x_i . x_j)**zeta``; seed : first point drawn with ``numpy.random.default_rng(seed)``
    (None: the row least aligned with the mean direction); start : indices already chosen
    (continue from them).
    """
    unit = _check(unit, n_select, where)
    n = unit.shape[0]
    chosen = [] if start is None else [int(i) for i in start]
    if not chosen:
        if seed is None:
            mean = unit.mean(axis=0)
            first = int(np.argmin(unit @ mean))
        else:
            first = int(np.random.default_rng(seed).integers(n))
        chosen = [first]
    dist = np.full(n, np.inf)
    for i in chosen:
        dist = np.minimum(dist, 2.0 - 2.0 * kernels.int_power(unit @ unit[i], zeta))
    dist[chosen] = -np.inf
    while len(chosen) < n_select:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 2.0 - 2.0 * kernels.int_power(unit @ unit[nxt], zeta))
        dist[nxt] = -np.inf
    return np.asarray(chosen, dtype=np.int64)


def select(unit: np.ndarray, n_select: int, method: str = "cur", zeta: int = 1,
           seed: int | None = 0, where: str = "") -> np.ndarray:
    """Dispatch to :func:`cur_select` (``"cur"``) or :func:`fps_select` (``"fps"``)."""
    label = where or method.upper()
    if method == "cur":
        return cur_select(unit, n_select, where=label)
    if method == "fps":
        return fps_select(unit, n_select, zeta=zeta, seed=seed, where=label)
    raise ValueError(f"unknown sparse selection {method!r}; use one of {SELECTION_METHODS}")

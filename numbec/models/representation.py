"""How far a structure's environments are from what a kernel model can represent.

A kernel model spans its predictions with the kernel features of its sparse points. The part
of an environment's kernel feature vector outside that span is error that no weight can fix
and that the posterior of the weights does not see: the Nyström residual ``r`` of
:class:`NystromResidual`, 0 for a sparse point, 1 for an environment unlike all of them.
The ``residual`` recalibration of the predictive variance
(:mod:`numbec.models.uncertainty`) and the ``hybrid`` selection strategy
(:mod:`numbec.selection`) use it.
"""

from __future__ import annotations

import numpy as np

from numbec.models.variance_scales import residual_scale

__all__ = ["NystromResidual", "frame_residual", "mean_frame_residual", "nystrom_residual",
           "residual_variance", "unit_descriptors"]


class NystromResidual:
    """Nyström residual of environments against a reference set of environments per species.

    The reference set starts as the model's sparse points; :meth:`add` appends environments
    (those of a picked frame). For a unit descriptor x of species z and the reference
    environments R_z (m_z, D), with the kernel ``k(x, y) = (x . y) ** zeta`` (``k(x, x) = 1``)::

        r(x) = 1 - k_z(x)^T K_zz^+ k_z(x),   k_z(x) = k(x, R_z) (m_z,),  K_zz = k(R_z, R_z)

    the fraction of the kernel feature vector of x outside the span of the references (0 for
    a reference environment, 1 for one orthogonal to all of them). ``K_zz^+`` keeps the
    eigenvalues above ``1e-10`` of the largest (CUR-chosen points can be nearly dependent).
    """

    RCOND = 1e-10

    def __init__(self, model):
        self.zeta = int(model.zeta)
        self.refs = {int(z): np.asarray(model.sparse_unit[model.sparse_species == z])
                     for z in model.species}
        self.factors = {z: self._factor(r) for z, r in self.refs.items()}

    def _factor(self, refs: np.ndarray) -> np.ndarray:
        """``W`` (m, r) with ``K^+ = W W^T`` on the kept eigen-directions."""
        from numbec.models.kernels import int_power

        lam, vec = np.linalg.eigh(int_power(refs @ refs.T, self.zeta))
        keep = lam > self.RCOND * max(float(lam[-1]), 0.0)
        return vec[:, keep] / np.sqrt(lam[keep])

    def residual(self, unit: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """(N,) float64 in [0, 1]: r of each atom (unit (N, D) unit descriptors, numbers (N,);
        an atom whose species has no reference, or an isolated atom (zero row), gets 1)."""
        from numbec.models.kernels import int_power

        out = np.ones(len(numbers))
        for z, refs in self.refs.items():
            rows = numbers == z
            if rows.any() and refs.shape[0]:
                proj = int_power(unit[rows] @ refs.T, self.zeta) @ self.factors[z]
                out[rows] = 1.0 - np.einsum("ak,ak->a", proj, proj)
        return np.clip(out, 0.0, 1.0)

    def add(self, unit: np.ndarray, numbers: np.ndarray) -> None:
        """Append the environments (unit (N, D), numbers (N,)) to the references."""
        for z in self.refs:
            rows = (numbers == z) & (np.linalg.norm(unit, axis=1) > 0.0)
            if rows.any():
                self.refs[z] = np.concatenate([self.refs[z], unit[rows]])
                self.factors[z] = self._factor(self.refs[z])


def unit_descriptors(model, positions, numbers, cell, pbc, where: str = "") -> np.ndarray:
    """(N, D) unit scalar descriptors (zero rows for isolated atoms) with the model's settings."""
    from numbec.descriptors import compute_descriptors
    from numbec.models import kernels

    desc = compute_descriptors(np.asarray(positions, dtype=np.float64), numbers,
                               np.asarray(cell, dtype=np.float64), pbc, model.settings)
    return kernels.normalize(desc.values, where or "structure", allow_isolated=True)[0]


def frame_residual(model, positions, numbers, cell, pbc, where: str = "") -> np.ndarray:
    """Representation error of each atom's environment: its Nyström residual against the
    model's sparse points of its species, (N,) float64 in [0, 1], dimensionless.

    ``r_a = 1 - k_a^T K_mm^+ k_a`` in the model's normalised scalar kernel
    ``(x_a . x_b) ** zeta`` (``k(x, x) = 1``): 0 for an environment that is a sparse point
    (or a combination of them in feature space), 1 for one unlike every sparse point. The
    posterior variance of the weights does not see this error: no weight can represent the
    part of an environment outside the span of the sparse points.

    positions (N, 3) Å; numbers (N,) int; cell (3, 3) Å, rows = lattice vectors; pbc (3,) bool.
    """
    if getattr(model, "sparse_unit", None) is None:
        raise ValueError(f"frame_residual needs a fitted kernel model, got "
                         f"{type(model).__name__}")
    numbers = np.asarray(numbers, dtype=np.int64)
    model.check_inputs(positions, numbers, where)
    unit = unit_descriptors(model, positions, numbers, cell, pbc, where)
    return nystrom_residual(model).residual(unit, numbers)


def nystrom_residual(model) -> NystromResidual:
    """The :class:`NystromResidual` of the model's sparse points, made once per sparse set."""
    key = id(model.sparse_unit)
    cached = getattr(model, "_coverage_cache", None)
    if cached is None or cached[0] != key:
        cached = (key, NystromResidual(model))
        model._coverage_cache = cached
    return cached[1]


def mean_frame_residual(model, positions=None, numbers=None, cell=None, pbc=None,
                        unit=None) -> float:
    """``r_frame``: the mean over the N atoms of a structure of their Nyström residuals
    ``r_a`` (:func:`frame_residual`), float in [0, 1],
    dimensionless. From the structure (positions (N, 3) Å, numbers (N,) int, cell (3, 3) Å,
    pbc (3,) bool) or, when the caller has them, its unit scalar descriptors ``unit`` (N, D)
    with ``numbers``."""
    if unit is None:
        return float(frame_residual(model, positions, numbers, cell, pbc).mean())
    return float(nystrom_residual(model).residual(unit, np.asarray(numbers)).mean())


def residual_variance(model, positions=None, numbers=None, cell=None, pbc=None,
                      unit=None) -> float:
    """``c r_frame`` (e^2), the variance the model adds to every BEC component of a structure
    (:func:`residual_scale`, :func:`mean_frame_residual`); 0 without the term (nothing is
    computed then)."""
    c = residual_scale(model)
    if c == 0.0:
        return 0.0
    return c * mean_frame_residual(model, positions, numbers, cell, pbc, unit)

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

__all__ = ["NystromResidual", "environment_check", "frame_residual", "mean_frame_residual",
           "nystrom_residual", "reference_residuals", "residual_summary", "residual_variance",
           "unit_descriptors"]

#: Training environments per species whose residuals make a model's reference distribution
#: (:func:`reference_residuals`; a seeded random subset of a larger pool).
REFERENCE_ENVIRONMENTS = 20_000
#: Quantile of the training residuals that :func:`environment_check` compares with: about 1 %
#: of the atoms of frames like the training frames lie beyond it.
REFERENCE_QUANTILE = 0.99
#: A species of which more than this fraction of the checked atoms lie beyond the training
#: quantile is reported as extrapolated (more than ``5 / (n + 1)`` for a reference of n
#: training environments, beyond whose largest a new one like them falls with probability
#: ``1 / (n + 1)``). Measured on alpha-quartz (combined model, 100
#: sparse points per species): frames interleaved with 34 training frames at 300 K, 0-0.6 %;
#: the 600 K test frames 150-200, 1.1-2.9 % with a model whose training frames include
#: 600 K ones and 33-36 % with one trained at 300 K only.
BEYOND_FRACTION = 0.1


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
        return _pinv_factor(refs, self.zeta, self.RCOND)

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


def _pinv_factor(refs: np.ndarray, zeta: int, rcond: float) -> np.ndarray:
    """``W`` (m, r) with ``K^+ = W W^T``, ``K = (refs refs^T) ** zeta``, on the eigenvalues
    above ``rcond`` of the largest."""
    from numbec.models.kernels import int_power

    lam, vec = np.linalg.eigh(int_power(refs @ refs.T, zeta))
    keep = lam > rcond * max(float(lam[-1]), 0.0)
    return vec[:, keep] / np.sqrt(lam[keep])


def reference_residuals(pool: np.ndarray, chosen: np.ndarray, zeta: int,
                        seed: int = 0) -> np.ndarray:
    """Residuals of a species' training environments, as new environments like them would have.

    pool : (n, D) float64, the unit descriptors of the species' training environments;
    chosen : (m,) int, the rows of ``pool`` that are the sparse points; zeta : kernel exponent.
    Returns (n',) float64 in [0, 1]: the Nyström residual of every environment that is not a
    sparse point against the sparse points, and of every sparse point its leave-one-out
    residual against the others, ``1 / (K^+)_jj`` (its own residual is 0). At most
    :data:`REFERENCE_ENVIRONMENTS` of them: a subset drawn with ``seed`` from a larger pool.
    """
    refs = pool[chosen]
    rcond = NystromResidual.RCOND
    rest = np.ones(pool.shape[0], dtype=bool)
    rest[chosen] = False
    others = pool[rest]
    if others.shape[0] + refs.shape[0] > REFERENCE_ENVIRONMENTS:
        rng = np.random.default_rng(seed)
        keep = max(REFERENCE_ENVIRONMENTS - refs.shape[0], 0)
        others = others[np.sort(rng.choice(others.shape[0], keep, replace=False))]
    from numbec.models.kernels import int_power

    factor = _pinv_factor(refs, zeta, rcond)
    proj = int_power(others @ refs.T, zeta) @ factor
    outside = 1.0 - np.einsum("ak,ak->a", proj, proj)
    pinv_diag = np.einsum("jk,jk->j", factor, factor)
    loo = np.where(pinv_diag > 0, 1.0 / np.where(pinv_diag > 0, pinv_diag, 1.0), 1.0)
    return np.clip(np.concatenate([outside, loo]), 0.0, 1.0)


def residual_summary(residuals: np.ndarray) -> dict:
    """What a model keeps of :func:`reference_residuals` (JSON-ready floats): ``quantile``
    (:data:`REFERENCE_QUANTILE`), ``q`` the residual there, ``median``, ``max`` and ``n``."""
    r = np.asarray(residuals, dtype=np.float64)
    return {"quantile": REFERENCE_QUANTILE, "q": float(np.quantile(r, REFERENCE_QUANTILE)),
            "median": float(np.median(r)), "max": float(r.max()), "n": int(r.size)}


def environment_check(model, frames, indices=None) -> dict | None:
    """How many of the atoms of ``frames`` lie further from the sparse points than the model's
    training environments do.

    frames : sequence of ``(positions (N, 3) Å, numbers (N,), cell (3, 3) Å, pbc (3,))``;
    indices : their frame numbers in the trajectory (for the report; default 0, 1, ...).
    Returns None for a model without the reference (not a kernel model, or saved by a numbec
    without it), else a JSON-ready dict: ``frames`` (the indices), and per species symbol
    ``checked`` (atoms), ``beyond`` (the fraction of them whose residual exceeds the
    training environments' ``q`` at ``quantile``, about ``1 - quantile`` for frames like the
    training frames), ``worst`` (the largest residual, ``worst_frame``, ``worst_atom``),
    ``training_q``, ``training_max`` and ``threshold``; ``extrapolated``: the species whose
    ``beyond`` exceeds its ``threshold`` (:data:`BEYOND_FRACTION`, more for small
    references).
    """
    from ase.data import chemical_symbols

    reference = (getattr(model, "training", None) or {}).get("environment_residual")
    if not reference or getattr(model, "sparse_unit", None) is None:
        return None
    frames = list(frames)
    indices = list(range(len(frames))) if indices is None else [int(k) for k in indices]
    residual = nystrom_residual(model)
    seen: dict = {}
    for k, (positions, numbers, cell, pbc) in zip(indices, frames, strict=True):
        numbers = np.asarray(numbers, dtype=np.int64)
        try:
            unit = unit_descriptors(model, positions, numbers, cell, pbc, f"frame {k}")
        except ValueError as err:  # overlapping atoms, a degenerate cell: name the frame
            message = str(err)
            raise type(err)(message if message.startswith(f"frame {k}")
                            else f"frame {k}: {message}") from None
        r = residual.residual(unit, numbers)
        for z in np.unique(numbers):
            symbol = chemical_symbols[int(z)]
            rows = np.flatnonzero(numbers == z)
            entry = seen.setdefault(symbol, {"values": [], "worst": (-1.0, -1, -1)})
            entry["values"].append(r[rows])
            a = int(rows[np.argmax(r[rows])])
            if r[a] > entry["worst"][0]:
                entry["worst"] = (float(r[a]), k, a)
    out: dict = {"frames": indices, "extrapolated": []}
    for symbol, entry in seen.items():
        ref = _reference_entry(reference.get(symbol), symbol)
        if ref is None:
            continue
        values = np.concatenate(entry["values"])
        beyond = float(np.mean(values > ref["q"]))
        worst, frame, atom = entry["worst"]
        out[symbol] = {"checked": int(values.size), "beyond": beyond, "worst": worst,
                       "worst_frame": frame, "worst_atom": atom,
                       "training_q": ref["q"], "training_max": ref["max"],
                       "quantile": ref["quantile"]}
        out[symbol]["threshold"] = max(BEYOND_FRACTION, 5.0 / (ref["n"] + 1.0))
        if beyond > out[symbol]["threshold"]:
            out["extrapolated"].append(symbol)
    return out


def _reference_entry(entry, symbol) -> dict | None:
    """One species' reference read back from a model file, checked: ``q``, ``max`` in [0, 1],
    ``quantile`` in (0, 1) and ``n`` >= 1 as floats; None for a species without one."""
    if entry is None:
        return None
    try:
        out = {key: float(entry[key]) for key in ("q", "max", "quantile", "n")}
    except (KeyError, TypeError, ValueError):
        out = None
    if out is None or not (0.0 <= out["q"] <= out["max"] <= 1.0 and 0 < out["quantile"] < 1
                           and out["n"] >= 1):
        raise ValueError(f"the model's training['environment_residual'][{symbol!r}] is not "
                         f"a valid reference: {entry!r}")
    return out


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

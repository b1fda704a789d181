"""Model uncertainty of dM/dt by forward mode: exact, at about the cost of one adjoint channel.

The spectrum needs ``dM/dt = sum_j Z_j v_j``, a *directional* derivative of the model's
dipole along the atomic velocities. The kernel models are linear in their weights w (C,), so
per frame ``dM/dt = a w + b`` with the design row ``a = sum_j Phi_j v_j`` (3, C) and the
baseline part b (3,) e·Å/fs. ``a`` is linear in the descriptor tangents
``Xdot_i = sum_j dX_i/dr_j . v_j`` (:mod:`numbec.descriptors.tangent`), one pass over the
pairs whatever the number of weight samples, so that

- posterior samples of dM/dt are ``a W + b`` for weight samples W (C, S) drawn once from
  the full posterior (:func:`full_posterior_samples`);
- the exact epistemic standard deviation is ``sqrt(s_w diag(a Sigma a^T))`` (3,);

with no low-rank truncation of the posterior.

The row (docs/method.md, "Adjoint derivatives"; docs/models.md, "Neutrality"), with
``w = v - mean(v)`` for periodic cells (the sum-rule projection subtracts the mean BEC,
which is the same as removing the mean velocity) and for molecules (their kernel charges are
shifted to a neutral mean, ``sum_i q'_i v_i = sum_i q_i (v_i - mean v)``):

- monopole columns b (kernel charges ``q_i = sum_b w_b k_ib^zeta``, ``k_ib = x_i . x_b``):
  ``sum_i k_ib^zeta w_i`` plus, for molecules (and periodic cells holding one finite
  cluster), ``sum_i qdot_ib (r_i - R_mean)`` with r the unwrapped positions, or for periodic
  cells the charge-transfer term ``sum_p (r_i - r_j^image)_a dq_i/dd_p . w_j``, the tangent
  along the pair-weighted directions ``-(d_p)_a w_j`` (three more tangents);
- dipole columns (b, nu): ``sum_i d/dt [k_ib^(zeta-1) V_i^a] . V_b^nu / s**2`` along the
  velocity tangent.

The dM/dt of the atoms of one species (``sum_{j in s} Z_j v_j``) is the same with the
velocities of the other species set to zero (and, periodic, the mean of that masked velocity
removed): the rows of the species sum to the row of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DipoleDerivativeSamplesModel",
    "dipole_derivative_rows",
    "dipole_derivative_uncertainty",
    "full_posterior_samples",
    "posterior_cholesky",
]


# ---------------------------------------------------------------------- the design row
def dipole_derivative_rows(model, positions, numbers, cell, pbc, velocities, *,
                           by_species: bool = True, total_charge: float = 0.0,
                           prepared=None) -> dict:
    """Design rows of dM/dt of one frame of a fitted kernel model.

    Parameters
    ----------
    positions : (N, 3) float64, Å; numbers : (N,) int; cell : (3, 3) Å (rows = lattice
    vectors); pbc : (3,) bool; velocities : (N, 3) float64, Å/fs.
    by_species : one row per species present (sorted atomic numbers), else one for all.
    total_charge : Q, e (enters the baseline part).
    prepared : the structure's descriptor pass
    (:func:`numbec.models.uncertainty.prepare_structure`) when the caller has it already.

    Returns
    -------
    dict
        ``rows`` (G, 3, C) float64 e·Å/fs per unit weight: ``dM/dt = rows.sum(0) @ w +
        baseline.sum(0)``; ``baseline`` (G, 3) e·Å/fs; ``species`` (G,) int64 (atomic
        numbers; ``[-1]`` without ``by_species``). G = number of species (or 1).
    """
    from numbec.models.uncertainty import prepare_structure

    if prepared is None:
        prepared = prepare_structure(model, positions, numbers, cell, pbc)
    velocities = _checked_velocities(velocities, prepared.numbers.size)
    out = _frame_rows(model, _one_frame(prepared), velocities[None], by_species, total_charge)
    return {"rows": out["rows"][0], "baseline": out["baseline"][0], "species": out["species"]}


def dipole_derivative_rows_frames(model, positions, numbers, cells, pbc, velocities, *,
                                  by_species: bool = True, total_charge: float = 0.0) -> dict:
    """:func:`dipole_derivative_rows` of F frames of the same atoms in one pass: the frames
    are stacked into one structure whose pairs never join two frames
    (:func:`numbec.descriptors.neighbors.neighbor_list_frames`, as
    ``predict_frames`` batches small frames), so that the tangents of all frames are the same
    G (+ 3 G) directions and every product runs once per batch. Equal to the frame-by-frame
    rows to rounding.

    positions : (F, N, 3) float64, Å; numbers : (N,) int; cells : (F, 3, 3) Å or None;
    pbc : (3,) bool, shared; velocities : (F, N, 3) float64, Å/fs.
    Returns ``rows`` (F, G, 3, C), ``baseline`` (F, G, 3), ``species`` (G,).
    """
    positions = np.asarray(positions, dtype=np.float64)
    velocities = np.asarray(velocities, dtype=np.float64)
    frames = _prepare_frames(model, positions, numbers, cells, pbc)
    if velocities.shape != positions.shape or not np.isfinite(velocities).all():
        raise ValueError(f"velocities must be finite with shape {positions.shape}, got "
                         f"{velocities.shape}")
    return _frame_rows(model, frames, velocities, by_species, total_charge)


def _checked_velocities(velocities, n_atoms: int) -> np.ndarray:
    """(N, 3) float64 velocities of one frame, Å/fs; ValueError unless finite and (N, 3)."""
    velocities = np.asarray(velocities, dtype=np.float64)
    if velocities.shape != (n_atoms, 3) or not np.isfinite(velocities).all():
        raise ValueError(f"velocities must be finite with shape ({n_atoms}, 3), got "
                         f"{velocities.shape}")
    return velocities


def _one_frame(prepared) -> _Frames:
    """The :class:`_Frames` of one structure's descriptor pass
    (:func:`numbec.models.uncertainty.prepare_structure`)."""
    unwrapped = prepared.positions if prepared.unwrapped is None else prepared.unwrapped
    return _Frames(prepared.numbers, 1, prepared.desc, prepared.vdesc, prepared.unit,
                   prepared.norms, prepared.species_kernels, np.array([prepared.periodic]),
                   unwrapped[None])


@dataclass
class _Frames:
    """Descriptor pass of F frames of the same N atoms stacked into one structure (atom a of
    frame f is stacked atom f N + a): numbers (N,) int64; desc, vdesc, unit (F N, D), norms
    (F N,), species_kernels as :class:`numbec.models.uncertainty.PreparedStructure`, of the
    stacked atoms taken in the order ``order`` (F N,) int64 (None: stacked order), whose
    atoms of one species are the same atoms of every frame, frame by frame; periodic (F,)
    bool (sum-rule projection); unwrapped (F, N, 3) Å (positions of the molecular frames,
    stacked order)."""

    numbers: np.ndarray
    n_frames: int
    desc: object
    vdesc: object
    unit: np.ndarray
    norms: np.ndarray
    species_kernels: list
    periodic: np.ndarray
    unwrapped: np.ndarray
    order: np.ndarray | None = None


def _prepare_frames(model, positions, numbers, cells, pbc, checked: bool = False) -> _Frames:
    """The batched descriptor pass of ``predict_frames`` (the molecule/cell decision frame by
    frame as there), its atoms species by species as there, so that every species block is
    a contiguous view. ``checked``: the inputs were checked by ``predict_frames`` (whose
    ``batch_pass`` this is), else they are checked here."""
    from numbec.models import kernels
    from numbec.models._kernel_model import _species_major_order, batch_descriptors

    numbers = np.asarray(numbers, dtype=np.int64)
    if not checked:
        model._check_fitted()
        if positions.ndim != 3 or positions.shape[1:] != (numbers.size, 3):
            raise ValueError(f"positions must have shape (F, {numbers.size}, 3) to match "
                             f"numbers, got {positions.shape}")
        model.check_inputs(positions.reshape(-1, 3), np.tile(numbers, positions.shape[0]))
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    f = positions.shape[0]
    cells = None if cells is None else np.asarray(cells, dtype=np.float64)
    order = _species_major_order(numbers, f)
    desc, vdesc, stacked, periodic, unwrapped = batch_descriptors(model, positions, numbers,
                                                                  cells, pbc, order)
    unit, norms = kernels.normalize(desc.values, "predict", allow_isolated=True)
    return _Frames(numbers, f, desc, vdesc, unit, norms, model._species_kernels(stacked, unit),
                   periodic, unwrapped, order)


#: Atoms of a species per frame from which batched rows take the dipole columns frame by
#: frame (:func:`numbec.models.forward_mode_numba.batched_dipole_columns`, ``3 mz Dv (2 nr
#: + 3)`` multiply-adds per direction) rather than as products over the batch (``9 nr mz Dv``
#: per direction and for V): measured crossover between 2 and 4 atoms (xTB water clusters).
_PER_FRAME_PRODUCTS_FROM = 3


@dataclass
class _RowInputs:
    """What the rows of :func:`_frame_rows` need besides the descriptor pass: species (G,)
    int64 (``[-1]`` for the frame as a whole); ws (G, F N, 3) Å/fs, the masked velocities
    minus their frame means, and rel (F N, 3) Å, the unwrapped positions minus their frame
    means, both in the order of the descriptor pass; baseline (F, G, 3) e·Å/fs; directions
    (P, T, 3) float64 C-contiguous, the pair directions of the tangents (G velocity
    directions where ``velocity``, then 3 G charge-transfer ones where ``charge_transfer``),
    the first charge-transfer one at index ``first_ct``."""

    species: np.ndarray
    ws: np.ndarray
    rel: np.ndarray
    baseline: np.ndarray
    directions: np.ndarray
    velocity: bool
    charge_transfer: bool
    first_ct: int


def _row_inputs(model, frames: _Frames, velocities, by_species, total_charge) -> _RowInputs:
    """The :class:`_RowInputs` of F frames from their velocities (F, N, 3) Å/fs: known
    before the plain prediction, so that its back-propagation can compute the tangents
    along ``directions`` in its own pass over the pairs
    (:meth:`numbec.descriptors.expansion.Expansion.plan_tangents`)."""
    from numbec.descriptors.tangent import pair_directions
    from numbec.models.base import total_charge_value

    numbers, f = frames.numbers, frames.n_frames
    n = numbers.size
    periodic = frames.periodic
    species = np.unique(numbers) if by_species else np.array([-1])
    g = species.size
    # w = masked velocity minus its mean over the frame's atoms (module docstring), (G, F N, 3)
    # in the order of the descriptor pass
    ws = np.empty((g, f, n, 3))
    mean = np.empty((g, f, 1, 3))
    for k, z in enumerate(species):
        if by_species:
            ws[k] = np.where((numbers == z)[None, :, None], velocities, 0.0)
        else:
            ws[k] = velocities
    np.mean(ws, axis=2, keepdims=True, out=mean)
    baseline = np.einsum("n,gfna->fga", model._baseline(numbers)
                         + total_charge_value(total_charge) / n, ws)
    ws -= mean
    ws = ws.reshape(g, f * n, 3)
    rel = frames.unwrapped - frames.unwrapped.mean(axis=1, keepdims=True)
    rel = rel.reshape(f * n, 3)
    if frames.order is not None:
        ws, rel = ws[:, frames.order], rel[frames.order]
    # G velocity tangents, then for periodic frames 3 G charge-transfer tangents. The velocity
    # tangents feed the dipole columns and the molecules' charge term only: a monopole model
    # on periodic frames skips them (a quarter of its tangent work)
    charge_transfer = bool(model._monopole and periodic.any())
    velocity = bool(model._dipole or not periodic.all())
    directions = pair_directions(frames.desc.expansion, ws, charge_transfer)
    if not velocity:
        directions = np.ascontiguousarray(directions[:, g:])
    return _RowInputs(species, ws, rel, baseline, directions, velocity, charge_transfer,
                      g if velocity else 0)


def _frame_rows(model, frames: _Frames, velocities, by_species, total_charge,
                inputs: _RowInputs | None = None) -> dict:
    """The rows of :func:`dipole_derivative_rows_frames` from a prepared pass; velocities
    (F, N, 3) Å/fs; ``inputs``: their :func:`_row_inputs`, if made already."""
    from numbec.descriptors.tangent import descriptor_tangents
    from numbec.models import kernels

    if inputs is None:
        inputs = _row_inputs(model, frames, velocities, by_species, total_charge)
    f = frames.n_frames
    mono, dip = model._monopole, model._dipole
    vdesc, unit, norms = frames.vdesc, frames.unit, frames.norms
    periodic = frames.periodic
    species, ws, rel, baseline = inputs.species, inputs.ws, inputs.rel, inputs.baseline
    g = species.size
    charge_transfer, first_ct = inputs.charge_transfer, inputs.first_ct
    directions = inputs.directions
    ex = frames.desc.expansion
    xdot, vdot = descriptor_tangents(ex, directions, vector=g if dip else 0)
    # kernel tangents kdot_ib = x_b . udot_i with the unit-descriptor tangent
    # udot = (Xdot - x (x . Xdot)) / |X| (zero for isolated atoms), contracted without
    # forming udot: (Xdot_i . x_b - (x_i . Xdot_i) cos_ib) / |X_i|
    along = np.einsum("tnd,nd->tn", xdot, unit)                       # (T, F N)
    zeta = model.zeta
    rows = np.zeros((f, g, 3, model.n_columns))
    molecular = (~periodic).astype(np.float64)[:, None, None, None]
    for sel, cols, cos in frames.species_kernels:
        nt, mz = cos.shape                                            # nt = F nr
        nr = nt // f
        mono_cols, dip_cols = _column_views(rows, model, cols, mz)
        inv = 1.0 / norms[sel][:, None]
        kdot = ((xdot[:, sel].reshape(-1, xdot.shape[-1]) @ model.sparse_unit[cols].T
                 ).reshape(-1, nt, mz) - along[:, sel, None] * cos) * inv  # (T, F nr, mz)
        pow1 = kernels.int_power(cos, zeta - 1)                       # k^(zeta-1)
        if mono:
            dkern = zeta * pow1                                       # d k^zeta / dk
            # sum_i k_ib^zeta w_i per frame: (F, G 3, nr) @ (F, nr, mz)
            wsel = ws[:, sel].reshape(g, f, nr, 3).transpose(1, 0, 3, 2).reshape(f, 3 * g, nr)
            part = (wsel @ (pow1 * cos).reshape(f, nr, mz)).reshape(f, g, 3, mz)
            grad = (kdot * dkern).reshape(-1, f, nr, mz)
            if charge_transfer:  # periodic frames: sum_p (d_p)_a dq_i/dd_p . w_j
                part += ((1.0 - molecular) * grad[first_ct:].reshape(g, 3, f, nr, mz)
                         .sum(axis=3).transpose(2, 0, 1, 3))
            if not periodic.all():  # molecules: sum_i qdot_ib (r_i - R_mean)
                rsel = rel[sel].reshape(f, nr, 3).transpose(0, 2, 1)  # (F, 3, nr)
                part += molecular * (rsel[:, None] @ grad[:g].transpose(1, 0, 2, 3))
            mono_cols[...] = part
        if dip:
            # T^g_b^a = sum_i [k^(zeta-1) Vdot_i^a + (zeta-1) k^(zeta-2) kdot_ib V_i^a], one
            # product per frame over the 2 nr stacked atoms, laid out (mz, 3, Dv) so that row
            # (a, (b, nu)) = T^g_b^a . V_b^nu / s**2 is a product per sparse point
            vals = vdesc.values[sel].reshape(f, nr, -1)
            dpow = ((zeta - 1) * kernels.int_power(cos, zeta - 2) if zeta >= 2
                    else np.zeros_like(cos))
            sv = _sparse_vectors_by_point(model, cols)                # (mz, Dv, 3)
            if nr >= _PER_FRAME_PRODUCTS_FROM:
                # batches of small frames, a few atoms of the species per frame: the per-frame
                # products below in one Numba pass over the frames (no Python loop, no large
                # temporary)
                from numbec.models.forward_mode_numba import batched_dipole_columns

                batched_dipole_columns(
                    pow1.reshape(f, nr, mz), (dpow * kdot[:g]).reshape(g, f, nr, mz),
                    vals.reshape(f, nr, -1), vdot[:, sel].reshape(g, f, nr, -1),
                    _sparse_vectors_by_point(model, cols, layout="nu_first"), dip_cols)
                continue
            if f > 1:
                # one or two atoms of the species per frame: contract with V_b^nu first, as
                # two large products (V once, Vdot per species)
                flat = _sparse_vectors_by_point(model, cols, layout="flat")  # (Dv, mz 3)
                q_v = (vals.reshape(nt * 3, -1) @ flat).reshape(f, nr, 3, mz, 3)
                for k in range(g):
                    q_dot = (vdot[k, sel].reshape(nt * 3, -1) @ flat).reshape(f, nr, 3, mz, 3)
                    dip_cols[:, k] = (
                        np.einsum("fib,fiabn->fabn", pow1.reshape(f, nr, mz), q_dot)
                        + np.einsum("fib,fiabn->fabn", (dpow * kdot[k]).reshape(f, nr, mz), q_v))
                continue
            stacked = np.empty((f, 2 * nr, vals.shape[2]))
            stacked[:, nr:] = vals
            coef = np.empty((f, 2 * nr, mz))
            coef[:, :nr] = pow1.reshape(f, nr, mz)
            for k in range(g):
                stacked[:, :nr] = vdot[k, sel].reshape(f, nr, -1)
                coef[:, nr:] = (dpow * kdot[k]).reshape(f, nr, mz)
                t = (coef.transpose(0, 2, 1) @ stacked).reshape(f, mz, 3, -1)
                dip_cols[:, k] = (t @ sv).transpose(0, 2, 1, 3)       # (F, 3, mz, 3)
    return {"rows": rows, "baseline": baseline, "species": species}


def _column_views(rows, model, cols, mz):
    """Writable views of ``rows`` (F, G, 3, C) at the monopole columns (F, G, 3, mz) and the
    dipole columns (F, G, 3, mz, 3) of the sparse points ``cols`` (None where the model has
    no such part): views, as a species' sparse points are contiguous (sorted by species, a
    slice; model files are checked for it)."""
    m = model.sparse_unit.shape[0]
    first = m if model._monopole else 0
    if not isinstance(cols, slice):
        raise TypeError("the sparse points of a species must be a contiguous slice")
    mono = rows[..., cols] if model._monopole else None
    dip = (rows[..., first + 3 * cols.start:first + 3 * cols.stop].reshape(
        rows.shape[:3] + (mz, 3)) if model._dipole else None)
    return mono, dip


def _sparse_vectors_by_point(model, cols, layout: str = "by_point") -> np.ndarray:
    """(mz, Dv, 3) ``V_b^nu / s`` of the sparse points ``cols`` (contiguous, cached per model
    and vector scale); ``layout="flat"``: the same as (Dv, mz 3), ``"nu_first"``: as
    (mz, 3, Dv)."""
    source = model.sparse_vectors
    cache = model.__dict__.get("_forward_sparse_vectors")
    if cache is None or cache[0] is not source or cache[1] != model.vector_scale:
        cache = (source, model.vector_scale, {})    # a refit replaces the array: rebuilt
        model._forward_sparse_vectors = cache
    where = ((cols.start, cols.stop) if isinstance(cols, slice)
             else np.asarray(cols).tobytes(), layout)
    if where not in cache[2]:
        nu_first = source[cols] / model.vector_scale
        by_point = nu_first.transpose(0, 2, 1)
        cache[2][where] = np.ascontiguousarray(
            {"by_point": by_point, "nu_first": nu_first,
             "flat": by_point.transpose(1, 0, 2).reshape(by_point.shape[1], -1)}[layout])
    return cache[2][where]


# ---------------------------------------------------------------------- the posterior
def posterior_cholesky(model) -> np.ndarray:
    """(C, C) lower factor L with ``L L^T = s_w Sigma`` (s_w = :func:`~numbec.models.
    uncertainty.sample_scale`, Sigma the posterior covariance), the full Cholesky factor; a
    covariance that is only semidefinite (e.g. zero) gets the symmetric root of its
    clipped eigen-decomposition instead. Cached per model, weights and scale."""
    from numbec.models.variance_scales import sample_scale

    scale = sample_scale(model)
    key = (id(model.covariance), scale)
    cached = getattr(model, "_posterior_cholesky_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    cov = scale * np.asarray(model.covariance, dtype=np.float64)
    cov = 0.5 * (cov + cov.T)
    try:
        factor = np.linalg.cholesky(cov)
        lower = True
    except np.linalg.LinAlgError:
        lam, vecs = np.linalg.eigh(cov)
        factor = (vecs * np.sqrt(np.clip(lam, 0.0, None))) @ vecs.T
        lower = False
    model._posterior_cholesky_cache = (key, factor, lower)
    return factor


def _times_posterior_factor(model, rows) -> np.ndarray:
    """(R, C) float64 ``rows L`` of rows (R, C) and the factor L (C, C) of
    :func:`posterior_cholesky`. A Cholesky factor is lower triangular: the triangular product
    reads half of it (a 5 MB factor is read from memory for every frame) and does half the
    multiply-adds."""
    factor = posterior_cholesky(model)
    if not model._posterior_cholesky_cache[2]:
        return rows @ factor
    from scipy.linalg.blas import dtrmm

    # rows L = (L^T rows^T)^T; L^T (C-ordered) is L read as a Fortran upper triangle
    return dtrmm(1.0, factor.T, rows.T, side=0, lower=0).T


def full_posterior_samples(model, n_samples: int, seed=0) -> np.ndarray:
    """(S, C) float64 weight vectors drawn from the recalibrated full posterior
    ``N(w, s_w Sigma)`` (:func:`posterior_cholesky`): ``w + L xi``, xi ~ N(0, I_C). ``seed``:
    int or numpy Generator; the same seed gives the same samples."""
    if int(n_samples) < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    xi = np.random.default_rng(seed).standard_normal((int(n_samples), model.n_columns))
    return model.weights[None, :] + xi @ posterior_cholesky(model).T


def dipole_derivative_uncertainty(model, positions, numbers, cell, pbc, velocities,
                                  weight_samples=None, *, by_species: bool = True,
                                  total_charge: float = 0.0, prepared=None) -> dict:
    """dM/dt of one frame with its exact epistemic standard deviation and posterior samples.

    weight_samples : (S, C) float64 (:func:`full_posterior_samples`), or None.
    by_species : with samples, also the samples of each species' part (one design row per
    species instead of one for the frame: about twice the work for two species).
    Returns ``dipole_derivative`` (3,) e·Å/fs (equal to ``sum_j Z_j v_j`` of the plain
    prediction), ``dipole_derivative_std`` (3,) ``sqrt(s_w diag(a Sigma a^T))`` (weights'
    posterior only), ``species`` (G,) (sorted; ``[-1]`` for the frame as a whole); with
    samples ``dipole_derivative_samples`` (S, 3), and with ``by_species``
    ``dipole_derivative_by_species_samples`` (S, G, 3).
    """
    by_species = bool(by_species) and weight_samples is not None
    parts = dipole_derivative_rows(model, positions, numbers, cell, pbc, velocities,
                                   by_species=by_species, total_charge=total_charge,
                                   prepared=prepared)
    rows, base = parts["rows"], parts["baseline"]
    a = rows.sum(axis=0)
    out = {"dipole_derivative": a @ model.weights + base.sum(axis=0),
           "dipole_derivative_std": np.sqrt(np.sum(_times_posterior_factor(model, a) ** 2,
                                                   axis=1)),
           "species": parts["species"]}
    if weight_samples is not None:
        per = _frames_samples({"rows": rows[None], "baseline": base[None]}, weight_samples)[0]
        if by_species:
            out["dipole_derivative_by_species_samples"] = per
        out["dipole_derivative_samples"] = per.sum(axis=1)
    return out


def _frames_std(model, rows) -> np.ndarray:
    """(F, 3) e·Å/fs ``sqrt(s_w diag(a Sigma a^T))`` of the rows (F, G, 3, C) of F frames
    (``a`` the sum over G), one product with the posterior factor for all frames."""
    a = rows.sum(axis=1)
    return np.sqrt(np.sum(_times_posterior_factor(model, a.reshape(-1, a.shape[-1])) ** 2,
                          axis=1)).reshape(a.shape[:2])


def _frames_samples(parts, weight_samples) -> np.ndarray:
    """(F, S, G, 3) e·Å/fs samples ``rows W^T + baseline`` of the rows of F frames
    (:func:`dipole_derivative_rows_frames`) for weight samples W (S, C), one product."""
    rows = parts["rows"]
    f, g = rows.shape[:2]
    per = (rows.reshape(-1, rows.shape[-1]) @ weight_samples.T).reshape(f, g, 3, -1)
    return per.transpose(0, 3, 1, 2) + parts["baseline"][:, None]


# ---------------------------------------------------------------------- for numbec.predict
class DipoleDerivativeSamplesModel:
    """A fitted kernel model (or a :class:`~numbec.models.uncertainty.StreamedUncertaintyModel`
    around one) that also gives the forward-mode dM/dt uncertainty of each frame, for
    :func:`numbec.predict`.

    ``predict_arrays_with_velocities`` returns the wrapped model's outputs and
    ``dipole_derivative_std`` (3,) e·Å/fs; with ``n_samples`` S > 0 also
    ``dipole_derivative_samples`` (S, 3) and, unless ``species_samples`` is False,
    ``dipole_derivative_by_species_samples`` (S, G, 3), the weight samples drawn once
    (``seed``) and the same for every frame. The per-species samples need one design row
    per species (G velocity tangents, and 3 G charge-transfer tangents for periodic cells,
    instead of 1 and 3): without them the samples cost about what the std alone costs
    (docs/streaming.md). The saved state's metadata gains ``forward_mode_samples``
    (samples, seed, and ``species_samples: False`` when off, so that stores of the two
    settings never resume each other).
    """

    precisions = ("float64",)
    batched_frames = False
    velocity_outputs = ("dipole_derivative_std", "dipole_derivative_samples",
                        "dipole_derivative_by_species_samples")

    def __init__(self, model, n_samples: int = 0, seed: int = 0,
                 species_samples: bool = True):
        kernel = getattr(model, "model", model)
        if not hasattr(kernel, "covariance"):
            raise TypeError(f"{type(kernel).__name__} has no posterior covariance; the dM/dt "
                            "uncertainty needs a fitted kernel model")
        self.inner, self.kernel = model, kernel
        self.n_samples, self.seed = int(n_samples), int(seed)
        self.species_samples = bool(species_samples)
        self.weight_samples = (full_posterior_samples(kernel, self.n_samples, self.seed)
                               if self.n_samples else None)

    def __getattr__(self, name):  # species, cutoff, concurrent_frames, ...
        if name in ("inner", "kernel", "predict_frames", "predict"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def class_name(self) -> str:
        return getattr(self.inner, "class_name", type(self.inner).__name__)

    @property
    def saved_model(self):
        """The model as saved in its file, under every wrapper (its state hash is the
        prediction's ``model_sha256``)."""
        return getattr(self.inner, "saved_model", self.inner)

    @property
    def outputs(self) -> tuple:
        extra = ("dipole_derivative_std",) + (
            ("dipole_derivative_samples",) if self.n_samples else ()) + (
            ("dipole_derivative_by_species_samples",) if self._by_species else ())
        return tuple(k for k in self.inner.outputs if k != "bec_samples") + extra

    @property
    def _by_species(self) -> bool:
        return bool(self.n_samples) and self.species_samples

    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False, **kwargs):
        out = self.inner.predict_arrays(positions, numbers, cell, pbc, uncertainty, **kwargs)
        out.pop("bec_samples", None)
        return out

    def predict_arrays_with_velocities(self, positions, numbers, cell, pbc, velocities,
                                       uncertainty=False, *, precision="float64",
                                       total_charge=0.0, atom_std=False) -> dict:
        if precision != "float64":
            raise ValueError("the dM/dt uncertainty computes in float64 only")
        from numbec.models import uncertainty as unc

        kernel = self.kernel
        prepared = unc.prepare_structure(kernel, positions, numbers, cell, pbc)
        inputs = None
        if isinstance(self.inner, unc.StreamedUncertaintyModel):  # low-rank bec_std
            out = unc.predict_uncertainty(kernel, positions, numbers, cell, pbc,
                                          factor=self.inner.factor, total_charge=total_charge,
                                          prepared=prepared)
            for key in ("frame_std", "bec_directions") + (() if uncertainty else ("bec_std",)):
                out.pop(key)
        elif uncertainty:  # the exact bec_std from the design rows
            out = self.predict_arrays(positions, numbers, cell, pbc, True,
                                      total_charge=total_charge)
        else:  # one descriptor pass for the BECs and the rows, and one pass over the pairs
            # for the back-propagation and the rows' tangents
            velocities = _checked_velocities(velocities, prepared.numbers.size)
            frames = _one_frame(prepared)
            inputs = _row_inputs(kernel, frames, velocities[None], self._by_species,
                                 total_charge)
            prepared.desc.expansion.plan_tangents(inputs.directions)
            out = unc.plain_outputs(kernel, prepared, total_charge)
        if atom_std:  # per-atom local-output stds (numbec.models.atom_std)
            from numbec.models.atom_std import prepared_output_std

            out.update(prepared_output_std(kernel, prepared))
        if inputs is None:
            out.update(dipole_derivative_uncertainty(
                kernel, positions, numbers, cell, pbc, velocities, self.weight_samples,
                by_species=self.species_samples, total_charge=total_charge, prepared=prepared))
            out.pop("dipole_derivative")
            out.pop("species")
        else:
            parts = _frame_rows(kernel, frames, velocities[None], self._by_species,
                                total_charge, inputs)
            out.update({k: v[0] for k, v in self._row_outputs(parts).items()})
        return out

    def predict_frames_with_velocities(self, positions, numbers, cells, pbc, velocities, *,
                                       precision="float64", total_charge=0.0,
                                       atom_std=False) -> dict:
        """:meth:`predict_arrays_with_velocities` (without ``uncertainty``) of F frames of the
        same atoms in batches, as ``predict_frames`` does for small frames: the plain outputs
        from the kernel model's ``predict_frames`` and the rows of all frames of a batch in
        one pass (:func:`_frame_rows`), both from the batch's one descriptor pass
        (``predict_frames(..., batch_pass=)``). positions, velocities (F, N, 3); cells
        (F, 3, 3) or None. Every output has a leading frame axis; the numbers equal those
        frame by frame to rounding."""
        from numbec.models import uncertainty as unc

        if precision != "float64":
            raise ValueError("the dM/dt uncertainty computes in float64 only")
        if isinstance(self.inner, unc.StreamedUncertaintyModel):
            raise TypeError("the low-rank bec_std runs frame by frame: use "
                            "predict_arrays_with_velocities")
        positions = np.asarray(positions, dtype=np.float64)
        velocities = np.asarray(velocities, dtype=np.float64)
        if velocities.shape != positions.shape or not np.isfinite(velocities).all():
            raise ValueError(f"velocities must be finite with shape {positions.shape}, got "
                             f"{velocities.shape}")
        kernel, by_species = self.kernel, self._by_species
        batches, done = [], [0]

        def batch_pass(batch_positions, batch_cells):
            """The batch's descriptor pass, for its plain prediction and its rows."""
            frames = _prepare_frames(kernel, batch_positions, numbers, batch_cells, pbc,
                                     checked=True)
            start = done[0]
            done[0] += frames.n_frames
            batches.append(self._row_outputs(_frame_rows(
                kernel, frames, velocities[start:done[0]], by_species, total_charge)))
            return frames

        out = kernel.predict_frames(positions, numbers, cells, pbc, total_charge=total_charge,
                                    batch_pass=batch_pass, atom_std=atom_std)
        for key in batches[0]:
            out[key] = np.concatenate([batch[key] for batch in batches])
        return out

    def _row_outputs(self, parts) -> dict:
        """The velocity outputs of F frames from their rows (:func:`_frame_rows`):
        ``dipole_derivative_std`` (F, 3), and with samples ``dipole_derivative_samples``
        (F, S, 3) and, per species, ``dipole_derivative_by_species_samples`` (F, S, G, 3)."""
        out = {"dipole_derivative_std": _frames_std(self.kernel, parts["rows"])}
        if self.weight_samples is not None:
            per = _frames_samples(parts, self.weight_samples)
            if self._by_species:
                out["dipole_derivative_by_species_samples"] = per
            out["dipole_derivative_samples"] = per.sum(axis=2)
        return out

    def state(self):
        metadata, arrays = self.inner.state()
        settings = {"samples": self.n_samples, "seed": self.seed}
        if not self._by_species and self.n_samples:  # absent: the default, as before
            settings["species_samples"] = False
        metadata = dict(metadata, forward_mode_samples=settings)
        return metadata, arrays

    _state = state

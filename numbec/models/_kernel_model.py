"""Shared machinery of the kernel BEC models: monopole, dipole (lambda = 1) and combined.

The three models differ only in which terms of the cell dipole they carry (docs/method.md,
sections Monopole model to Neutrality and the acoustic sum rule)::

    P = sum_i q0'_i r_i  +  [monopole]  sum_i q'_i r_i  +  [dipole]  sum_i mu_i

with, for atom i of species J(i) and the sparse reference environments b of the same species,

``q_i = sum_b w_b K(X_i, X_b)``, ``K = (x_i . x_b) ** zeta`` on unit-normalised scalar descriptors
    (:mod:`numbec.models.kernels`); the charges are made neutral, ``q'_i = q_i - Q/N``.
``mu_i = sum_b sum_nu K_{mu nu}(i, b) w_{b nu}``, ``K_{mu nu}(i, b) = (V_i^mu . V_b^nu) / s**2
    * (x_i . x_b) ** (zeta - 1)`` (V the lambda = 1 vector descriptor, s a fixed scale: the RMS
    Frobenius norm of the training vector descriptors).
``q0'_i = q0_J(i) - mean over the structure``: per-species baseline charges.

Neutrality and BECs (the choice documented in docs/models.md). Q is the total charge of the
structure (0 unless given; ``atoms.info["charge"]`` or ``total_charge=``), ``Q_raw = sum_i q_i``
the sum of the kernel charges:

- molecules (no periodic direction, or a periodic cell in which no pair of atoms within the
  cutoff involves a periodic image, so that the descriptors are exactly those of the isolated
  structure): the charges are shifted to sum to Q, ``q'_i = q_i - (Q_raw - Q)/N``, which is
  exact for a finite system, and the BECs are the derivative of the model's own dipole:
  ``Z[j] = q'_j I + sum_i d_ij (x) dq_i/dr_j + (r_j - R_mean) (x) dQ_raw/dr_j`` (+ the
  dipole-model term ``sum_i dmu_i/dr_j``), where ``R_mean`` is the plain (unweighted) mean
  position and ``dQ_raw/dr_j`` comes from the same adjoint pair gradients as the
  charge-transfer term, scattered with the centre terms (``Expansion.scatter_with_self``).
  ``sum_j Z[j] = Q I`` holds exactly.
- periodic cells: ``sum_i q'_i r_i`` is not a function of the periodic positions, so the
  non-local last term is dropped, leaving the local formula ``Z_loc[j] = q'_j I
  + sum_i d_ij (x) dq_i/dr_j`` (+ dipole term) with minimum-image-free pair vectors d_ij.
  Dropping the term alone would leave ``sum_j Z_loc[j] = Q I - dQ_raw/d(strain)``, not the sum
  rule. numbec therefore also projects onto the sum rule: every atom gets
  ``Z[j] = Z_loc[j] - (1/N) (sum_k Z_loc[k] - Q I) = Z_loc[j] + (1/N) dQ_raw/d(strain)``
  (:func:`numbec.conventions.asr_project`). The violation ``sum_k Z_loc[k] - Q I`` is returned
  per structure as ``asr_violation`` (3, 3) e. Against the exact derivative of the same
  charges (the molecular formula, where it exists) atom j is off by ``T[j] - mean_k T[k]``,
  ``T[j] = (r_j - R_mean) (x) dQ_raw/dr_j``: the projection replaces the non-local term by
  its mean over the atoms (docs/method.md#neutrality-and-the-acoustic-sum-rule).
- an isolated atom (no neighbour within the cutoff) has a zero descriptor and no kernel
  charge, dipole or charge transfer: it keeps its baseline charge q0 (shifted with the others).

Training is linear in the weights: one row per BEC component (atom, i, j) of every frame, built
from the pair Jacobians of the descriptors with BLAS products and sparse scatter matrices,
accumulated in :class:`numbec.models.regression.NormalEquations` frame by frame.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings

import numpy as np
import scipy.linalg
import scipy.sparse

from numbec import parallel
from numbec._heap import keep_freed_memory
from numbec.conventions import acoustic_sum, as_bec_array, asr_project, first_non_finite
from numbec.descriptors import (
    DescriptorSettings,
    compute_descriptors,
    compute_vector_descriptors,
)
from numbec.descriptors.expansion import expand
from numbec.descriptors.neighbors import NeighborList, neighbor_list_frames
from numbec.descriptors.scalar import descriptors_from_expansion
from numbec.descriptors.scalar import jacobian_blocks as scalar_jacobian_blocks
from numbec.descriptors.vector import jacobian_blocks as vector_jacobian_blocks
from numbec.descriptors.vector import vector_descriptors_from_expansion
from numbec.models import kernels, regression, sparsify
from numbec.models import kernels_numba as _kn
from numbec.models.base import (
    BECModel,
    ModelFileError,
    Prediction,
    UnknownSpeciesError,
    charge_arguments,
    checked_array,
    total_charge_value,
)
from numbec.models.representation import reference_residuals, residual_summary

__all__ = ["KernelBECModel", "REGRESSIONS", "DIPOLE_ROW_WEIGHT", "NEUTRALITY_ROW_WEIGHT",
           "PARAMETERS_DOC"]

#: Regression methods accepted by the models.
REGRESSIONS = ("bayesian", "ridge")
#: Weight of a molecular dipole row (e·Å) relative to a BEC row (e) in the least squares.
DIPOLE_ROW_WEIGHT = 1.0
#: Weight of a per-frame neutrality row ``sum_i (q_i - q0_J(i)) = 0`` (kernel charges, e) of
#: periodic frames, relative to a BEC row; 0 = no such row (default). The ASR-projected targets
#: do not see the total charge; with a positive weight the raw charges are fitted neutral, so
#: the ASR projection removes almost nothing. It made the quartz test RMSE 3 % worse
#: (measured 2026-11-25 at numbec commit fd23a4b; docs/models.md), hence off by default.
NEUTRALITY_ROW_WEIGHT = 0.0
#: Pairs per batch when the dipole-model design is assembled (bounds the temporary memory to
#: about ``PAIR_BATCH * 27 * n_sparse * 8`` bytes).
PAIR_BATCH = 256
#: Largest ``|sum_a Z_ref[a] - Q I|`` component (e) of a training frame accepted without a
#: warning: more than this looks like a charged structure without ``info["charge"]``.
ASR_WARNING = 0.5

_DIAG = (np.arange(3), np.arange(3))


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return f"{chemical_symbols[z]} (Z={z})"


def _symbol_key(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z]


def _species_number(key) -> int:
    if isinstance(key, str) and not key.isdigit():
        from ase.data import atomic_numbers

        if key not in atomic_numbers:
            raise ValueError(f"n_sparse: unknown element symbol {key!r}")
        return int(atomic_numbers[key])
    return int(key)


def _check_covariance(cov: np.ndarray) -> None:
    """ModelFileError unless ``cov`` is symmetric and positive semi-definite to rounding.

    The predictive variances clip negative values to zero, so a covariance that is not a
    covariance would give silently wrong (e.g. zero) error bars rather than an error.
    """
    scale = float(np.abs(np.diag(cov)).max(initial=0.0))
    # relative 1e-8 is far above the rounding of a fit (1e-16 measured) and far below any
    # change that matters for an error bar
    tol = 1e-8 * scale
    if cov.size and np.abs(cov - cov.T).max() > tol:
        raise ModelFileError("array 'covariance' is not symmetric")
    try:
        # Cholesky of cov + tol I succeeds when no eigenvalue is below -tol: 0.2 s for 2000
        # columns (a 30 MB model), a tenth of the eigenvalues' cost. The floor keeps an
        # all-zero covariance acceptable.
        scipy.linalg.cholesky(cov + max(tol, np.finfo(np.float64).tiny) * np.eye(len(cov)),
                              lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise ModelFileError(
            "array 'covariance' is not positive semi-definite, as a posterior covariance "
            f"must be (smallest diagonal entry {np.diag(cov).min(initial=0.0):.3g})") from None


def _check_positions(positions, where: str) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.float64)
    bad = first_non_finite(positions, 1)
    if bad is not None:
        raise ValueError(f"{where}: position of atom {bad[0]} is NaN or inf")
    return positions


def _where(k: int, atoms) -> str:
    """``"frame 3 (OUTCAR@0)"``: the frame index and, if known, its file."""
    source = atoms.info.get("source") if hasattr(atoms, "info") else None
    return f"frame {k}" + (f" ({source})" if source else "")


@contextlib.contextmanager
def _naming(where: str):
    """Prefix ``where`` to a ValueError raised inside (geometry errors from the neighbour
    search name atoms, not the frame), keeping the exception class."""
    try:
        yield
    except ValueError as exc:
        if str(exc).startswith(where):
            raise
        try:
            named = type(exc)(f"{where}: {exc}")
        except TypeError:  # an exception class with another constructor
            named = ValueError(f"{where}: {exc}")
        raise named from exc


def _has_extreme_atoms(pairs) -> bool:
    """False if every atom with neighbours has one on each side along x and along y: then
    no atom is outermost, so the structure cannot be a finite cluster. O(pairs), vectorised:
    decides condensed phases without the graph search of :func:`_unwrapped_cluster`."""
    counts = np.diff(pairs.offsets)
    starts = pairs.offsets[:-1][counts > 0]
    for axis in (0, 1):
        d = pairs.vectors[:, axis]
        if not ((np.maximum.reduceat(d, starts) <= 0.0).any()
                and (np.minimum.reduceat(d, starts) >= 0.0).any()):
            return False
    return True


def _unwrapped_cluster(pairs, positions, cell) -> np.ndarray | None:
    """Positions of a periodic structure that is one finite cluster, unwrapped; else None.

    The structure is one finite cluster when the pairs within the cutoff connect all atoms and
    lattice offsets ``o_a`` exist with ``o_j - o_i = S`` for every pair (i, j, image S): then
    the positions ``r_a + o_a @ cell`` reproduce every pair without periodic images, and the
    descriptors are exactly those of the isolated cluster, whatever the wrapping. A cell with
    several separate clusters is not one (their mean-charge shift would depend on how each is
    wrapped): it keeps the periodic treatment, with a warning.

    pairs : NeighborList of the structure; positions : (N, 3) Å; cell : (3, 3) Å.
    Returns (N, 3) float64 unwrapped positions (Å), or None.
    """
    if pairs.n_pairs and not _has_extreme_atoms(pairs):
        return None  # the quick answer for condensed phases
    centers, neighbors, shifts = pairs.centers, pairs.neighbors, pairs.shifts
    n = positions.shape[0]
    if np.any(centers == neighbors):  # an atom sees its own image: the cell is not a cluster
        return None
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    graph = scipy.sparse.csr_matrix((np.ones(centers.size), (centers, neighbors)), shape=(n, n))
    n_clusters, labels = connected_components(graph, directed=False)
    offsets = np.zeros((n, 3), dtype=np.int64)
    # the shift of the pair from each atom's BFS parent to it, then offsets down each tree
    for root in np.unique(labels, return_index=True)[1]:
        order, parent = breadth_first_order(graph, int(root), directed=False)
        is_tree_edge = parent[neighbors] == centers
        tree_pair = np.full(n, -1, dtype=np.int64)
        tree_pair[neighbors[is_tree_edge][::-1]] = np.flatnonzero(is_tree_edge)[::-1]
        for atom in order[1:]:
            offsets[atom] = offsets[parent[atom]] + shifts[tree_pair[atom]]
    if not np.array_equal(offsets[neighbors] - offsets[centers], shifts):
        return None  # a chain of pairs runs around the cell: periodic
    if n_clusters > 1:
        warnings.warn(
            f"the periodic cell holds {n_clusters} separate clusters (atoms or molecules) with "
            "no periodic image within the cutoff; their BECs use the periodic sum-rule "
            "projection, not the exact molecular derivative: for gas-phase structures set "
            "pbc=False, or predict each molecule on its own", stacklevel=3)
        return None
    return positions + offsets @ np.asarray(cell, dtype=np.float64)


def _frame_pairs(pairs, frame: int, n_atoms: int) -> NeighborList:
    """The pairs of one frame of a :func:`neighbor_list_frames` list, renumbered from 0."""
    first, last = pairs.offsets[frame * n_atoms], pairs.offsets[(frame + 1) * n_atoms]
    return NeighborList(pairs.offsets[frame * n_atoms:(frame + 1) * n_atoms + 1] - first,
                        pairs.neighbors[first:last] - frame * n_atoms, pairs.shifts[first:last],
                        pairs.vectors[first:last], pairs.distances[first:last], pairs.cutoff)


def batch_descriptors(model, positions, numbers, cells, pbc, order=None):
    """Descriptor pass of F frames of the same N atoms stacked into one structure (atom a of
    frame k is stacked atom ``k N + a``; pairs never join two frames).

    positions (F, N, 3) Å; numbers (N,) int; cells (F, 3, 3) Å or None; pbc (3,) bool;
    ``order`` (F N,) int or None: the stacked atoms are taken in this order (e.g. species
    by species). Returns ``(desc, vdesc, stacked, periodic, unwrapped)``: the scalar
    descriptors (and the vector ones of models with a dipole part, else None) of the
    ordered stacked atoms, their atomic numbers (F N,), and per frame whether it is a
    periodic cell (F,) bool and its positions (F, N, 3) Å, unwrapped for a periodic cell
    holding one finite cluster, which is treated as a molecule (same descriptors; the exact
    molecular derivative then replaces the sum-rule projection)."""
    f, n = positions.shape[:2]
    pairs = neighbor_list_frames(positions, cells, pbc, model.settings.cutoff)
    flat, stacked = positions.reshape(f * n, 3), np.tile(numbers, f)
    if order is not None:
        flat, stacked = flat[order], stacked[order]
    # one expansion for both descriptors; the pairs are renumbered as they are grouped
    ex = expand(flat, stacked, None, pbc, model.settings, 1 if model._dipole else 0,
                pairs=pairs, atom_order=order)
    desc = descriptors_from_expansion(ex)
    vdesc = vector_descriptors_from_expansion(ex) if model._dipole else None
    periodic = np.full(f, bool(pbc.any()))
    unwrapped = positions.copy()
    for k in np.flatnonzero(periodic):
        cluster = _unwrapped_cluster(_frame_pairs(pairs, k, n), positions[k], cells[k])
        if cluster is not None:
            periodic[k] = False
            unwrapped[k] = cluster
    return desc, vdesc, stacked, periodic, unwrapped


def _species_major_order(numbers, n_frames: int) -> np.ndarray:
    """(F * N,) int64 order of the atoms of F stacked frames (frame-major, atom ``a`` of frame
    ``f`` at ``f * N + a``) species by species: all atoms of the lightest species, frame by
    frame, then the next species. New atom ``k`` is stacked atom ``order[k]``."""
    n = numbers.size
    frame_starts = np.arange(n_frames, dtype=np.int64)[:, None] * n
    return np.concatenate([(frame_starts + np.flatnonzero(numbers == z)[None, :]).ravel()
                           for z in np.unique(numbers)])


def _show_progress(progress) -> bool:
    """``progress=None``: on when stderr is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def _as_slice(index: np.ndarray):
    """A slice equal to the sorted, unique integer array ``index`` if it is contiguous, else
    ``index`` itself (a slice indexes numpy arrays without copying)."""
    if index.size and index[-1] - index[0] + 1 == index.size:
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


_FIT_AND_PREDICT = """
    Fitted with :meth:`fit` (frames with reference BECs; ``progress``); predicted with
    :meth:`predict` (one :class:`ase.Atoms`, total charge from ``info["charge"]``) or
    :meth:`predict_arrays` (plain arrays), both returning a
    :class:`numbec.models.base.Prediction` dict; saved with :meth:`save`, its content given
    by :meth:`state`.
"""

#: The constructor parameters, shared by the docstrings of the three public model classes.
PARAMETERS_DOC = """
    Parameters
    ----------
    settings : DescriptorSettings or None
        Descriptor hyperparameters (cutoffs, basis sizes); None: the defaults of
        :class:`numbec.descriptors.DescriptorSettings` for the species of the training frames.
    zeta : int, default 4
        Exponent of the polynomial kernel ``(x_i . x_b) ** zeta`` (>= 1).
    n_sparse : int or dict, default 200
        Sparse reference environments per central species: one number for all species, or
        ``{atomic number or symbol: n}`` with an entry for every training species. A species
        with fewer training environments uses all of them (with a warning).
    sparse_method : {"cur", "fps"}, default "cur"
        CUR leverage scores (deterministic) or farthest-point sampling
        (:mod:`numbec.models.sparsify`).
    regression : {"bayesian", "ridge"}, default "bayesian"
        Evidence maximisation (noise and prior variances from the data, predictive variances)
        or ridge regression with the fixed regulariser ``ridge``.
    ridge : float, default 1e-6
        Ridge regulariser, in units of the normal matrix (e^2); used only with "ridge".
    seed : int or None, default 0
        Seed of the first farthest-point sample (CUR uses no random numbers).

    Raises
    ------
    TypeError
        ``settings`` is not a DescriptorSettings.
    ValueError
        A parameter outside its range, an unknown method or element symbol.
"""


def _incidence(centers, neighbors, n_atoms) -> scipy.sparse.csc_matrix:
    """(N, P) matrix with +1 at (neighbour, p) and -1 at (centre, p): applied to per-pair
    derivatives ``dy_i/dr_j`` it gives total derivatives including the centre (self) term."""
    p = centers.size
    cols = np.concatenate([np.arange(p), np.arange(p)])
    rows = np.concatenate([neighbors, centers])
    vals = np.concatenate([np.ones(p), -np.ones(p)])
    return scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(n_atoms, p))


class KernelBECModel(BECModel):
    """Base class of :class:`MonopoleModel`, :class:`DipoleModel` and :class:`CombinedModel`
    (their docstrings list the parameters, :data:`PARAMETERS_DOC`)."""

    _monopole = True
    _dipole = False
    concurrent_frames = True  # Numba kernels release the GIL, BLAS too
    batched_frames = True  # predict_frames computes a batch of frames in one pass
    #: Factor of the predictive variance learned by cross-validation on the training frames
    #: (:func:`numbec.models.uncertainty.recalibrate`); 1 = the plain Bayesian variance.
    variance_scale = 1.0
    #: Factor of the noise variance sigma_v^2 in the predictive variance when the
    #: recalibration scales it apart (``method="two_part"``); None: ``variance_scale``.
    noise_scale = None
    #: Factor c (e^2) of the frame's mean Nyström residual added to the predictive variance
    #: (``method="residual"`` of the recalibration); 0: no such term.
    residual_scale = 0.0

    def __init__(self, *, settings: DescriptorSettings | None = None, zeta: int = 4,
                 n_sparse: int | dict = 200, sparse_method: str = "cur",
                 regression: str = "bayesian", ridge: float = 1e-6, seed: int | None = 0):
        if settings is not None and not isinstance(settings, DescriptorSettings):
            raise TypeError("settings must be a numbec.descriptors.DescriptorSettings or None")
        self.zeta = kernels.check_zeta(zeta)
        if isinstance(n_sparse, dict):
            n_sparse = {_species_number(k): int(v) for k, v in n_sparse.items()}
            if any(v < 1 for v in n_sparse.values()):
                raise ValueError(f"n_sparse values must be >= 1, got {n_sparse}")
        else:
            if int(n_sparse) != n_sparse or int(n_sparse) < 1:
                raise ValueError(f"n_sparse must be a positive integer or a dict, got {n_sparse}")
            n_sparse = int(n_sparse)
        self.n_sparse = n_sparse
        if sparse_method not in sparsify.SELECTION_METHODS:
            raise ValueError(f"unknown sparse_method {sparse_method!r}; use one of "
                             f"{sparsify.SELECTION_METHODS}")
        self.sparse_method = sparse_method
        if regression not in REGRESSIONS:
            raise ValueError(f"unknown regression {regression!r}; use one of {REGRESSIONS}")
        self.regression = regression
        self.ridge = float(ridge)
        if not self.ridge > 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        self.seed = None if seed is None else int(seed)
        self.settings = settings
        self._given_settings = settings
        self._fitted = False

    # ------------------------------------------------------------------ basic properties
    @property
    def batch_atoms(self) -> int | None:
        """Cap on the atoms per batch of :meth:`predict_frames` (None: only
        :data:`numbec.parallel.BATCH_ATOMS`): models with the dipole kernel carry twice the
        temporaries per atom (:data:`numbec.parallel.VECTOR_BATCH_ATOMS`)."""
        return parallel.VECTOR_BATCH_ATOMS if self._dipole else None

    @property
    def outputs(self) -> tuple[str, ...]:
        out = ["bec", "bec_std", "dipole", "asr_violation"]
        if self._monopole:
            out.append("charges")
        if self._monopole and self._dipole:
            out += ["bec_monopole", "bec_dipole"]
        out += [k for k, part in (("charge_std", self._monopole),
                                  ("local_dipole_std", self._dipole)) if part]
        return tuple(out)

    @property
    def precisions(self) -> tuple[str, ...]:
        return ("float64", "mixed") if self._dipole else ("float64",)

    @property
    def cutoff(self) -> float:
        return 0.0 if self.settings is None else self.settings.cutoff

    @property
    def n_columns(self) -> int:
        m = self.sparse_unit.shape[0]
        return (m if self._monopole else 0) + (3 * m if self._dipole else 0)

    def hyperparameters(self) -> dict:
        n_sparse = self.n_sparse
        if isinstance(n_sparse, dict):
            n_sparse = {str(k): v for k, v in n_sparse.items()}
        return {"zeta": self.zeta, "n_sparse": n_sparse, "sparse_method": self.sparse_method,
                "regression": self.regression, "ridge": self.ridge, "seed": self.seed}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        state = "fitted" if self._fitted else "not fitted"
        return f"{type(self).__name__}({args}) [{state}]"

    def _check_fitted(self):
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(frames) first")

    @property
    def baseline_model(self):
        """Species-mean model of the training BECs (:class:`~numbec.models.SpeciesMeanModel`),
        the baseline :func:`numbec.evaluate` compares with; None for models saved before it
        was stored."""
        means = getattr(self, "training_mean_bec", None)
        if means is None:
            return None
        from numbec.models.baseline import SpeciesMeanModel

        return SpeciesMeanModel(self.species, means)

    def _n_sparse_for(self, z: int) -> int:
        if isinstance(self.n_sparse, dict):
            if z not in self.n_sparse:
                raise ValueError(f"n_sparse has no entry for species {_symbol(z)}; give one "
                                 f"for every training species")
            return self.n_sparse[z]
        return self.n_sparse

    # ------------------------------------------------------------------ environments
    def _environment(self, positions, numbers, cell, pbc, gradients, where):
        """Scalar descriptors and kernel ingredients of one structure.

        Returns ``desc``, ``unit`` (N, D), ``norms`` (N,), ``cos`` (N, M) = x_i . x_b and
        ``mask`` (N, M) bool (centre and sparse point of the same species).
        """
        desc = compute_descriptors(positions, numbers, cell, pbc, self.settings,
                                   gradients=gradients)
        unit, norms = kernels.normalize(desc.values, where, allow_isolated=True)
        cos = unit @ self.sparse_unit.T
        mask = np.asarray(numbers)[:, None] == self.sparse_species[None, :]
        return desc, unit, norms, cos, mask

    def _baseline(self, numbers) -> np.ndarray:
        """Neutral baseline charges q0'_i (N,) of one structure, e."""
        q0 = self.q0[np.searchsorted(self.species, numbers)]
        return q0 - q0.mean()

    # ------------------------------------------------------------------ prediction
    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty: bool = False, *,
                       precision: str = "float64", total_charge: float = 0.0,
                       atom_std: bool = False) -> Prediction:
        """BECs and the other outputs of one structure.

        Parameters
        ----------
        positions : (N, 3) float64, Å
            Cartesian positions; need not be wrapped into the cell.
        numbers : (N,) int
            Atomic numbers.
        cell : (3, 3) float64, Å
            Lattice vectors as rows (ignored along non-periodic directions).
        pbc : (3,) bool
            Periodic directions.
        uncertainty : bool
            Also return ``bec_std = sqrt(s phi^T Sigma phi + s_v sigma_v^2)``, s =
            :attr:`variance_scale`, s_v = :attr:`noise_scale` (s when None;
            :mod:`numbec.models.uncertainty`); the design rows phi
            are built from the descriptor Jacobian (the cost of one training step).
        precision : {"float64", "mixed"}
            ``"mixed"`` (models with the dipole kernel) computes the dipole model's three
            large products in float32: ``V_i . wb_b``, ``u_i = sum_b k_ib wb_b`` and the
            dipole channels' kernel gradients ``sum_b dk_iab x_b``, about 80 % of the
            multiply-adds of a combined-model frame. The scalar kernel ``x_i . x_b``, the
            monopole charges and their gradients, the descriptors and everything else stay
            float64 (float32 there moves the monopole charges by up to 5e-3 e: their weights
            are large and cancel). On quartz, BECs came within 2e-5 e of float64 and the
            charges were identical (measured 2026-11-25 at numbec commit adc116a;
            docs/streaming.md).
        total_charge : float, e
            Total charge Q; the charges sum to Q and the BECs to ``Q I``.
        atom_std : bool
            Also return the exact posterior standard deviations of each atom's local model
            outputs (:mod:`numbec.models.atom_std`): ``charge_std`` (N,) e of the neutral
            charge ``q'_i`` (models with the monopole kernel) and ``local_dipole_std`` (N,)
            e·Å, ``sqrt(tr Cov(mu_i))`` of the local dipole (models with the dipole kernel),
            with the recalibrated covariance ``s_w Sigma``, from the kernel rows of the plain
            prediction. Not the BEC's standard deviation. Always float64.

        Returns
        -------
        Prediction
            ``bec`` (N, 3, 3) e, canonical ``Z[a, i, j] = dP_i/dr_{a,j}``; ``asr_violation``
            (3, 3) e, ``sum_a Z_loc[a] - Q I`` of the local formula before the projection
            (module docstring); ``charges`` (N,) e (models with the monopole kernel);
            ``bec_monopole``, ``bec_dipole`` (N, 3, 3) e (combined model); ``dipole`` (3,)
            e·Å (``pbc`` all False only; of a charged molecule it depends on the origin);
            ``bec_std`` (N, 3, 3) e with ``uncertainty=True``; ``charge_std``,
            ``local_dipole_std`` (N,) with ``atom_std=True``.

        Raises
        ------
        RuntimeError
            The model is not fitted.
        ValueError
            Non-finite positions or total charge, a precision the model does not offer,
            overlapping atoms or a degenerate cell (from the neighbour search).
        UnknownSpeciesError
            A species the model was not trained on.
        """
        self.precision_arguments(precision)  # a clear error for a precision not offered
        self._check_fitted()
        self.check_inputs(positions, numbers)
        positions = np.asarray(positions, dtype=np.float64)
        numbers = np.asarray(numbers, dtype=np.int64)
        cells = None if cell is None else np.asarray(cell, dtype=np.float64)[None]
        frames = self.predict_frames(positions[None], numbers, cells, pbc, precision=precision,
                                     total_charge=total_charge, atom_std=atom_std)
        out = {key: value[0] for key, value in frames.items()}
        if uncertainty:
            n = numbers.size
            pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
            phi, _ = self._design(positions, numbers, cell, pbc, "predict")
            noise = self.variance_scale if self.noise_scale is None else self.noise_scale
            var = noise * self.sigma_v2 + self.variance_scale * regression.predictive_variance(
                phi.reshape(n * 9, -1), self.covariance, self.sigma_v2, include_noise=False)
            if self.residual_scale:  # c r_frame (numbec.models.representation.residual_variance)
                from numbec.models.representation import residual_variance

                var = var + residual_variance(self, positions, numbers, cell, pbc)
            out["bec_std"] = np.sqrt(var).reshape(n, 3, 3)
        return out

    def predict_frames(self, positions, numbers, cells, pbc, *, precision: str = "float64",
                       total_charge: float = 0.0, batch_pass=None,
                       atom_std: bool = False) -> dict:
        """BECs and the other outputs of F frames of the same atoms, computed in batches.

        Frames are stacked into structures of about :data:`numbec.parallel.BATCH_ATOMS` atoms
        (:attr:`batch_atoms` at most)
        whose pairs never join two frames
        (:func:`numbec.descriptors.neighbors.neighbor_list_frames`): the expansion, the kernel
        products and the back-propagation then run once per batch instead of once per frame,
        which is what frames of a few atoms need. Neutrality, the
        dipole, the molecule-in-a-box test and the sum-rule projection are applied frame by
        frame. The numbers are those of :meth:`predict_arrays` frame by frame (the same
        arithmetic in the same order; :meth:`predict_arrays` is this method for one frame).

        Parameters
        ----------
        positions : (F, N, 3) float64, Å
        numbers : (N,) int, atomic numbers, the same in every frame
        cells : (F, 3, 3) float64, Å, rows = lattice vectors, or None for clusters
        pbc : (3,) bool or bool, shared by the frames
        precision, total_charge : as for :meth:`predict_arrays`
        batch_pass : callable ``(positions (B, N, 3), cells (B, 3, 3) or None) -> pass`` or
            None: the descriptor pass of each batch (an object with the attributes of
            :class:`numbec.models.forward_mode._Frames`, atoms species by species) made by the
            caller, who uses it for more than the prediction (the forward-mode rows), instead
            of the batch's own; called with checked inputs, once per batch, before the batch
            is predicted.
        atom_std : as for :meth:`predict_arrays`.

        Returns
        -------
        dict of the arrays of :meth:`predict_arrays` (without ``bec_std``) with a leading
        frame axis: ``bec`` (F, N, 3, 3) e, ``asr_violation`` (F, 3, 3) e, ``charges``
        (F, N) e, ``bec_monopole``/``bec_dipole`` (F, N, 3, 3) e, ``dipole`` (F, 3) e·Å;
        with ``atom_std`` ``charge_std`` (F, N) e and/or ``local_dipole_std`` (F, N) e·Å.

        Raises
        ------
        ValueError
            Non-finite positions or overlapping atoms (naming the frame and atom), a bad
            shape, a precision the model does not offer.
        UnknownSpeciesError
            A species the model was not trained on.
        """
        self.precision_arguments(precision)
        self._check_fitted()
        keep_freed_memory()
        total_charge = total_charge_value(total_charge)
        positions = np.asarray(positions, dtype=np.float64)
        numbers = np.asarray(numbers, dtype=np.int64)
        if positions.ndim != 3 or positions.shape[1:] != (numbers.size, 3):
            raise ValueError(f"positions must have shape (F, {numbers.size}, 3) to match "
                             f"numbers, got {positions.shape}")
        self.check_inputs(np.zeros((0, 3)), numbers)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        n_frames = positions.shape[0]
        step = parallel.batch_frames(numbers.size, self.batch_atoms)
        parts = []
        for start in range(0, n_frames, step):
            stop = min(start + step, n_frames)
            batch_cells = None if cells is None else cells[start:stop]
            try:
                shared = (None if batch_pass is None
                          else batch_pass(positions[start:stop], batch_cells))
                parts.append(self._predict_batch(positions[start:stop], numbers, batch_cells,
                                                 pbc, precision, total_charge, shared,
                                                 atom_std))
            except ValueError as err:
                if n_frames == 1 or not str(err).startswith("frame "):
                    raise
                # name the frame of the whole call, not of the batch
                f, rest = str(err)[len("frame "):].split(":", 1)
                raise ValueError(f"frame {start + int(f)}:{rest}") from None
        if len(parts) == 1:
            return parts[0]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def _predict_batch(self, positions, numbers, cells, pbc, precision, total_charge,
                       shared=None, atom_std=False) -> dict:
        """:meth:`predict_frames` of one batch (checked inputs).

        The descriptors, kernel products and back-propagation see the atoms of the batch
        species by species (:func:`_species_major_order`), so that every species block of the
        kernel products is a contiguous view instead of a gathered copy; the per-atom results
        are put back into frame order before the per-frame steps. ``shared``: the batch's
        descriptor pass made by the caller (``batch_pass`` of :meth:`predict_frames`), the
        same arrays as the one made here."""
        f, n = positions.shape[:2]
        if shared is None:
            order = _species_major_order(numbers, f)
            desc, vdesc, stacked, periodic, unwrapped = batch_descriptors(
                self, positions, numbers, cells, pbc, order)
            unit, norms = kernels.normalize(desc.values, "predict", allow_isolated=True)
            species_kernels = self._species_kernels(stacked, unit)
        else:
            order, desc, vdesc, periodic, unwrapped = (shared.order, shared.desc, shared.vdesc,
                                                       shared.periodic, shared.unwrapped)
            unit, norms, species_kernels = shared.unit, shared.norms, shared.species_kernels
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        ex = desc.expansion
        q0n = self._baseline(numbers)
        if total_charge:
            q0n = q0n + total_charge / n
        q0n = np.tile(q0n, f)
        z_mono = np.zeros((f * n, 3, 3))
        z_mono[:, _DIAG[0], _DIAG[1]] = q0n[:, None]
        dipole = np.einsum("fi,fia->fa", q0n.reshape(f, n), positions)
        charges = q0n.copy()
        # every contraction adds its coefficient adjoints to one set of channels (monopole: 0,
        # dipole model: the next three), back-propagated through the pairs once
        dipole_channel = 1 if self._monopole else 0
        n_channels = dipole_channel + (3 if self._dipole else 0)
        a2, a3 = ex.adjoint_arrays(n_channels)
        q, scalar_grad, u = self._kernel_terms(species_kernels, unit, norms, vdesc, n_channels,
                                               precision == "mixed")
        if self._monopole:
            q = q[inverse].reshape(f, n)
            qn = (q - q.mean(axis=1, keepdims=True)).reshape(f * n)
            z_mono[:, _DIAG[0], _DIAG[1]] += qn[:, None]
            charges += qn
            dipole = dipole + np.einsum("fi,fia->fa", qn.reshape(f, n), positions)
        if self._dipole:
            # mu_i = V_i . u_i; the vector-descriptor part of sum_i dmu_i/dr_j enters the last
            # three channels through the adjoint of V with weights u
            if not pbc.any():
                mu = np.einsum("iak,ik->ia", vdesc.values, u)[inverse]
                dipole = dipole + mu.reshape(f, n, 3).sum(axis=1)
            vdesc.add_adjoint(u[:, None, :], a2, a3, dipole_channel)
        desc.add_adjoint(scalar_grad, a2, a3, 0)
        pair_grad = ex.backprop(a2, a3)
        z_mono = z_mono.reshape(f, n, 3, 3)
        if self._monopole:
            z_mono += ex.scatter_monopole(pair_grad[:, :1])[inverse, 0].reshape(f, n, 3, 3)
            molecular = np.flatnonzero(~periodic)
            if molecular.size:
                dq = ex.scatter_with_self(pair_grad[:, :1])[inverse, 0].reshape(f, n, 3)[
                    molecular]
                centred = unwrapped[molecular] - unwrapped[molecular].mean(axis=1, keepdims=True)
                z_mono[molecular] += centred[..., :, None] * dq[..., None, :]

        def projected(z, charge=0.0):
            """Sum-rule projection of the periodic frames of z (F, N, 3, 3)."""
            if not periodic.any():
                return z
            z = z.copy()
            z[periodic] = asr_project(z[periodic], charge)
            return z

        bec = z_mono
        violation = acoustic_sum(z_mono)
        out = {}
        if self._dipole:
            z_dip = ex.scatter_with_self(pair_grad[:, dipole_channel:])[inverse].reshape(
                f, n, 3, 3)
            violation = violation + acoustic_sum(z_dip)
            z_dip = projected(z_dip)
            bec = z_mono + z_dip
            if self._monopole:
                out["bec_monopole"] = projected(z_mono, total_charge)
                out["bec_dipole"] = z_dip
        out["bec"] = projected(bec, total_charge)
        out["asr_violation"] = violation - total_charge * np.eye(3)
        if self._monopole:
            out["charges"] = charges.reshape(f, n)
        if not pbc.any():
            out["dipole"] = dipole
        if atom_std:
            from numbec.models.atom_std import local_output_std

            out.update(local_output_std(self, species_kernels,
                                        None if vdesc is None else vdesc.values, order, f, n))
        return out

    def _dipole_sparse_weights(self) -> np.ndarray:
        """``wb[b] = sum_nu w_{b nu} V_b^nu / s**2`` (M, Dv), so that the local dipole is
        ``mu_i = V_i . sum_b K_b wb[b]`` with the raw vector descriptor V_i: constant once
        fitted, so computed once per weight vector."""
        cached = getattr(self, "_wb_cache", None)
        if cached is None or cached[0] is not self.weights:
            m = self.sparse_unit.shape[0]
            wd = self.weights[(m if self._monopole else 0):].reshape(m, 3)
            wb = np.einsum("bn,bnk->bk", wd, self.sparse_vectors) / self.vector_scale
            cached = (self.weights, wb)
            self._wb_cache = cached
        return cached[1]

    def _float32_copies(self):
        """float32 copies of ``wb`` (:meth:`_dipole_sparse_weights`) and of the unit sparse
        descriptors, for ``precision="mixed"``; made once per weight vector (one tuple
        assignment, so frames on concurrent threads never see half of it)."""
        cached = getattr(self, "_float32_cache", None)
        if cached is None or cached[0] is not self.weights:
            cached = (self.weights, self._dipole_sparse_weights().astype(np.float32),
                      self.sparse_unit.astype(np.float32))
            self._float32_cache = cached
        return cached[1], cached[2]

    def _kernel_terms(self, species_kernels, unit, norms, vdesc, n_channels,
                      float32_products=False):
        """Kernel part of one prediction, species by species (:meth:`_species_kernels`).

        Returns ``q`` (N,) kernel charges (monopole model; zeros otherwise), ``scalar_grad``
        (N, C, D) the derivatives of the channel quantities with respect to the scalar
        descriptors (channel 0: q_i; the last three: the Cartesian components of
        ``mu_i = V_i . u_i`` through the factor (x_i . x_b)**(zeta - 1) of the dipole kernel),
        and ``u`` (N, Dv) with ``u_i = sum_b (x_i . x_b)**(zeta - 1) wb_b``
        (:meth:`_dipole_sparse_weights`; None without the dipole model). All channels of a
        species share one product with the sparse descriptors; the element-wise work between
        the products is one Numba pass (:mod:`numbec.models.kernels_numba`, which releases the
        GIL). ``float32_products``: the dipole model's products in float32
        (``precision="mixed"``).
        """
        n, d = unit.shape
        zeta = self.zeta
        m = self.sparse_unit.shape[0]
        q = np.zeros(n)
        scalar_grad = np.empty((n, n_channels, d))
        u = None
        no_coef = np.zeros((0, 3, 0))
        float32_products = float32_products and self._dipole
        if self._dipole:
            wb = self._dipole_sparse_weights()
            u = np.empty((n, wb.shape[1]))
            if float32_products:
                wb, sparse32 = self._float32_copies()
        w_all = self.weights[:m] if self._monopole else np.zeros(0)
        # dipole channels: dipole_channel .. n_channels - 1
        dipole_channel = n_channels - 3
        for rows, cols, cos in species_kernels:
            nr, mz = cos.shape
            coef = no_coef
            if self._dipole and zeta >= 2:
                v = vdesc.values[rows].reshape(3 * nr, -1)
                coef = (v.astype(np.float32) if float32_products else v) @ wb[cols].T
                coef = coef.reshape(nr, 3, mz).astype(np.float64, copy=False)
            # dk[i, ch, b] = d k_ich / d(x_i . x_b); dipole channels stay zero for zeta = 1
            dk = (np.zeros if self._dipole and zeta == 1 else np.empty)((nr, n_channels, mz))
            q_species = np.empty(nr)
            kernel_pow, radial = np.empty((nr, mz)), np.empty((nr, n_channels))
            _kn.species_kernel_derivatives(cos, zeta, w_all[cols] if self._monopole else w_all,
                                           coef, dk, q_species, kernel_pow, radial)
            q[rows] = q_species
            # contiguous species blocks (the batched path) take the products in place
            in_place = isinstance(rows, slice)
            grad = scalar_grad[rows] if in_place else np.empty((nr, n_channels, d))
            if float32_products:
                u[rows] = kernel_pow.astype(np.float32) @ wb[cols]
                if dipole_channel:  # the monopole channel
                    grad[:, 0] = dk[:, 0] @ self.sparse_unit[cols]
                grad[:, dipole_channel:] = (
                    dk[:, dipole_channel:].reshape(3 * nr, mz).astype(np.float32)
                    @ sparse32[cols]).reshape(nr, 3, d)
            else:
                if self._dipole:
                    if in_place:
                        np.matmul(kernel_pow, wb[cols], out=u[rows])
                    else:
                        u[rows] = kernel_pow @ wb[cols]
                np.matmul(dk.reshape(nr * n_channels, mz), self.sparse_unit[cols],
                          out=grad.reshape(nr * n_channels, d))
            _kn.finish_gradient(grad, radial, unit[rows], norms[rows])
            if not in_place:
                scalar_grad[rows] = grad
        return q, scalar_grad, u

    def _species_kernels(self, numbers, unit) -> list:
        """Per-species kernel inputs of one structure: ``[(rows, cols, cos)]`` per species
        present, with ``rows`` the atoms of the species, ``cols`` its sparse points and ``cos``
        (len(rows), len(cols)) = x_i . x_b. The kernel between different species is zero, so
        working species by species skips the zero part of every (N, M) product (half of it
        for two species).
        ``rows`` and ``cols`` are slices where the indices are contiguous (the sparse points
        always are, and atoms sorted by species): views instead of copies of the (M, D)
        sparse matrices at every frame."""
        out = []
        for z in np.unique(numbers):
            rows = _as_slice(np.flatnonzero(numbers == z))
            cols = _as_slice(np.flatnonzero(self.sparse_species == z))
            out.append((rows, cols, unit[rows] @ self.sparse_unit[cols].T))
        return out

    # ------------------------------------------------------------------ design matrix
    def _design(self, positions, numbers, cell, pbc, where):
        """Design of one structure: ``phi`` (N, 3, 3, C) with ``bec - baseline = phi @ w``
        (neutrality scheme applied), and for molecules the dipole rows (3, C), else None."""
        numbers = np.asarray(numbers, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.float64)
        has_pbc = bool(np.asarray(pbc).any())
        desc, unit, norms, cos, mask = self._environment(positions, numbers, cell, pbc, False,
                                                         where)
        nl = desc.pairs
        periodic = has_pbc
        if has_pbc:
            unwrapped = _unwrapped_cluster(nl, positions, cell)
            periodic = unwrapped is None
            if not periodic:
                positions = unwrapped
        n_pairs, n = nl.n_pairs, numbers.size
        centers = nl.centers
        crow = np.repeat(centers, 3)
        # the descriptor Jacobian enters only through its products with the sparse points and
        # with the centre's own descriptor, so it is made a block of centres at a time (the
        # whole of it is 310 MiB for the 135-atom BaTiO3 cell)
        proj = np.empty((3 * n_pairs, self.sparse_unit.shape[0]))      # (3P, M)
        radial = np.empty(3 * n_pairs)
        for lo, jac in scalar_jacobian_blocks(desc.expansion):
            rows = slice(3 * lo, 3 * (lo + jac.shape[0]))
            jac = jac.reshape(-1, jac.shape[-1])
            np.matmul(jac, self.sparse_unit.T, out=proj[rows])
            radial[rows] = np.einsum("rk,rk->r", jac, unit[crow[rows]])
        row_norms = norms[crow]
        parts, dips = [], []
        rel = positions - positions.mean(axis=0)
        if self._monopole:
            phi, dip = self._design_monopole(nl, n, proj, radial, crow, row_norms, cos, mask,
                                             periodic, rel)
            parts.append(phi)
            dips.append(dip)
        if self._dipole:
            phi, dip = self._design_dipole(positions, numbers, cell, pbc, nl, proj, radial,
                                           crow, row_norms, cos, mask, periodic)
            parts.append(phi)
            dips.append(dip)
        phi = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        if periodic:
            phi = phi - phi.mean(axis=0)[None]
            return phi, None
        # a periodic cell without image pairs is a molecule for the BECs, but its dipole is
        # not fitted (periodic codes report it only modulo a polarisation quantum)
        return phi, (None if has_pbc else np.concatenate(dips, axis=-1))

    def _design_monopole(self, nl, n, proj, radial, crow, row_norms, cos, mask, periodic, rel):
        m = cos.shape[1]
        kmat = np.where(mask, kernels.int_power(cos, self.zeta), 0.0)
        dk = kernels.kernel_gradient_matrix(proj, radial, cos[crow], row_norms,
                                            self.zeta)
        dk = (dk * mask[crow]).reshape(nl.n_pairs, 3 * m)               # [p, beta, b]
        phi = np.zeros((n, 3, 3, m))
        cols = np.arange(nl.n_pairs)
        for a in range(3):
            scatter = scipy.sparse.csr_matrix((-nl.vectors[:, a], (nl.neighbors, cols)),
                                              shape=(n, nl.n_pairs))
            phi[:, a] = (scatter @ dk).reshape(n, 3, m)
        phi[:, _DIAG[0], _DIAG[1], :] += kmat[:, None, :]
        if periodic:
            return phi, None
        dq = (_incidence(nl.centers, nl.neighbors, n) @ dk).reshape(n, 3, m)
        phi += rel[:, :, None, None] * dq[:, None, :, :]
        phi[:, _DIAG[0], _DIAG[1], :] -= kmat.mean(axis=0)[None, None, :]
        return phi, rel.T @ kmat

    def _design_dipole(self, positions, numbers, cell, pbc, nl, proj, radial, crow, row_norms,
                       cos, mask, periodic):
        m = cos.shape[1]
        n = numbers.size
        s = self.vector_scale
        vdesc = compute_vector_descriptors(positions, numbers, cell, pbc, self.settings)
        vec = vdesc.values / s                                           # (N, 3, Dv)
        dv = vec.shape[-1]
        kernel_pow = np.where(mask, kernels.int_power(cos, self.zeta - 1), 0.0)   # (N, M)
        if self.zeta > 1:
            d_kernel_pow = kernels.kernel_gradient_matrix(proj, radial, cos[crow], row_norms,
                                                          self.zeta, power=self.zeta - 1)
            d_kernel_pow = (d_kernel_pow * mask[crow]).reshape(nl.n_pairs, 3, m)  # [p, beta, b]
        else:
            d_kernel_pow = None
        inc = _incidence(nl.centers, nl.neighbors, n)
        centers = nl.centers
        phi = np.zeros((n, 3, 3, m, 3))
        dip = np.zeros((3, m, 3))
        per_species = []
        for z in self.species:
            cols = np.flatnonzero(self.sparse_species == z)
            vs = self.sparse_vectors[cols].reshape(-1, dv)               # (3 m_z, Dv)
            centre_atoms = np.flatnonzero(numbers == z)
            vv = (vec[centre_atoms].reshape(-1, dv) @ vs.T).reshape(-1, 3, cols.size, 3)
            dip[:, cols, :] += np.einsum("ib,iabn->abn", kernel_pow[centre_atoms][:, cols], vv)
            vv_full = np.zeros((n, 3, cols.size, 3))
            vv_full[centre_atoms] = vv
            groups = [(pairs, feats, vs[:, feats])
                      for pairs, feats in self._pair_groups(nl, numbers[centers] == z)]
            phi_z = np.zeros((n, 3, 3, cols.size, 3))  # the columns of species z
            per_species.append((cols, vv_full, groups, phi_z))
        # the Jacobian of the vector descriptors a block of centres at a time (the whole of it
        # is 350 MiB for a 72-atom quartz cell)
        for lo, jac in vector_jacobian_blocks(vdesc.expansion):
            hi = lo + jac.shape[0]
            for cols, vv_full, groups, phi_z in per_species:
                for pairs, feats, vs_f in groups:
                    block = pairs[np.searchsorted(pairs, lo):np.searchsorted(pairs, hi)]
                    for start in range(0, block.size, PAIR_BATCH):
                        p = block[start:start + PAIR_BATCH]
                        jv = jac[p - lo][..., feats].reshape(-1, vs_f.shape[1]) / s
                        t = (jv @ vs_f.T).reshape(p.size, 3, 3, cols.size, 3)
                        t *= kernel_pow[centers[p]][:, cols][:, None, None, :, None]
                        if d_kernel_pow is not None:
                            t += (vv_full[centers[p]][:, :, None, :, :]
                                  * d_kernel_pow[p][:, None, :, :][..., cols][..., None])
                        phi_z += (inc[:, p] @ t.reshape(p.size, -1)).reshape(phi_z.shape)
        for cols, _, _, phi_z in per_species:
            phi[:, :, :, cols, :] = phi_z
        phi = phi.reshape(n, 3, 3, 3 * m)
        if periodic:
            return phi, None
        return phi, dip.reshape(3, 3 * m)

    def _pair_groups(self, nl, selected):
        """Split the selected pairs by which vector-descriptor part can depend on them: a
        neighbour beyond ``cutoff_angular`` moves only the two-body features, one beyond
        ``cutoff_radial`` only the product features. Yields ``(pair indices, feature slice)``;
        the Jacobian outside the slice is exactly zero, so the products skip it."""
        st = self.settings
        n_rad = st.n_radial_features
        inside_rad = nl.distances < st.cutoff_radial
        inside_ang = nl.distances < st.cutoff_angular
        groups = ((inside_rad & inside_ang, slice(None)),
                  (inside_rad & ~inside_ang, slice(0, n_rad)),
                  (~inside_rad & inside_ang, slice(n_rad, None)))
        for keep, feats in groups:
            pairs = np.flatnonzero(selected & keep)
            if pairs.size:
                yield pairs, feats

    # ------------------------------------------------------------------ training
    def fit(self, frames, progress: bool | None = None) -> KernelBECModel:
        """Fit to reference BECs (and molecular dipoles). Returns self.

        Parameters
        ----------
        frames : sequence of ase.Atoms
            Each with ``arrays["bec"]`` (N, 3, 3) float64 canonical BECs
            ``Z[a, i, j] = dP_i/dr_{a,j}``, e (as :func:`numbec.read_bec` returns them). They
            are projected onto the acoustic sum rule ``sum_a Z[a] = Q I`` before fitting (Q from
            ``info["charge"]``, default 0); the largest violation is recorded as
            ``training["asr_violation_max"]`` (e). Molecules (pbc all False) may carry
            ``info["dipole"]`` (3,) e·Å, then fitted too (weight :data:`DIPOLE_ROW_WEIGHT`
            per Å).
        progress : bool or None
            Progress bars (tqdm, on stderr) for the descriptors, the sparse selection, the
            design rows and the evidence iterations; None: when stderr is a terminal.

        Raises
        ------
        ValueError
            No frames; a frame without BECs, with BECs of the wrong shape, NaN positions, a
            non-numeric charge, overlapping atoms or a degenerate cell (the message names the
            frame and its file); a species none of whose atoms has a neighbour within the
            cutoff.
        UnknownSpeciesError
            Species outside the given descriptor settings.
        """
        from tqdm.auto import tqdm

        keep_freed_memory()  # the design's Jacobian blocks then reuse heap memory
        show = _show_progress(progress)
        t_start = time.perf_counter()
        frames = list(frames)
        if not frames:
            raise ValueError("fit: no training frames")
        targets, charges, violations = [], [], []
        for k, atoms in enumerate(frames):
            where = _where(k, atoms)
            if "bec" not in atoms.arrays:
                raise ValueError(f"{where}: no 'bec' array; every training frame needs reference "
                                 "BECs (read data with numbec.read_bec)")
            _check_positions(atoms.positions, where)
            bec = as_bec_array(atoms.arrays["bec"], len(atoms), where=where)  # canonical
            with _naming(where):
                charge = charge_arguments(atoms).get("total_charge", 0.0)
            violations.append(float(np.abs(acoustic_sum(bec) - charge * np.eye(3)).max()))
            # the kernel part is fitted to the neutral part; predictions add Q/N I back
            targets.append(asr_project(bec))
            charges.append(charge)
        worst = int(np.argmax(violations))
        if violations[worst] > ASR_WARNING:
            warnings.warn(
                f"{_where(worst, frames[worst])}: the reference BECs violate the acoustic sum "
                f"rule by up to {violations[worst]:.3g} e (sum over atoms minus Q I); if the "
                "structure is charged, give its charge in atoms.info['charge']", stacklevel=2)
        species = sorted({int(z) for atoms in frames for z in atoms.numbers})
        settings = self._given_settings or DescriptorSettings(species=tuple(species))
        missing = sorted(set(species) - set(settings.species))
        if missing:
            raise UnknownSpeciesError(
                "training frames contain species " + ", ".join(_symbol(z) for z in missing)
                + f" not among the descriptor species {list(settings.species)}")
        self.settings = settings
        self.species = tuple(species)

        self.q0 = self._fit_baseline(frames, targets)
        self.training_mean_bec = self._training_mean_bec(frames)

        # pass 1: descriptors of all environments -> sparse points
        t0 = time.perf_counter()
        units = {z: [] for z in species}
        origin = {z: [] for z in species}
        vsq, n_env = 0.0, 0
        for k, atoms in enumerate(tqdm(frames, desc="descriptors", disable=not show)):
            where = _where(k, atoms)
            with _naming(where):
                desc = compute_descriptors(atoms.positions, atoms.numbers,
                                           np.asarray(atoms.cell), atoms.pbc, settings)
                unit, norms = kernels.normalize(desc.values, where, allow_isolated=True)
            has_neighbours = np.linalg.norm(desc.values, axis=1) > 0.0
            for z in species:
                # isolated atoms (zero descriptor) have no direction: never sparse points
                idx = np.flatnonzero((atoms.numbers == z) & has_neighbours)
                units[z].append(unit[idx])
                origin[z].extend((k, int(i)) for i in idx)
            if self._dipole:
                with _naming(where):
                    v = compute_vector_descriptors(atoms.positions, atoms.numbers,
                                                   np.asarray(atoms.cell), atoms.pbc, settings)
                vsq += float(np.sum(v.values ** 2))
                n_env += len(atoms)
        chosen_unit, chosen_species, chosen_origin = [], [], []
        n_sparse_used, environment_residual = {}, {}
        for z in tqdm(species, desc="sparse points", disable=not show):
            pool = np.concatenate(units[z])
            n_sel = self._n_sparse_for(z)
            if pool.shape[0] == 0:
                raise ValueError(
                    f"species {_symbol(z)}: no atom of it has a neighbour within the descriptor "
                    "cutoff in the training frames, so the kernel has no reference environment")
            if n_sel > pool.shape[0]:
                warnings.warn(
                    f"species {_symbol(z)}: n_sparse = {n_sel} but the training frames have "
                    f"only {pool.shape[0]} environments of it; using all {pool.shape[0]}",
                    stacklevel=2)
                n_sel = pool.shape[0]
            idx = sparsify.select(pool, n_sel, self.sparse_method, zeta=self.zeta,
                                  seed=self.seed, where=f"species {_symbol(z)}")
            n_sparse_used[_symbol_key(z)] = int(idx.size)
            # how far training-like environments lie from the sparse points: the reference
            # of predict's check for environments unlike the training ones
            environment_residual[_symbol_key(z)] = residual_summary(
                reference_residuals(pool, idx, self.zeta, self.seed))
            chosen_unit.append(pool[idx])
            chosen_species.append(np.full(idx.size, z, dtype=np.int64))
            chosen_origin.extend(origin[z][i] for i in idx)
        self.sparse_unit = np.ascontiguousarray(np.concatenate(chosen_unit))
        self.sparse_species = np.concatenate(chosen_species)
        if self._dipole:
            self.vector_scale = float(np.sqrt(vsq / n_env)) if vsq > 0 else 1.0
            self.sparse_vectors = self._sparse_vector_descriptors(frames, chosen_origin)
        else:
            self.vector_scale = 1.0
            self.sparse_vectors = None
        t_sparse = time.perf_counter() - t0

        # pass 2: normal equations, frame by frame
        t0 = time.perf_counter()
        eq = regression.NormalEquations(self.n_columns)
        n_atoms = 0
        for k, atoms in enumerate(tqdm(frames, desc="design rows", disable=not show)):
            where = _where(k, atoms)
            with _naming(where):
                phi, dip = self._design(atoms.positions, atoms.numbers, np.asarray(atoms.cell),
                                        atoms.pbc, where)
            n = len(atoms)
            n_atoms += n
            q0n = self._baseline(atoms.numbers)
            y = targets[k].copy()
            y[:, _DIAG[0], _DIAG[1]] -= q0n[:, None]
            eq.add(phi.reshape(n * 9, -1), y.ravel())
            if dip is None and self._monopole and NEUTRALITY_ROW_WEIGHT > 0:
                eq.add(NEUTRALITY_ROW_WEIGHT * self._charge_row(atoms, where), np.zeros(1))
            if dip is not None and "dipole" in atoms.info:
                ref = np.asarray(atoms.info["dipole"], dtype=np.float64).reshape(3)
                target = ref - (q0n + charges[k] / n) @ atoms.positions
                eq.add(DIPOLE_ROW_WEIGHT * dip, DIPOLE_ROW_WEIGHT * target)
        t_design = time.perf_counter() - t0

        t0 = time.perf_counter()
        if self.regression == "bayesian":
            m = self.sparse_unit.shape[0]
            groups = np.concatenate([np.zeros(m if self._monopole else 0, dtype=np.int64),
                                     np.ones(3 * m if self._dipole else 0, dtype=np.int64)])
            result = regression.fit_bayesian(eq, groups=groups, progress=show)
        else:
            result = regression.fit_ridge(eq, self.ridge)
        t_solve = time.perf_counter() - t0
        self.weights = result.weights
        self.covariance = result.covariance
        self.sigma_v2 = float(result.sigma_v2)
        self.training = {
            "n_frames": len(frames), "n_atoms": n_atoms, "n_rows": eq.n_rows,
            "n_columns": eq.n_columns, **result.summary(),
            "n_sparse_used": n_sparse_used,
            "environment_residual": environment_residual,
            "asr_violation_max": max(violations),
            "time_sparse_s": t_sparse, "time_design_s": t_design, "time_solve_s": t_solve,
            "time_total_s": time.perf_counter() - t_start,
        }
        self.training = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                         for k, v in self.training.items()}  # JSON has no NaN
        self._fitted = True
        return self

    def _charge_row(self, atoms, where) -> np.ndarray:
        """(1, C) design row of the total kernel charge ``sum_i (q_i - q0_J(i))``."""
        _, _, _, cos, mask = self._environment(atoms.positions, atoms.numbers,
                                               np.asarray(atoms.cell), atoms.pbc, False, where)
        row = np.zeros((1, self.n_columns))
        row[0, :cos.shape[1]] = np.where(mask, kernels.int_power(cos, self.zeta), 0.0).sum(axis=0)
        return row

    def _fit_baseline(self, frames, targets) -> np.ndarray:
        """Baseline charges q0 (n_species,) e, in the order of ``self.species``.

        Least squares of the isotropic parts ``tr(Z_a)/3`` of the ASR-projected reference BECs
        by one charge per species, under the constraint that the training set is neutral:
        ``q0_J = mean_{a in J} tr(Z_a)/3 - mean_a tr(Z_a)/3``.
        """
        trace = np.concatenate([np.trace(t, axis1=1, axis2=2) / 3.0 for t in targets])
        allz = np.concatenate([atoms.numbers for atoms in frames])
        q0 = np.array([trace[allz == z].mean() for z in self.species])
        return q0 - trace.mean()

    @staticmethod
    def _training_mean_bec(frames) -> np.ndarray:
        """(n_species, 3, 3) mean raw reference BEC per species (e), the species-mean
        baseline of :attr:`baseline_model`."""
        from numbec.models.baseline import SpeciesMeanModel

        return SpeciesMeanModel.fit(frames).mean_bec

    def _sparse_vector_descriptors(self, frames, chosen_origin) -> np.ndarray:
        """(M, 3, Dv) scaled vector descriptors V_b / s of the chosen sparse environments."""
        out = np.zeros((len(chosen_origin), 3, self.settings.n_vector_features))
        by_frame: dict[int, list[tuple[int, int]]] = {}
        for b, (k, i) in enumerate(chosen_origin):
            by_frame.setdefault(k, []).append((b, i))
        for k, items in by_frame.items():
            atoms = frames[k]
            v = compute_vector_descriptors(atoms.positions, atoms.numbers,
                                           np.asarray(atoms.cell), atoms.pbc, self.settings)
            for b, i in items:
                out[b] = v.values[i] / self.vector_scale
        return out

    # ------------------------------------------------------------------ persistence
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The saved state ``(metadata, arrays)`` (see :meth:`BECModel.state`).

        metadata: ``hyperparameters``, ``settings`` (descriptor settings), ``species`` (sorted
        atomic numbers), ``vector_scale`` (s of the dipole kernel, 1 without it), ``sigma_v2``
        (noise variance, e^2) and ``training`` (summary of the fit).
        arrays, with M sparse points, D = ``settings.n_features``, Dv =
        ``settings.n_vector_features`` and C = :attr:`n_columns`:
        ``q0`` (n_species,) float64 baseline charges, e; ``sparse_unit`` (M, D) float64 unit
        sparse descriptors; ``sparse_species`` (M,) int64 their species; ``weights`` (C,)
        float64; ``covariance`` (C, C) float64 posterior covariance; ``sparse_vectors``
        (M, 3, Dv) float64 scaled vector descriptors (dipole kernel only);
        ``training_mean_bec`` (n_species, 3, 3) float64 mean reference BEC per species, e
        (models fitted after numbec 0.1's first release; the evaluation baseline).

        Raises
        ------
        RuntimeError
            The model is not fitted.
        """
        self._check_fitted()
        metadata = {
            "hyperparameters": self.hyperparameters(),
            "settings": self.settings.to_dict(),
            "species": list(self.species),
            "vector_scale": self.vector_scale,
            "sigma_v2": self.sigma_v2,
            "variance_scale": self.variance_scale,
            "training": self.training,
        }
        if self.noise_scale is not None:  # absent: the noise scales with variance_scale
            metadata["noise_scale"] = self.noise_scale
        if self.residual_scale:  # absent: no residual term (files before it, other methods)
            metadata["residual_scale"] = self.residual_scale
        arrays = {"q0": self.q0, "sparse_unit": self.sparse_unit,
                  "sparse_species": self.sparse_species, "weights": self.weights,
                  "covariance": self.covariance}
        if self._dipole:
            arrays["sparse_vectors"] = self.sparse_vectors
        if getattr(self, "training_mean_bec", None) is not None:
            arrays["training_mean_bec"] = self.training_mean_bec
        return metadata, arrays

    @classmethod
    def _from_state(cls, metadata, arrays):
        hyper = metadata["hyperparameters"]
        if not isinstance(hyper, dict):
            raise ModelFileError("metadata 'hyperparameters' is not a JSON object")
        settings = metadata["settings"]
        if not isinstance(settings, dict):
            raise ModelFileError("metadata 'settings' is not a JSON object")
        model = cls(settings=DescriptorSettings.from_dict(settings), **hyper)
        species = [int(z) for z in metadata["species"]]
        if not species or species != sorted(set(species)):
            raise ModelFileError(f"species {species} are not distinct and sorted")
        outside = sorted(set(species) - set(model.settings.species))
        if outside:
            raise ModelFileError(f"species {outside} are not among the descriptor species "
                                 f"{list(model.settings.species)}")
        model.species = tuple(species)
        model.vector_scale = float(metadata["vector_scale"])
        model.sigma_v2 = float(metadata["sigma_v2"])
        if not (np.isfinite(model.vector_scale) and model.vector_scale > 0):
            raise ModelFileError(f"vector_scale = {model.vector_scale} is not positive")
        if not (np.isfinite(model.sigma_v2) and model.sigma_v2 >= 0):
            raise ModelFileError(f"sigma_v2 = {model.sigma_v2} is not a variance")
        model.variance_scale = float(metadata.get("variance_scale", 1.0))  # absent before 0.2
        if not (np.isfinite(model.variance_scale) and model.variance_scale > 0):
            raise ModelFileError(f"variance_scale = {model.variance_scale} is not a positive "
                                 "number")
        noise = metadata.get("noise_scale")  # absent: scaled by variance_scale, as before
        if noise is not None:
            if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (
                    np.isfinite(noise) and noise > 0):
                raise ModelFileError(f"noise_scale = {noise!r} is not a positive number")
            model.noise_scale = float(noise)
        resid = metadata.get("residual_scale", 0.0)  # absent: no residual term, as before
        if isinstance(resid, bool) or not isinstance(resid, (int, float)) or not (
                np.isfinite(resid) and resid >= 0):
            raise ModelFileError(f"residual_scale = {resid!r} is not a non-negative number")
        model.residual_scale = float(resid)
        model.training = metadata.get("training", {})
        if not isinstance(model.training, dict):
            raise ModelFileError("metadata 'training' is not a JSON object")
        fit = model.training.get("variance_scale_fit")
        if fit is not None and not isinstance(fit, dict):  # read by sample_scale and the CLI
            raise ModelFileError("metadata training['variance_scale_fit'] is not a JSON object")
        n_species = len(species)
        model.q0 = checked_array(arrays, "q0", (n_species,), "float")
        model.sparse_unit = checked_array(arrays, "sparse_unit",
                                          (None, model.settings.n_features), "float")
        m = model.sparse_unit.shape[0]
        norms = np.linalg.norm(model.sparse_unit, axis=1)
        if m == 0 or np.abs(norms - 1.0).max() > 1e-6:
            raise ModelFileError("array 'sparse_unit' must hold unit-length rows")
        model.sparse_species = checked_array(arrays, "sparse_species", (m,), "int")
        unknown = sorted(set(model.sparse_species.tolist()) - set(species))
        if unknown:
            raise ModelFileError(f"array 'sparse_species' holds {unknown}, not among the "
                                 f"model's species {species}")
        if np.any(np.diff(model.sparse_species) < 0):
            raise ModelFileError("array 'sparse_species' is not grouped by species (sorted)")
        counts = {_symbol_key(z): int(np.count_nonzero(model.sparse_species == z))
                  for z in species}
        # fit gives every species at least one sparse point; a species without one would be
        # predicted from its baseline charge alone
        empty = [key for key, n in counts.items() if n == 0]
        if empty:
            raise ModelFileError(f"array 'sparse_species' has no sparse point of the model's "
                                 f"species {', '.join(empty)}")
        recorded = model.training.get("n_sparse_used")  # absent in older files
        if recorded is not None and recorded != counts:
            raise ModelFileError(f"array 'sparse_species' holds {counts} sparse points per "
                                 f"species, the metadata's n_sparse_used says {recorded}")
        model.weights = checked_array(arrays, "weights", (model.n_columns,), "float")
        n_cols = model.n_columns
        model.covariance = checked_array(arrays, "covariance", (n_cols, n_cols), "float")
        _check_covariance(model.covariance)
        model.sparse_vectors = (
            checked_array(arrays, "sparse_vectors", (m, 3, model.settings.n_vector_features),
                          "float") if cls._dipole else None)
        model.training_mean_bec = (
            checked_array(arrays, "training_mean_bec", (n_species, 3, 3), "float")
            if "training_mean_bec" in arrays else None)
        model._fitted = True
        return model

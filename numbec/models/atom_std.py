"""Per-atom posterior standard deviations of the kernel models' local outputs.

The kernel models are linear in their weights w, and two per-atom quantities of a
prediction are linear in w through rows the plain prediction already evaluates:

- the neutral kernel charge (monopole part; docs/models.md, "Neutrality")
  ``q'_i = k_i . w_q - (1/N) sum_j k_j . w_q`` with ``k_ib = (x_i . x_b)**zeta`` for the
  sparse points b of atom i's species (0 for the others), i.e. the *effective* row
  ``g_i = k_i - mean_j k_j`` (the mean over the atoms of the frame, all species: it
  touches the columns of every species present). The baseline charges q0 and the total
  charge Q / N are constants;
- the local dipole (dipole part) ``mu_i^a = sum_{b, nu} (x_i . x_b)**(zeta - 1)
  (V_i^a . V_b^nu) / s**2 w_{b nu}``: three rows ``G_i`` (3, 3 M_z) over the dipole columns
  of atom i's species.

With the weights' posterior ``N(w, s_w Sigma)`` (``s_w`` = :func:`variance_scale`, the
factor ``bec_std`` applies to ``phi^T Sigma phi``) their variances are exact:

``charge_std_i = sqrt(s_w g_i^T Sigma_qq g_i)`` (e),
``local_dipole_std_i = sqrt(s_w tr(G_i Sigma_dd G_i^T))`` (e·Å, the root of the trace of
the 3 x 3 covariance of mu_i: rotation invariant).

Each is the marginal of its own output, so it uses its own block of Sigma (monopole
columns, or the dipole columns of the atom's species); the cross-covariance between the
charge and the dipole weights of a combined model enters neither (it would enter only a
joint quantity, such as the BEC). They are epistemic: no noise term sigma_v^2 (the noise of
the regression is defined per BEC component, not per charge).

Cost: one ``(N_z, M) @ (M, M)`` product per species block for the charges and one
``(3 N_z, 3 M_z) @ (3 M_z, 3 M_z)`` for the dipoles, plus the dipole rows themselves
``(3 N_z, Dv) @ (Dv, 3 M_z)``: no descriptor derivatives (docs/streaming.md for the
measured cost).

What these are not: the standard deviation of the BEC. The BEC of atom j also depends on
the derivatives of its neighbours' charges and dipoles with respect to r_j (the
charge-transfer term); ``bec_std`` (design rows) is the exact one.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from numbec.models import kernels

__all__ = ["ATOM_STD_OUTPUTS", "atom_std_names", "local_output_std", "prepared_output_std"]

#: The per-atom outputs, in the order of :data:`numbec.io.prediction.VARIABLES`.
ATOM_STD_OUTPUTS = ("charge_std", "local_dipole_std")
#: Atoms per block of the products: bounds the temporaries to about ``ATOM_BLOCK * M * 8``
#: bytes (charges) and ``9 * ATOM_BLOCK * M_z * 8`` bytes (dipoles) whatever the frame size.
ATOM_BLOCK = 512


def atom_std_names(model) -> tuple[str, ...]:
    """The per-atom std outputs of a kernel model: ``charge_std`` with the monopole kernel,
    ``local_dipole_std`` with the dipole kernel."""
    return ((("charge_std",) if getattr(model, "_monopole", False) else ())
            + (("local_dipole_std",) if getattr(model, "_dipole", False) else ()))


def _scaled_blocks(model):
    """``s_w Sigma`` blocks, cached per (weights, covariance, scale): the monopole block
    (M, M) (None without charges) and per species the dipole block (3 M_z, 3 M_z) keyed by
    atomic number (empty without the dipole kernel)."""
    from numbec.models.variance_scales import variance_scale

    scale = variance_scale(model)
    cached = getattr(model, "_atom_std_cache", None)
    if (cached is not None and cached[0] is model.weights and cached[1] is model.covariance
            and cached[2] == scale):
        return cached[3], cached[4]
    m = model.sparse_unit.shape[0]
    cov = model.covariance
    mono = np.ascontiguousarray(scale * cov[:m, :m]) if model._monopole else None
    dip = {}
    if model._dipole:
        off = m if model._monopole else 0
        for z in np.unique(model.sparse_species):
            cols = np.flatnonzero(model.sparse_species == z)
            idx = off + (3 * cols[:, None] + np.arange(3)[None, :]).ravel()
            dip[int(z)] = np.ascontiguousarray(scale * cov[np.ix_(idx, idx)])
    model._atom_std_cache = (model.weights, model.covariance, scale, mono, dip)
    return mono, dip


def _rowdot(a, b) -> np.ndarray:
    """Row-wise dot products of two (R, K) arrays: (R,)."""
    return np.einsum("rk,rk->r", a, b)


def local_output_std(model, species_kernels, vectors, order, n_frames: int,
                     n_atoms: int) -> dict:
    """``charge_std`` and/or ``local_dipole_std`` of F frames of the same N atoms.

    Parameters
    ----------
    model : fitted MonopoleModel, DipoleModel or CombinedModel (with ``covariance``).
    species_kernels : list of ``(rows, cols, cos)``
        The kernel blocks of the prediction (``KernelBECModel._species_kernels``): ``rows``
        the (ordered) atoms of one species, ``cols`` its sparse points, ``cos`` (len(rows),
        len(cols)) float64 ``x_i . x_b`` of unit scalar descriptors.
    vectors : (F N, 3, Dv) float64 or None
        Raw vector descriptors V_i of the ordered atoms (models with the dipole kernel).
    order : (F N,) int or None
        Ordered atom k is stacked atom ``order[k]`` = ``frame * N + atom`` (None: the
        identity, e.g. one frame in atom order).
    n_frames, n_atoms : F and N.

    Returns
    -------
    dict
        ``charge_std`` (F, N) float64, e (models with the monopole kernel) and
        ``local_dipole_std`` (F, N) float64, e·Å (models with the dipole kernel), in frame
        and atom order (module docstring).

    Raises
    ------
    ValueError
        The posterior variance of an output is negative beyond rounding (a covariance that
        is not positive semi-definite), naming the frame and atom.
    """
    f, n = int(n_frames), int(n_atoms)
    mono, dip = _scaled_blocks(model)
    m = model.sparse_unit.shape[0]
    stacked = np.arange(f * n) if order is None else np.asarray(order)
    zeta = model.zeta
    out = {}
    if model._monopole:
        var = np.empty(f * n)
        # the frame means of the kernel rows, every species (M columns)
        blocks = []
        mean_rows = np.zeros((f, m))
        for rows, cols, cos in species_kernels:
            k = kernels.int_power(cos, zeta)
            frame = stacked[rows] // n
            if k.shape[0] == f * (k.shape[0] // f) and np.array_equal(
                    frame, np.repeat(np.arange(f), k.shape[0] // f)):
                mean_rows[:, cols] = k.reshape(f, -1, k.shape[1]).sum(axis=1) / n
            else:  # any other order: an indicator product
                ind = scipy.sparse.csr_matrix(
                    (np.ones(frame.size), (frame, np.arange(frame.size))),
                    shape=(f, frame.size))
                mean_rows[:, cols] = (ind @ k) / n
            blocks.append((rows, cols, k, frame))
        for rows, cols, k, frame in blocks:
            where = np.arange(f * n)[rows]
            for a in range(0, k.shape[0], ATOM_BLOCK):
                b = slice(a, a + ATOM_BLOCK)
                g = -mean_rows[frame[b]]                            # (atoms, M)
                g[:, cols] += k[b]
                var[where[b]] = _rowdot(g @ mono, g)
        out["charge_std"] = _checked_sqrt(var, stacked, n, "charge")
    if model._dipole:
        var = np.empty(f * n)
        s = model.vector_scale
        for rows, cols, cos in species_kernels:
            nr, mz = cos.shape
            if mz == 0:
                var[rows] = 0.0
                continue
            z = int(model.sparse_species[cols][0])
            sv = model.sparse_vectors[cols].reshape(3 * mz, -1)     # (3 M_z, Dv), /s already
            where = np.arange(f * n)[rows]
            for a in range(0, nr, ATOM_BLOCK):
                b = slice(a, a + ATOM_BLOCK)
                atoms = where[b]
                v = vectors[atoms].reshape(3 * atoms.size, -1) / s  # (3 atoms, Dv)
                g = (v @ sv.T).reshape(atoms.size, 3, mz, 3)
                if zeta > 1:
                    g *= kernels.int_power(cos[b], zeta - 1)[:, None, :, None]
                g = g.reshape(3 * atoms.size, 3 * mz)
                var[atoms] = _rowdot(g @ dip[z], g).reshape(atoms.size, 3).sum(axis=1)
        out["local_dipole_std"] = _checked_sqrt(var, stacked, n, "local dipole")
    return out


def _checked_sqrt(var, stacked, n, what) -> np.ndarray:
    """(F, N) square roots of the variances of the ordered atoms, put back in frame order;
    rounding below zero is clipped, a clearly negative variance raises naming the atom."""
    scale = max(float(np.abs(var).max(initial=0.0)), 1e-300)
    bad = np.flatnonzero(var < -1e-10 * scale)
    if bad.size:
        k = int(bad[0])
        raise ValueError(f"frame {int(stacked[k] // n)}: atom {int(stacked[k] % n)}: the "
                         f"posterior variance of its {what} is {var[k]:.3g} < 0; the model's "
                         "covariance is not positive semi-definite")
    out = np.empty_like(var)
    out[stacked] = np.sqrt(np.maximum(var, 0.0))
    return out.reshape(-1, n)


def prepared_output_std(model, prepared) -> dict:
    """:func:`local_output_std` of one structure from its descriptor pass
    (:func:`numbec.models.uncertainty.prepare_structure`): ``charge_std`` and/or
    ``local_dipole_std`` (N,) float64, as ``predict_arrays(..., atom_std=True)``."""
    vectors = None if prepared.vdesc is None else prepared.vdesc.values
    out = local_output_std(model, prepared.species_kernels, vectors, None, 1,
                           prepared.numbers.size)
    return {key: value[0] for key, value in out.items()}

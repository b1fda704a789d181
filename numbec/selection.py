"""Choose the frames of a trajectory whose reference BECs (DFPT, finite fields) are worth most.

:func:`select` ranks the frames of a trajectory store (or of a list of structures) for a
fitted kernel model and returns the ``n`` frames to label next, by one of four strategies:

``uncertainty`` (default)
    Greedy selection under the Bayesian posterior, updated after every pick. The score of a
    frame is its mean *epistemic* predictive variance per BEC component,
    ``v_f = tr(Sigma G_f) / R_f`` with ``G_f = Phi_f^T Phi_f`` (M, M) the Gram matrix of the
    frame's ``R_f = 9 N`` design rows and ``Sigma`` (M, M) the posterior covariance of the
    weights (noise ``sigma_v^2`` excluded: it does not shrink with more data). After a pick
    the posterior becomes that of the model retrained with the frame,
    ``Sigma^-1 <- Sigma^-1 + G_f / sigma_v^2`` (hyperparameters fixed), so the frames that
    resemble it lose their score: N picks are not N neighbours.
``hybrid``
    Greedy as ``uncertainty``, with the frame's *representation error* added to its score:
    ``v_f + p_f rho_f``. ``rho_f`` is the mean over the frame's atoms of the Nyström residual
    of each environment against the model's sparse points of its species,
    ``r_a = 1 - k_a^T K_mm^+ k_a`` in the normalised scalar kernel (:func:`frame_residual`;
    0 for an environment the sparse points span, 1 for one unlike all of them), and ``p_f``
    the variance of the frame's predicted BEC components about their species means
    (:func:`signal_variance`, e^2): an environment that the sparse points cannot represent
    leaves that fraction of the signal unmodelled, whatever the weights. The posterior
    variance ``v_f`` does not see this error. After each pick the posterior is updated as in
    ``uncertainty`` and the picked frame's environments join the references of the residual
    (a refit would choose its sparse points among them), so a frame like an earlier pick
    loses both terms.
``reduction``
    Greedy as ``uncertainty``, but each pick maximises the expected reduction of the mean
    epistemic variance over the whole trajectory, ``(1/F) sum_g [v_g(Sigma) - v_g(Sigma')]``
    with ``Sigma'`` the posterior after adding the candidate (a V-optimal design): it prefers
    frames that teach the model about many frames over isolated outliers. The pool enters as
    one (M, M) matrix ``sum_g G_g / R_g`` accumulated while streaming; each candidate costs
    one M x M Cholesky per pick.
``diverse``
    Farthest-point sampling among the most uncertain frames (the ``candidates`` frames of
    highest ``v_f``) in a frame descriptor space: per species, the mean of the unit scalar
    descriptors of its atoms (:func:`frame_fingerprint`). It starts from the frames that are
    already labelled (``exclude``), else from the most uncertain frame.
``random``, ``stride``
    Uniformly random (seeded) or evenly spaced frames: the baselines.

Every strategy skips the frames in ``exclude`` and honours ``min_separation``: no two picked
frames, and no picked and excluded frame, closer in time than that (fs; in frames where the
trajectory has no time).

Streaming and memory
--------------------
The first pass reads the trajectory chunk by chunk (a store is never loaded whole) and keeps
only the ``candidates`` best-scoring frames with what the second stage needs (the Gram
matrix for ``uncertainty``, the fingerprint for ``diverse``): memory is
``candidates * K^2 * 8`` bytes for ``uncertainty`` (``M^2`` for the ``exact`` score), capped
by ``max_memory``, whatever the length of the trajectory. The greedy stage then works on the
candidates only. Frames that ``exclude`` and ``min_separation`` rule out are not scored.

The score
---------
:func:`frame_score` (model, one frame) -> mean epistemic variance per BEC component (e^2)
is the one function that defines what "uncertain" means; it builds the frame's design rows
(the cost of one training step per frame). The scoring pass uses by default
:func:`frame_score_lowrank` (``score="lowrank"``): the same variance carried by the K
(``uncertainty_rank``) leading posterior directions, computed as K extra adjoint channels of
one descriptor pass (a few plain predictions per frame), equal to :func:`frame_score` at full
rank. ``score="exact"`` keeps the design rows; ``select(..., score=...)`` also takes another
function with the signature of :func:`frame_score`. The greedy stage works in the space of
the score: with ``lowrank`` the posterior of the K directions (weights ``L z``, ``z ~ N(0,
I)``) updated with the candidates' ``D_f^T D_f`` (K, K), ``D_f = Phi_f L``, kept from the
scoring pass (no design rows anywhere; exact at full rank), so the picks' scores and the
pool's are the same estimator; with ``exact`` the full posterior and the Gram matrices of the
first pass; with a custom score the exact Gram matrices of the candidates, rebuilt in a
second pass. For ``reduction`` the pool matrix ``sum_g D_g^T D_g / R_g`` (or ``G_g / R_g``)
is accumulated in the same space.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time as _time
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from numbec.models.representation import (
    NystromResidual,
    frame_residual,
    nystrom_residual,
    unit_descriptors,
)

__all__ = [
    "STRATEGIES",
    "Selection",
    "frame_design",
    "frame_fingerprint",
    "frame_residual",
    "frame_score",
    "frame_score_lowrank",
    "select",
    "signal_variance",
]

#: Selection strategies of :func:`select`.
STRATEGIES = ("uncertainty", "hybrid", "reduction", "diverse", "random", "stride")
#: Frame scores of :func:`select`: ``lowrank`` (default, :func:`frame_score_lowrank`) and
#: ``exact`` (:func:`frame_score`, design rows).
SCORES = ("lowrank", "exact")
#: Default number of posterior directions K of the ``lowrank`` score.
UNCERTAINTY_RANK = 32
#: Default memory bound (bytes) of the candidates' Gram matrices in the ``uncertainty`` strategy.
MAX_MEMORY = 2**30


# ---------------------------------------------------------------------------- per frame
def _needs_posterior(model, strategy: str) -> None:
    if not (hasattr(model, "covariance") and hasattr(model, "_design")):
        raise ValueError(
            f"strategy {strategy!r} needs a model with a posterior covariance (MonopoleModel, "
            f"DipoleModel, CombinedModel), got {type(model).__name__}; use strategy 'random' "
            "or 'stride' for models without one")
    if getattr(model, "covariance", None) is None:
        raise ValueError(f"{type(model).__name__} is not fitted")


def frame_design(model, positions, numbers, cell, pbc, where: str = "") -> np.ndarray:
    """Design rows of one frame: (9 N, M) float64 with ``bec - baseline = Phi @ weights``.

    Rows are the BEC components ``Z[a, i, j]`` in C order (atom, pol, disp), e per unit weight;
    M = the model's number of weights. The dipole rows of a molecule are left out: the score is
    about BECs.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    model.check_inputs(positions, numbers, where)
    phi, _ = model._design(np.asarray(positions, dtype=np.float64), numbers,
                           np.asarray(cell, dtype=np.float64), pbc, where or "select")
    return phi.reshape(numbers.size * 9, -1)


def _variance_from_gram(covariance: np.ndarray, gram: np.ndarray, n_rows: int) -> float:
    """``tr(Sigma G) / R``: mean epistemic variance per BEC component, e^2."""
    return max(float(np.einsum("ij,ij->", covariance, gram)) / n_rows, 0.0)


def frame_score(model, positions, numbers, cell, pbc, where: str = "") -> float:
    """Mean epistemic predictive variance per BEC component of one frame, e^2.

    ``tr(Sigma Phi^T Phi) / (9 N)`` with Phi the frame's design rows (:func:`frame_design`)
    and Sigma the model's posterior covariance: the mean over atoms and components of
    ``bec_std**2 - sigma_v^2``. 0 for a model that knows its weights exactly.

    positions (N, 3) Å; numbers (N,) int; cell (3, 3) Å, rows = lattice vectors; pbc (3,) bool.
    """
    _needs_posterior(model, "uncertainty")
    phi = frame_design(model, positions, numbers, cell, pbc, where)
    return _variance_from_gram(model.covariance, phi.T @ phi, phi.shape[0])


class _LowRankScorer:
    """Epistemic variance of frames from the K leading posterior directions of a model.

    ``directions`` (K, C) float64: the columns of ``L`` with ``Sigma ~ L L^T``
    (:func:`numbec.models.uncertainty.posterior_factor` without its random probes and without
    the recalibration scale, so that the score is the part of
    :func:`frame_score` that lies in those directions and equals it at full rank).
    """

    def __init__(self, model, rank: int | None):
        from numbec.models.uncertainty import posterior_factor, variance_scale

        cov = np.asarray(model.covariance, dtype=np.float64)
        if rank is None or int(rank) >= cov.shape[0]:
            # full rank: any factor will do, and a Cholesky factor is exact to rounding where
            # the eigen-decomposition of an ill-conditioned Sigma is not
            try:
                self.directions = np.ascontiguousarray(np.linalg.cholesky(cov).T)
                return
            except np.linalg.LinAlgError:
                pass
        factor = posterior_factor(model, rank, probes=False).factor
        self.directions = np.ascontiguousarray(factor.T / math.sqrt(variance_scale(model)))

    def channels(self, model, positions, numbers, cell, pbc, where: str = "") -> np.ndarray:
        """``D = Phi L`` (9 N, K) e: the BECs of the K directions, rows as
        :func:`frame_design` (atom, pol, disp)."""
        from numbec.models.uncertainty import channel_outputs

        numbers = np.asarray(numbers, dtype=np.int64)
        model.check_inputs(positions, numbers, where)
        bec = channel_outputs(model, np.asarray(positions, dtype=np.float64), numbers,
                              np.asarray(cell, dtype=np.float64), pbc, self.directions)["bec"]
        return bec.reshape(bec.shape[0], -1).T


def frame_score_lowrank(model, positions, numbers, cell, pbc, where: str = "",
                        rank: int | None = UNCERTAINTY_RANK) -> float:
    """:func:`frame_score` from the ``rank`` leading posterior directions, e^2.

    ``sum_k |Phi L_k|^2 / (9 N)`` with ``L_k`` the posterior directions of
    :func:`numbec.models.uncertainty.posterior_factor` (ordered by the variance they carry on
    training-like rows): K extra adjoint channels of one descriptor pass instead of the
    frame's design rows, a few plain predictions per frame. Never larger than
    :func:`frame_score`; equal at full rank (``rank=None`` or >= the number of weights).

    positions (N, 3) Å; numbers (N,) int; cell (3, 3) Å, rows = lattice vectors; pbc (3,) bool.
    """
    _needs_posterior(model, "uncertainty")
    d = _lowrank_scorer(model, rank).channels(model, positions, numbers, cell, pbc, where)
    return float(np.einsum("rk,rk->", d, d)) / d.shape[0]


def _lowrank_scorer(model, rank) -> _LowRankScorer:
    key = (id(model.weights), id(model.covariance), rank)
    cached = getattr(model, "_lowrank_scorer_cache", None)
    if cached is None or cached[0] != key:
        cached = (key, _LowRankScorer(model, rank))
        model._lowrank_scorer_cache = cached
    return cached[1]


def frame_fingerprint(model, positions, numbers, cell, pbc, where: str = "") -> np.ndarray:
    """Descriptor-space summary of one frame: (S * D,) float64, dimensionless.

    For each of the model's S species (sorted atomic numbers) the mean unit scalar descriptor
    (D features, the model's descriptor settings) of its atoms, zeros for a species absent from
    the frame. Euclidean distances between fingerprints measure how different two frames'
    environments are.
    """
    from numbec.descriptors import compute_descriptors
    from numbec.models import kernels

    numbers = np.asarray(numbers, dtype=np.int64)
    desc = compute_descriptors(np.asarray(positions, dtype=np.float64), numbers,
                               np.asarray(cell, dtype=np.float64), pbc, model.settings)
    unit, _ = kernels.normalize(desc.values, where or "select")
    parts = []
    for z in model.species:
        rows = numbers == z
        parts.append(unit[rows].mean(axis=0) if rows.any() else np.zeros(unit.shape[1]))
    return np.concatenate(parts)


def signal_variance(bec: np.ndarray, numbers: np.ndarray) -> float:
    """Variance of BEC components about their species means, e^2: the scale of what the
    kernel has to represent at a frame (``hybrid`` multiplies the representation error by
    it). bec (N, 3, 3) e; numbers (N,) int."""
    bec = np.asarray(bec, dtype=np.float64)
    numbers = np.asarray(numbers)
    total = 0.0
    for z in np.unique(numbers):
        part = bec[numbers == z]
        total += float(np.sum((part - part.mean(axis=0)) ** 2))
    return total / bec.size


# ---------------------------------------------------------------------------- frame sources
class _Frames:
    """Frames of a trajectory store, an xarray Dataset in its layout, or a list of ase.Atoms.

    ``times`` (F,) fs (NaN where unknown); :meth:`chunks` yields ``(first index, [(positions,
    numbers, cell, pbc), ...])`` a store chunk at a time; :meth:`frame` reads one frame.
    """

    def __init__(self, source, chunk_frames=None):
        from ase import Atoms

        if isinstance(source, Atoms):
            source = [source]
        if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
            self.atoms = list(source)
            if not self.atoms:
                raise ValueError("select: no frames given (empty list)")
            self.name = "<frames>"
            self.ds = None
            self.n_frames = len(self.atoms)
            times = [a.info.get("time", np.nan) for a in self.atoms]
            self.times = np.asarray(times, dtype=np.float64)
            self.chunk = 1
            return
        from numbec.stream import _open_input, _validate

        ds, name, _ = _open_input(source)
        _validate(ds, name)
        self.atoms = None
        self.ds = ds
        self.name = name
        self.n_frames = int(ds.sizes["frame"])
        self.numbers = np.asarray(ds["numbers"].values, dtype=np.int64)
        self.pbc = np.asarray(ds["pbc"].values, dtype=bool)
        self.times = (np.asarray(ds["time"].values, dtype=np.float64) if "time" in ds.coords
                      else np.full(self.n_frames, np.nan))
        store_chunk = ds.attrs.get("chunk_frames")
        self.chunk = int(chunk_frames or store_chunk or 64)

    def where(self, k: int) -> str:
        return f"{self.name}: frame {k}"

    def frame(self, k: int):
        if self.atoms is not None:
            a = self.atoms[k]
            return a.positions, a.numbers, np.asarray(a.cell), a.pbc
        pos = np.asarray(self.ds["positions"][k].values, dtype=np.float64)
        cell = np.asarray(self.ds["cell"][k].values, dtype=np.float64)
        return pos, self.numbers, cell, self.pbc

    def chunks(self):
        if self.atoms is not None:
            for k in range(self.n_frames):
                yield k, [self.frame(k)]
            return
        for start in range(0, self.n_frames, self.chunk):
            stop = min(start + self.chunk, self.n_frames)
            pos = np.asarray(self.ds["positions"][start:stop].values, dtype=np.float64)
            cell = np.asarray(self.ds["cell"][start:stop].values, dtype=np.float64)
            bad = ~np.isfinite(pos).all(axis=(1, 2))
            if bad.any():
                k = start + int(np.flatnonzero(bad)[0])
                raise ValueError(f"{self.where(k)}: positions contain NaN or inf")
            yield start, [(pos[f], self.numbers, cell[f], self.pbc) for f in range(stop - start)]

    def to_atoms(self, k: int):
        """The frame as an ase.Atoms with ``info["frame"]`` and ``info["time"]`` (fs, if known)."""
        from ase import Atoms

        if self.atoms is not None:
            atoms = self.atoms[k].copy()
        else:
            pos, numbers, cell, pbc = self.frame(k)
            atoms = Atoms(numbers=numbers, positions=pos, cell=cell, pbc=pbc)
        atoms.info["frame"] = int(k)
        if np.isfinite(self.times[k]):
            atoms.info["time"] = float(self.times[k])
        return atoms


# ---------------------------------------------------------------------------- result
@dataclasses.dataclass
class Selection:
    """Frames chosen by :func:`select`, in the order they were picked.

    indices (n,) int64 frame indices of the trajectory; times (n,) float64 fs (NaN unknown);
    scores (n,) float64 e: for ``uncertainty``/``diverse``/``reduction`` the RMS epistemic BEC
    standard deviation ``sqrt(v_f)`` of the frame when it was picked (for ``uncertainty`` after
    the earlier picks were added to the posterior), for ``hybrid`` ``sqrt(v_f + p_f rho_f)``,
    NaN for ``random``/``stride``;
    pool_score_mean / pool_score_max (e): ``sqrt`` of the mean and largest ``v_f`` (``hybrid``:
    ``v_f + p_f rho_f``) over all frames scanned (NaN when not scored); strategy; n_frames
    scanned; seconds of wall time; score: how the pool was scored (``"lowrank K=32"``,
    ``"exact"``, ``"custom"``; ``""`` for ``random``/``stride``); pick_score: the estimator of
    ``scores`` (the same as ``score``, except ``"exact"`` for a custom score). Only numbers of
    the same estimator compare: ``lowrank`` is the variance in the K leading posterior
    directions, a lower bound of ``exact``.
    """

    indices: np.ndarray
    times: np.ndarray
    scores: np.ndarray
    strategy: str
    n_frames: int
    pool_score_mean: float = math.nan
    pool_score_max: float = math.nan
    seconds: float = 0.0
    source: str = ""
    score: str = ""
    pick_score: str = ""

    def to_dict(self) -> dict:
        """JSON-ready summary (NaN -> None)."""
        def clean(x):
            return None if isinstance(x, float) and not math.isfinite(x) else x

        return {
            "strategy": self.strategy, "score": self.score, "pick_score": self.pick_score,
            "source": self.source,
            "n_frames": self.n_frames,
            "frames": [int(i) for i in self.indices],
            "times_fs": [clean(float(t)) for t in self.times],
            "scores_e": [clean(float(s)) for s in self.scores],
            "pool_score_mean_e": clean(float(self.pool_score_mean)),
            "pool_score_max_e": clean(float(self.pool_score_max)),
            "seconds": self.seconds,
        }


# ---------------------------------------------------------------------------- separation
class _Separation:
    """Minimum time separation between picked (and excluded) frames."""

    def __init__(self, times: np.ndarray, min_separation: float):
        self.min = float(min_separation)
        if not self.min >= 0:
            raise ValueError(f"min_separation must be >= 0, got {min_separation}")
        known = np.isfinite(times).all()
        # without a time axis the separation counts frames
        self.axis = times if known else np.arange(times.size, dtype=np.float64)
        self.unit = "fs" if known else "frames"
        self.taken: list[float] = []

    def ok(self, k: int) -> bool:
        if self.min == 0 or not self.taken:
            return True
        t = self.axis[k]
        return all(abs(t - s) >= self.min for s in self.taken)

    def ok_many(self, ks: np.ndarray) -> np.ndarray:
        if self.min == 0 or not self.taken:
            return np.ones(len(ks), dtype=bool)
        t = self.axis[np.asarray(ks)]
        return (np.abs(t[:, None] - np.asarray(self.taken)[None, :]) >= self.min).all(axis=1)

    def take(self, k: int) -> None:
        self.taken.append(float(self.axis[k]))

    def max_picks(self, eligible: np.ndarray) -> int:
        """The largest number of the ``eligible`` frames (F,) bool that can be picked at least
        ``min`` apart: earliest first, which is optimal for points on a line."""
        t = np.sort(self.axis[eligible])
        if self.min == 0:
            return int(t.size)
        count, last = 0, -math.inf
        for x in t:
            if x - last >= self.min:
                count, last = count + 1, x
        return count


# ---------------------------------------------------------------------------- select
def select(model, trajectory, n: int, strategy: str = "uncertainty", *,
           min_separation: float = 0.0, exclude=(), candidates: int | None = None,
           seed: int = 0, score: str | Callable = "lowrank",
           uncertainty_rank: int | None = UNCERTAINTY_RANK, chunk_frames: int | None = None,
           max_memory: int = MAX_MEMORY, progress: bool = False) -> Selection:
    """Pick ``n`` frames of ``trajectory`` to label next (see the module docstring).

    Parameters
    ----------
    model : fitted kernel model (MonopoleModel, DipoleModel, CombinedModel); for ``random`` and
        ``stride`` any model or None.
    trajectory : trajectory store path, xarray.Dataset (:func:`numbec.open_trajectory`) or a
        list of ase.Atoms (``info["time"]`` in fs used where every frame has it).
    n : number of frames to pick; fewer are returned (with a warning, before any scoring
        when ``exclude`` and ``min_separation`` allow fewer than ``n``) when the constraints
        leave fewer frames, none when no frame can be picked. ValueError when every frame is
        excluded.
    strategy : one of :data:`STRATEGIES`.
    min_separation : fs (frames where the trajectory has no time): smallest allowed distance
        in time between two picked frames and between a picked and an excluded frame.
    exclude : frame indices already labelled (never picked).
    candidates : frames kept after the scoring pass; default ``min(F, max(20 n, 200))`` for
        ``uncertainty`` and ``reduction`` (memory-capped) and ``max(4 n, 20)`` for
        ``diverse``.
    seed : seed of ``random``.
    score : how the first pass scores a frame: ``"lowrank"`` (default,
        :func:`frame_score_lowrank` with ``uncertainty_rank`` directions, a few plain
        predictions per frame), ``"exact"`` (:func:`frame_score`, the frame's design rows,
        about one training step per frame), or a callable ``score(model, positions, numbers,
        cell, pbc, where) -> float`` (e^2, larger = more worth labelling). The greedy stage
        of ``uncertainty``/``hybrid``/``reduction`` updates the posterior in the K directions
        for ``lowrank``, with the exact Gram matrices for ``exact`` and (rebuilt in a second
        pass over the candidates) for a custom score.
    uncertainty_rank : K of the ``lowrank`` score (None: full rank, equal to ``exact``).
    chunk_frames : frames read at a time from a store (default: its chunks).
    max_memory : bytes allowed for the candidates' Gram matrices (``uncertainty``; K x K
        each for ``lowrank``, M x M otherwise).

    Returns
    -------
    Selection
    """
    t0 = _time.perf_counter()
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
    if not callable(score) and score not in SCORES:
        raise ValueError(f"unknown score {score!r}; use one of {SCORES} or a function")
    if uncertainty_rank is not None and int(uncertainty_rank) < 1:
        raise ValueError(f"uncertainty_rank must be >= 1, got {uncertainty_rank}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    frames = _Frames(trajectory, chunk_frames)
    excluded = np.zeros(frames.n_frames, dtype=bool)
    for k in exclude:
        k = int(k)
        if not 0 <= k < frames.n_frames:
            raise ValueError(f"exclude: frame {k} is outside the {frames.n_frames} frames of "
                             f"{frames.name}")
        excluded[k] = True
    sep = _Separation(frames.times, min_separation)
    for k in np.flatnonzero(excluded):
        sep.take(int(k))
    # checked before any frame is scored: scoring a long trajectory takes minutes
    eligible = ~excluded & sep.ok_many(np.arange(frames.n_frames))
    if excluded.all():
        raise ValueError(f"{frames.name}: every frame is excluded; nothing to select")
    most = sep.max_picks(eligible)
    if most < n:
        warnings.warn(f"{frames.name}: at most {most} of the {n} frames asked for can be "
                      f"picked ({int(excluded.sum())} excluded, min_separation "
                      f"{sep.min:g} {sep.unit})", stacklevel=2)
    if most == 0:
        result = Selection(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), strategy,
                           frames.n_frames)
        result.seconds = _time.perf_counter() - t0
        result.source = frames.name
        return result

    if strategy in ("random", "stride"):
        picked = _baseline_pick(strategy, n, excluded, sep, seed)
        result = Selection(np.asarray(picked, dtype=np.int64), frames.times[picked],
                           np.full(len(picked), np.nan), strategy, frames.n_frames)
    else:
        _needs_posterior(model, strategy)
        if candidates is None:
            candidates = max(4 * n, 20) if strategy == "diverse" else max(20 * n, 200)
        candidates = int(candidates)
        if candidates < n:
            raise ValueError(f"candidates ({candidates}) must be >= n ({n})")
        if strategy != "diverse":
            # the candidates keep Gram matrices in the space of the score: K x K for lowrank
            m = model.covariance.shape[0]
            if score == "lowrank" and uncertainty_rank is not None:
                m = min(m, int(uncertainty_rank))
            cap = max(n, int(max_memory // (8 * m * m)))
            candidates = min(candidates, cap)
        scan = _scan(model, frames, ~eligible, strategy, candidates, score, uncertainty_rank,
                     progress, excluded)
        if strategy != "diverse":
            picked, scores = _greedy_posterior(model, frames, scan, n, sep,
                                               pool_gain=strategy == "reduction",
                                               hybrid=strategy == "hybrid")
        else:
            picked, scores = _farthest_points(scan, n, sep)
        result = Selection(np.asarray(picked, dtype=np.int64), frames.times[picked],
                           np.sqrt(np.asarray(scores, dtype=np.float64)), strategy,
                           frames.n_frames, math.sqrt(scan["mean"]), math.sqrt(scan["max"]))
        result.score = ("custom" if callable(score) else "exact" if score == "exact" else
                        f"lowrank K={'full' if uncertainty_rank is None else uncertainty_rank}")
        # a custom score gives no Gram matrices: the greedy stage uses the exact ones
        result.pick_score = "exact" if callable(score) else result.score
    if most >= n > len(result.indices):
        more = (" among the candidates; raise candidates for more"
                if strategy not in ("random", "stride") else "")
        warnings.warn(f"{frames.name}: picked only {len(result.indices)} of the {n} frames "
                      f"asked for: no other frame is min_separation {sep.min:g} {sep.unit} "
                      f"from every pick and excluded frame{more}", stacklevel=2)
    result.seconds = _time.perf_counter() - t0
    result.source = frames.name
    return result


def _baseline_pick(strategy, n, excluded, sep, seed) -> list[int]:
    eligible = np.flatnonzero(~excluded)
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(eligible)
        picked = []
        for k in order:
            if len(picked) == n:
                break
            if sep.ok(int(k)):
                picked.append(int(k))
                sep.take(int(k))
        return picked
    if not excluded.any():  # evenly spaced over the whole trajectory
        first = np.unique(np.linspace(0, excluded.size - 1, min(n, excluded.size))
                          .round().astype(np.int64))
        picked = []
        for k in first:
            if sep.ok(int(k)):
                picked.append(int(k))
                sep.take(int(k))
        if len(picked) == n:
            return picked
    else:
        picked = []
    # fill the largest gaps: each pick is the eligible frame farthest (in frames) from every
    # labelled and picked frame
    taken = np.concatenate([np.flatnonzero(excluded), np.asarray(picked, dtype=np.int64)])
    gap = np.min(np.abs(np.arange(excluded.size)[:, None] - taken[None, :]), axis=1)
    alive = ~excluded
    alive[picked] = False
    while len(picked) < n:
        alive &= sep.ok_many(np.arange(excluded.size))
        if not alive.any():
            break
        k = int(np.argmax(np.where(alive, gap, -1)))
        picked.append(k)
        sep.take(k)
        alive[k] = False
        gap = np.minimum(gap, np.abs(np.arange(excluded.size) - k))
    return sorted(picked)


def _scan(model, frames, skip, strategy, n_keep, score, rank, progress, excluded) -> dict:
    """First pass over every frame not in ``skip`` (excluded, or too close in time to an
    excluded frame): score, keep the ``n_keep`` best (with their Gram matrix, in the K
    directions for ``lowrank``, or fingerprint); fingerprints of excluded frames too
    (``diverse``)."""
    from tqdm.auto import tqdm

    custom = callable(score)
    lowrank = _lowrank_scorer(model, rank) if score == "lowrank" else None
    hybrid = strategy == "hybrid"
    coverage = nystrom_residual(model) if hybrid else None
    pool_low = None  # sum over scanned frames of D_f^T D_f / R_f (``reduction``), (K, K)
    heap: list = []  # (variance, index, payload), a min-heap of the best n_keep
    pool_gram = None  # sum over scanned frames of G_f / R_f (``reduction``), (M, M)
    total, worst, count = 0.0, 0.0, 0
    excluded_prints = []
    bar = tqdm(total=frames.n_frames, desc="scoring", disable=not progress)
    for start, chunk in frames.chunks():
        for f, (pos, numbers, cell, pbc) in enumerate(chunk):
            k = start + f
            where = frames.where(k)
            if excluded[k] and strategy == "diverse":
                excluded_prints.append(frame_fingerprint(model, pos, numbers, cell, pbc, where))
            if skip[k]:
                continue
            if lowrank is not None:
                d = lowrank.channels(model, pos, numbers, cell, pbc, where)
                low = d.T @ d
                var = float(np.trace(low)) / d.shape[0]
                payload = (low, d.shape[0]) if strategy != "diverse" else None
                if strategy == "reduction":
                    pool_low = low / d.shape[0] + (0.0 if pool_low is None else pool_low)
            elif custom:
                var, payload = float(score(model, pos, numbers, cell, pbc, where)), None
            else:
                phi = frame_design(model, pos, numbers, cell, pbc, where)
                gram = phi.T @ phi
                var = _variance_from_gram(model.covariance, gram, phi.shape[0])
                payload = (gram, phi.shape[0]) if strategy != "diverse" else None
                pool_gram = gram / phi.shape[0] + (0.0 if pool_gram is None else pool_gram)
            units = None
            if hybrid:
                bec = model.predict_arrays(pos, numbers, cell, pbc)["bec"]
                units = (unit_descriptors(model, pos, numbers, cell, pbc, where), numbers,
                         signal_variance(bec, numbers))
                var += units[2] * float(np.mean(coverage.residual(*units[:2])))
            if not math.isfinite(var):
                raise ValueError(f"{where}: score is {var}")
            total += var
            worst = max(worst, var)
            count += 1
            if len(heap) < n_keep or var > heap[0][0]:
                if strategy == "diverse":
                    payload = frame_fingerprint(model, pos, numbers, cell, pbc, where)
                item = (var, -k, payload, units)
                if len(heap) < n_keep:
                    heapq.heappush(heap, item)
                else:
                    heapq.heapreplace(heap, item)
        bar.update(len(chunk))
    bar.close()
    if pool_low is not None:
        pool_gram = pool_low
    heap.sort(key=lambda item: (-item[0], -item[1]))
    return {"index": np.array([-item[1] for item in heap], dtype=np.int64),
            "variance": np.array([item[0] for item in heap]),
            "payload": [item[2] for item in heap], "custom": custom,
            "units": [item[3] for item in heap],
            "excluded_prints": excluded_prints, "pool_gram": pool_gram, "count": count,
            "lowrank": lowrank is not None,
            "mean": total / count, "max": worst}


def _greedy_posterior(model, frames, scan, n, sep, pool_gain=False, hybrid=False):
    """Greedy selection under the posterior, updated after each pick: the candidate of largest
    own variance ``v_f``, or (``pool_gain``) of largest reduction of the pool's mean variance
    ``(1/F) sum_g [v_g(Sigma) - v_g(Sigma'_f)]`` with ``Sigma'_f = (Sigma^-1 + G_f /
    sigma_v^2)^-1``, or (``hybrid``) of largest ``v_f + p rho_f`` with the picked frames'
    environments added to the references of the residual. Returns picked indices and each
    one's key (``v_f`` or ``v_f + p rho_f``) when picked.

    With the ``lowrank`` score the posterior is that of the K directions, weights ``L z`` with
    ``z ~ N(0, I)`` (``Sigma ~ L L^T``), and the Gram matrices are ``D_f^T D_f`` (K, K) from
    the scoring pass: the picks' scores are on the same estimator as the pool's, and no
    design rows are built (exact at full rank)."""
    import scipy.linalg

    index = scan["index"]
    if scan["custom"]:  # the score gave no Gram matrices: build exact ones for the candidates
        payload = []
        for k in index:
            pos, numbers, cell, pbc = frames.frame(int(k))
            phi = frame_design(model, pos, numbers, cell, pbc, frames.where(int(k)))
            payload.append((phi.T @ phi, phi.shape[0]))
    else:
        payload = scan["payload"]
    grams = np.stack([g for g, _ in payload])                    # (C, M, M)
    rows = np.array([r for _, r in payload], dtype=np.float64)   # (C,)
    if scan["lowrank"]:
        m = grams.shape[1]
        cov, precision = np.eye(m), np.eye(m)
    else:
        cov = np.array(model.covariance, dtype=np.float64)
        m = cov.shape[0]
        precision = scipy.linalg.cho_solve(scipy.linalg.cho_factor(cov), np.eye(m))
    noise = float(model.sigma_v2)
    pool_gram = None
    if pool_gain:
        pool_gram = scan["pool_gram"]
        if pool_gram is None:  # a custom score: the pool mean over the candidates instead
            pool_gram = np.einsum("cij,c->ij", grams, 1.0 / rows)
            pool_size = index.size
        else:
            pool_size = scan["count"]
        pool_gram = pool_gram / pool_size
    coverage = None
    if hybrid:  # a copy: the picks grow its references
        coverage = NystromResidual(model)
        units = scan["units"]
    alive = np.ones(index.size, dtype=bool)
    picked, scores = [], []
    while len(picked) < n:
        alive &= sep.ok_many(index)
        if not alive.any():
            break
        var = np.clip(np.einsum("ij,cij->c", cov, grams) / rows, 0.0, None)
        if hybrid:
            var = var + np.array(
                [units[c][2] * float(np.mean(coverage.residual(*units[c][:2]))) if alive[c]
                 else 0.0 for c in range(index.size)])
        if pool_gain:
            now = float(np.einsum("ij,ij->", cov, pool_gram))
            key = np.full(index.size, -np.inf)
            for c in np.flatnonzero(alive):
                after = scipy.linalg.cho_solve(
                    scipy.linalg.cho_factor(precision + grams[c] / noise), pool_gram)
                key[c] = now - float(np.trace(after))
        else:
            key = np.where(alive, var, -np.inf)
        c = int(np.argmax(key))
        picked.append(int(index[c]))
        scores.append(float(var[c]))
        alive[c] = False
        sep.take(int(index[c]))
        if hybrid:
            coverage.add(*units[c][:2])
        precision = precision + grams[c] / noise
        precision = 0.5 * (precision + precision.T)
        cov = scipy.linalg.cho_solve(scipy.linalg.cho_factor(precision), np.eye(m))
    return picked, scores


def _farthest_points(scan, n, sep):
    """Farthest-point sampling in fingerprint space among the candidates."""
    index = scan["index"]
    prints = np.stack(scan["payload"])
    var = scan["variance"]
    dist = np.full(index.size, np.inf)
    for ref in scan["excluded_prints"]:
        dist = np.minimum(dist, np.linalg.norm(prints - ref, axis=1))
    alive = np.ones(index.size, dtype=bool)
    picked, scores = [], []
    while len(picked) < n:
        alive &= sep.ok_many(index)
        if not alive.any():
            break
        if np.isinf(dist[alive]).all():  # nothing labelled yet: the most uncertain first
            key = np.where(alive, var, -np.inf)
        else:
            key = np.where(alive, dist, -np.inf)
        c = int(np.argmax(key))
        picked.append(int(index[c]))
        scores.append(float(var[c]))
        alive[c] = False
        sep.take(int(index[c]))
        dist = np.minimum(dist, np.linalg.norm(prints - prints[c], axis=1))
    return picked, scores

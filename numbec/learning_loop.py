"""The closed active-learning loop for a labeller that is a Python function.

:func:`active_learning` repeats *train -> score the pool -> select -> label* from a few
frames up to a budget, with :func:`numbec.selection.select` choosing each round's frames and
a user function computing their reference BECs (an xTB finite-difference APT, or a lookup
in an already labelled set for retrospective benchmarks). Every round is recorded
(:class:`RoundRecord`): which frames were chosen, the model's error on a test set if one is
given, the pool's predicted uncertainty, and whatever a ``callback`` measures (e.g. the
spectrum's error or its model-uncertainty band).

The first ``n_initial`` frames are evenly spaced over the pool (``initial="stride"``, the
same for every strategy, so that strategies differ only in what they add) or random.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["ActiveLearningResult", "RoundRecord", "active_learning", "kernel_trainer"]


@dataclasses.dataclass
class RoundRecord:
    """One round of :func:`active_learning`.

    round (0 = the initial set); n_train frames the model of this round was trained on;
    added: pool indices labelled in this round (the initial set in round 0); test_rmse (e,
    all BEC components against the raw reference, :func:`numbec.evaluate`) or None;
    pool_std_mean / pool_std_max (e): RMS epistemic BEC standard deviation over the unlabelled
    pool (mean and largest frame) before this round's selection, None where not scored;
    fit_seconds, select_seconds, label_seconds; extra: what ``callback`` returned.
    """

    round: int
    n_train: int
    added: list
    test_rmse: float | None = None
    pool_std_mean: float | None = None
    pool_std_max: float | None = None
    fit_seconds: float = 0.0
    select_seconds: float = 0.0
    label_seconds: float = 0.0
    extra: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ActiveLearningResult:
    """records: one :class:`RoundRecord` per trained model; model: the last model;
    labelled: pool indices in the order they were labelled; frames: the labelled structures
    (with ``arrays["bec"]``); strategy."""

    records: list
    model: object
    labelled: list
    frames: list
    strategy: str

    def learning_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_train (R,), test_rmse (R,) e, NaN where no test set)."""
        n = np.array([r.n_train for r in self.records])
        err = np.array([np.nan if r.test_rmse is None else r.test_rmse for r in self.records])
        return n, err


def kernel_trainer(kind: str = "monopole", n_sparse: int = 100, settings=None,
                   sparse_fraction: float | None = None, **model_kw) -> Callable:
    """A ``train(frames) -> fitted model`` for :func:`active_learning`.

    kind: "monopole", "dipole" or "combined"; ``n_sparse`` per species, capped at the number of
    training environments of each species (so that 5 frames can be fitted); settings:
    DescriptorSettings or None (the defaults for the species present); ``model_kw``: other
    model keywords (zeta, sparse_method, regression, seed).

    sparse_fraction: None (a fixed sparse set, ``n_sparse`` per species) or f in (0, 1]: a
    sparse set that grows with the labelled data, ``min(n_sparse, ceil(f * n_env))`` sparse
    points for a species with ``n_env`` training environments (``n_sparse`` is then the cap).
    With a fixed set, each refit picks the same number of points among more environments, so
    the model's capacity stops growing once ``n_sparse`` is reached; with a fraction it grows
    with every labelled frame until the cap.
    """
    from numbec import models

    classes = {"monopole": models.MonopoleModel, "dipole": models.DipoleModel,
               "combined": models.CombinedModel}
    if kind not in classes:
        raise ValueError(f"unknown model kind {kind!r}; use one of {tuple(classes)}")
    if sparse_fraction is not None and not 0.0 < float(sparse_fraction) <= 1.0:
        raise ValueError(f"sparse_fraction must be in (0, 1] or None, got {sparse_fraction}")

    def train(frames):
        counts: dict[int, int] = {}
        for atoms in frames:
            for z, c in zip(*np.unique(atoms.numbers, return_counts=True), strict=True):
                counts[int(z)] = counts.get(int(z), 0) + int(c)
        capped = {z: min(int(n_sparse), c if sparse_fraction is None
                         else math.ceil(float(sparse_fraction) * c))
                  for z, c in counts.items()}
        return classes[kind](settings=settings, n_sparse=capped, **model_kw).fit(frames)

    return train


def _initial(pool_size: int, n: int, how: str, seed: int) -> list[int]:
    if how == "stride":
        return [int(k) for k in np.unique(np.linspace(0, pool_size - 1, n).round().astype(int))]
    if how == "random":
        return [int(k) for k in np.random.default_rng(seed).choice(pool_size, n, replace=False)]
    raise ValueError(f"initial must be 'stride' or 'random', got {how!r}")


def _check_label(atoms, k: int):
    if atoms is None or "bec" not in getattr(atoms, "arrays", {}):
        raise ValueError(f"label(pool frame {k}) returned no structure with arrays['bec']")
    if not np.isfinite(atoms.arrays["bec"]).all():
        raise ValueError(f"label(pool frame {k}): BECs contain NaN or inf")
    return atoms


def active_learning(pool: Sequence, label: Callable, train: Callable | None = None, *,
                    strategy: str = "uncertainty", n_initial: int = 5, n_per_round: int = 5,
                    n_max: int = 40, test: Sequence | None = None, initial: str = "stride",
                    min_separation: float = 0.0, candidates: int | None = None, seed: int = 0,
                    callback: Callable | None = None, log: Callable | None = None
                    ) -> ActiveLearningResult:
    """Train, select, label and retrain until ``n_max`` frames are labelled.

    Parameters
    ----------
    pool : list of ase.Atoms, the unlabelled candidates (positions Å, cell, pbc; optional
        ``info["time"]`` fs for ``min_separation``).
    label : ``label(index, atoms) -> ase.Atoms`` with ``arrays["bec"]`` (N, 3, 3) e, canonical
        layout ``Z[a, i, j] = dP_i/dr_{a,j}`` (and for molecules optionally ``info["dipole"]``,
        e·Å); ``index`` is the position in ``pool``.
    train : ``train(frames) -> fitted model``; default :func:`kernel_trainer` ("monopole").
    strategy : one of :data:`numbec.selection.STRATEGIES`.
    n_initial, n_per_round, n_max : frames labelled first, per round, and in total.
    test : list of ase.Atoms with reference ``arrays["bec"]``: each round's model is
        evaluated on them (``test_rmse``).
    initial : "stride" (evenly spaced over the pool) or "random" (seeded).
    min_separation, candidates : passed to :func:`numbec.selection.select`.
    seed : seed of the random initial set and of the ``random`` strategy (round r uses
        ``seed + r``).
    callback : ``callback(model, record) -> dict`` merged into ``record.extra`` (e.g. a
        spectral error); called after each fit.
    log : ``log(str)`` progress messages (e.g. ``print``); None: silent.

    Returns
    -------
    ActiveLearningResult
    """
    from numbec.models.evaluate import bec_metrics
    from numbec.selection import STRATEGIES, select

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
    pool = list(pool)
    if not 1 <= n_initial <= n_max <= len(pool):
        raise ValueError(f"need 1 <= n_initial ({n_initial}) <= n_max ({n_max}) <= pool size "
                         f"({len(pool)})")
    if n_per_round < 1:
        raise ValueError(f"n_per_round must be >= 1, got {n_per_round}")
    train = train or kernel_trainer()
    say = log or (lambda text: None)

    t0 = time.perf_counter()
    added = _initial(len(pool), n_initial, initial, seed)
    labelled_idx: list[int] = []
    labelled: list = []
    records = []
    model = None
    pool_std = (None, None)
    select_seconds = 0.0
    for rnd in range(10**6):
        t0 = time.perf_counter()
        labelled.extend(_check_label(label(k, pool[k]), k) for k in added)
        labelled_idx.extend(added)
        label_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = train(labelled)
        record = RoundRecord(round=rnd, n_train=len(labelled), added=list(added),
                             pool_std_mean=pool_std[0], pool_std_max=pool_std[1],
                             fit_seconds=time.perf_counter() - t0,
                             select_seconds=select_seconds, label_seconds=label_seconds)
        if test is not None:
            pred = np.concatenate([model.predict(a)["bec"] for a in test])
            ref = np.concatenate([np.asarray(a.arrays["bec"]) for a in test])
            record.test_rmse = float(bec_metrics(pred, ref)["rmse"])
        if callback is not None:
            record.extra.update(callback(model, record) or {})
        records.append(record)
        say(f"round {rnd}: {record.n_train} frames, test RMSE "
            f"{'-' if record.test_rmse is None else f'{record.test_rmse:.4f} e'}"
            f", fit {record.fit_seconds:.1f} s, select {select_seconds:.1f} s")
        n_next = min(n_per_round, n_max - len(labelled))
        if n_next <= 0:
            break
        t0 = time.perf_counter()
        chosen = select(model, pool, n_next, strategy, min_separation=min_separation,
                        exclude=labelled_idx, candidates=candidates, seed=seed + rnd)
        select_seconds = time.perf_counter() - t0
        pool_std = tuple(None if not math.isfinite(v) else float(v)
                         for v in (chosen.pool_score_mean, chosen.pool_score_max))
        added = [int(k) for k in chosen.indices]
        if not added:
            say(f"round {rnd}: no eligible frame left (min_separation {min_separation})")
            break
    return ActiveLearningResult(records, model, labelled_idx, labelled, strategy)

"""Error metrics of a BEC model on reference frames, side by side with a species-mean baseline.

:func:`evaluate` predicts every frame and compares the predicted BECs with the reference
BECs of the frames, component by component.

What is compared
----------------
The **raw reference BECs** ``atoms.arrays["bec"]`` (canonical layout
``Z[a, i, j] = dP_i/dr_{a,j}``, e), *not* projected onto the acoustic sum rule (ASR).
The models are trained on ASR-projected targets and predict BECs that satisfy the ASR, so
the reference's own ASR violation (DFPT: ~1e-6 e for the QE sets, ~3e-4 e summed over the
cell for the VASP ZrO2 set) counts as error; it is reported under ``"reference_asr_max"``
so that one can see it is negligible (its contribution to the RMSE is at most
``reference_asr_max / N``).

Metrics (every group of BEC components, all in e except ``r2``)
--------------------------------------------------------------
``rmse``       ``sqrt(mean(err**2))`` with ``err = Z_pred - Z_ref`` over the components.
``mae``        ``mean(|err|)``.
``max_error``  ``max(|err|)``.
``r2``         ``1 - sum(err**2) / sum((Z_ref - mean(Z_ref))**2)``, the mean taken over the
               reference components of the same group (pooled). Over all components it is
               dominated by the differences between species, so compare it with the
               baseline's; per species and per Cartesian component it is more telling.
               ``nan`` when the group's reference has no variance.
``n_values``   number of BEC components in the group.

Groups: all components (top level); ``per_species`` (keyed by chemical symbol, plus
``n_atoms``); ``per_component`` with ``"diagonal"`` (``Z[a, i, i]``) and ``"off_diagonal"``
(``Z[a, i, j]``, ``i != j``); ``per_cartesian`` with keys ``"xx"`` ... ``"zz"``, the first
letter the polarisation direction ``i``, the second the displacement direction ``j``.
"""

from __future__ import annotations

import time

import numpy as np

from numbec.conventions import as_bec_array, first_non_finite
from numbec.models.base import BECModel

__all__ = ["bec_metrics", "evaluate"]

_AXES = "xyz"


def _where(k: int, atoms) -> str:
    source = atoms.info.get("source") if hasattr(atoms, "info") else None
    return f"frame {k}" + (f" ({source})" if source else "")


def _reference(frames) -> tuple[list, np.ndarray, np.ndarray]:
    """Check the frames; return (frames, reference BECs (M, 3, 3), numbers (M,))."""
    if frames is None:
        raise ValueError("evaluate: no frames given")
    from ase import Atoms

    if isinstance(frames, Atoms):
        frames = [frames]
    frames = list(frames)
    if not frames:
        raise ValueError("evaluate: no frames given (empty list)")
    refs, numbers = [], []
    for k, atoms in enumerate(frames):
        where = _where(k, atoms)
        if "bec" not in atoms.arrays:
            raise ValueError(
                f"{where}: no reference BECs (atoms.arrays['bec']); read the data with "
                "numbec.read_bec"
            )
        ref = as_bec_array(atoms.arrays["bec"], where=where)
        if ref.shape[0] != len(atoms):
            raise ValueError(
                f"{where}: {ref.shape[0]} reference BEC tensors for {len(atoms)} atoms"
            )
        refs.append(ref)
        numbers.append(np.asarray(atoms.numbers, dtype=np.int64))
    return frames, np.concatenate(refs), np.concatenate(numbers)


def _predict_all(model: BECModel, frames, what: str, progress: bool = False, std=None
                 ) -> tuple[np.ndarray, float]:
    """Predicted BECs of all frames, (M, 3, 3), and the wall time of the predictions (s).
    ``std``: a list that receives each frame's ``bec_std`` (then predicted with uncertainty)."""
    from tqdm.auto import tqdm

    out = []
    start = time.perf_counter()
    for k, atoms in enumerate(tqdm(frames, desc=what, disable=not progress, leave=False)):
        where = _where(k, atoms)
        try:
            result = model.predict(atoms, **({} if std is None else {"uncertainty": True}))
        except ValueError as exc:  # name the frame; keep the class (UnknownSpeciesError, ...)
            try:
                named = type(exc)(f"{where}: {exc}")
            except TypeError:  # an exception class with another constructor
                named = ValueError(f"{where}: {exc}")
            raise named from exc
        bec = np.asarray(result["bec"], dtype=np.float64)
        if bec.shape != (len(atoms), 3, 3):
            raise ValueError(
                f"{where}: {what} returned BECs of shape {bec.shape}, expected "
                f"({len(atoms)}, 3, 3)"
            )
        bad = first_non_finite(bec, 1)
        if bad is not None:
            raise ValueError(f"{where}: {what} predicted a NaN/inf BEC for atom {bad[0]}")
        out.append(bec)
        if std is not None:
            std.append(np.asarray(result["bec_std"], dtype=np.float64))
    return np.concatenate(out), time.perf_counter() - start


def bec_metrics(predicted, reference) -> dict:
    """RMSE, MAE, max error and R^2 between two arrays of BEC components (any equal shapes).

    Parameters
    ----------
    predicted, reference : array_like, same shape, float64, e
        Compared element by element; every element is one BEC component.

    Returns
    -------
    dict
        ``rmse``, ``mae``, ``max_error`` (e), ``r2`` (pooled mean, see the module docstring;
        ``nan`` for a constant reference) and ``n_values``.
    """
    pred = np.asarray(predicted, dtype=np.float64).ravel()
    ref = np.asarray(reference, dtype=np.float64).ravel()
    if pred.shape != ref.shape:
        raise ValueError(f"predicted {pred.shape} and reference {ref.shape} differ in size")
    if ref.size == 0:
        raise ValueError("no values to compare")
    err = pred - ref
    sse = float(err @ err)
    sst = float(((ref - ref.mean()) ** 2).sum())
    return {
        "rmse": float(np.sqrt(sse / err.size)),
        "mae": float(np.abs(err).mean()),
        "max_error": float(np.abs(err).max()),
        "r2": 1.0 - sse / sst if sst > 0.0 else float("nan"),
        "n_values": int(err.size),
    }


def _metric_tree(pred: np.ndarray, ref: np.ndarray, numbers: np.ndarray) -> dict:
    from ase.data import chemical_symbols

    out = bec_metrics(pred, ref)
    out["per_species"] = {}
    for z in np.unique(numbers):
        mask = numbers == z
        entry = bec_metrics(pred[mask], ref[mask])
        entry["n_atoms"] = int(mask.sum())
        out["per_species"][chemical_symbols[int(z)]] = entry
    diag = np.eye(3, dtype=bool)
    out["per_component"] = {
        "diagonal": bec_metrics(pred[:, diag], ref[:, diag]),
        "off_diagonal": bec_metrics(pred[:, ~diag], ref[:, ~diag]),
    }
    out["per_cartesian"] = {
        _AXES[i] + _AXES[j]: bec_metrics(pred[:, i, j], ref[:, i, j])
        for i in range(3)
        for j in range(3)
    }
    return out


def _resolve_baseline(model, baseline, baseline_frames, frames):
    """Return (baseline model or None, note)."""
    from numbec.models.baseline import SpeciesMeanModel

    if baseline is False or baseline is None:
        return None, None
    if isinstance(baseline, BECModel):
        return baseline, f"given baseline model ({type(baseline).__name__})"
    if baseline is not True:
        raise TypeError(f"baseline must be True, False or a BECModel, got {baseline!r}")
    if baseline_frames is not None:
        baseline_frames = list(baseline_frames)
        fitted = SpeciesMeanModel.fit(baseline_frames)
        n = len(baseline_frames)
        return fitted, f"SpeciesMeanModel fitted on the {n} given baseline frames"
    own = getattr(model, "baseline_model", None)
    if isinstance(own, BECModel):
        return own, (f"the model's own baseline ({type(own).__name__}: species means of its "
                     "training data)")
    return SpeciesMeanModel.fit(frames), (
        f"SpeciesMeanModel fitted on the {len(frames)} evaluated frames themselves (no "
        "baseline_frames given): an optimistic baseline, its species means include the test data"
    )


def evaluate(model: BECModel, frames, *, baseline: bool | BECModel = True,
             baseline_frames=None, progress: bool | None = None,
             calibration: bool | None = None) -> dict:
    """Compare a model's BECs with the reference BECs of ``frames``.

    Parameters
    ----------
    model : BECModel
        Any numbec model (``model.predict(atoms)["bec"]``, (N, 3, 3), e).
    frames : list of ase.Atoms (or one)
        Each with reference ``arrays["bec"]`` (N, 3, 3) float64, e, canonical layout
        ``Z[a, i, j] = dP_i/dr_{a,j}`` (as :func:`numbec.read_bec` returns). Compared raw,
        without ASR projection (module docstring).
    baseline : bool or BECModel
        ``True`` (default): also evaluate a species-mean baseline (see ``baseline_frames``);
        a :class:`BECModel`: evaluate that one as the baseline; ``False``: no baseline.
    baseline_frames : list of ase.Atoms, optional
        Frames to fit the :class:`~numbec.models.baseline.SpeciesMeanModel` baseline on.
        Without them the model's own ``baseline_model`` is used (kernel models: the species
        means of their training data, stored in the model file), else the baseline is
        fitted on ``frames`` themselves (optimistic); ``"baseline_note"`` says which.
    progress : bool or None
        A progress bar over the frames (tqdm, stderr); None: when stderr is a terminal.
    calibration : bool, optional
        Also predict ``bec_std`` and report its calibration
        (:func:`numbec.models.uncertainty.calibration_metrics`: coverage of the nominal 68 %
        and 95 % intervals, negative log likelihood, rank correlation between each frame's
        predicted uncertainty and its actual error). Default: when the model lists
        ``bec_std`` in its outputs. Costs one design-row build per frame (``predict_seconds``
        then includes it).

    Returns
    -------
    dict (JSON-serialisable)
        ``rmse``, ``mae``, ``max_error``, ``r2``, ``n_values`` over all components;
        ``n_frames``, ``n_atoms``; ``per_species`` {symbol: metrics + ``n_atoms``};
        ``per_component`` {``"diagonal"``, ``"off_diagonal"``}; ``per_cartesian``
        {``"xx"``, ..., ``"zz"``}; ``model`` (class name); ``reference``
        (``"raw"``); ``reference_asr_max`` (e, largest ``|sum_a Z_ref[a] - Q I|`` component
        of any frame, Q from ``info["charge"]``); ``predict_seconds`` (wall time of the
        predictions); with calibration: ``calibration`` (dict, see ``calibration``); for
        kernel models ``environments``: how many of the frames' atoms lie beyond the
        training environments (:func:`numbec.models.representation.environment_check`: per
        species ``beyond``, the share past the training 99th percentile of the Nyström
        residual, about 1 % for frames like the training ones); with a baseline:
        ``baseline`` (same metric structure) and ``baseline_note``.

    Raises
    ------
    ValueError
        A frame without reference BECs or with a BEC count that differs from its atom
        count (the message names the frame index and its ``info["source"]``), a
        prediction of the wrong shape or with NaN/inf, or an empty frame list.
        :class:`~numbec.models.base.UnknownSpeciesError` (a ValueError) for species the
        model does not know, naming the frame.
    """
    from numbec.models._kernel_model import _show_progress
    from numbec.models.base import charge_arguments

    show = _show_progress(progress)
    frames, ref, numbers = _reference(frames)
    if calibration is None:
        calibration = "bec_std" in getattr(model, "outputs", ())
    std = [] if calibration else None
    pred, seconds = _predict_all(model, frames, type(model).__name__, show, std)
    result = _metric_tree(pred, ref, numbers)
    if calibration:
        from numbec.models.uncertainty import calibration_metrics

        result["calibration"] = calibration_metrics(pred, np.concatenate(std), ref,
                                                    [len(f) for f in frames])
    from numbec.models.representation import environment_check

    environments = environment_check(
        model, [(f.positions, f.numbers, np.asarray(f.cell), f.pbc) for f in frames])
    if environments is not None:
        result["environments"] = environments
    asr = max(float(np.abs(f.arrays["bec"].reshape(-1, 3, 3).sum(axis=0)
                           - charge_arguments(f).get("total_charge", 0.0) * np.eye(3)).max())
              for f in frames)
    result.update(
        n_frames=len(frames),
        n_atoms=int(numbers.size),
        model=type(model).__name__,
        reference="raw",
        reference_asr_max=asr,
        predict_seconds=seconds,
    )
    base, note = _resolve_baseline(model, baseline, baseline_frames, frames)
    if base is not None:
        try:
            base_pred, _ = _predict_all(base, frames, "baseline " + type(base).__name__, show)
        except ValueError as exc:
            raise ValueError(f"baseline: {exc}") from exc
        result["baseline"] = _metric_tree(base_pred, ref, numbers)
        result["baseline_note"] = note
    return result

"""What a saved model file holds, for ``numbec info MODEL.npz``: read and checked as
:func:`numbec.load_model` does, then described without predicting anything."""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["model_summary"]


def _header(path) -> dict:
    """The ``__numbec__`` header of a model file (already checked by ``load_model``)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["__numbec__"]))


def _symbols(numbers) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[int(z)] for z in numbers]


def _number(value, name, path, integer=False):
    """An entry of the training summary, None when absent; ModelFileError when it is not a
    number (the file's metadata is read like any input)."""
    from numbec.models.base import ModelFileError

    if value is None:
        return None
    kinds = int if integer else int | float
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise ModelFileError(f"{os.fspath(path)}: training entry {name!r} = {value!r} is not "
                             f"{'an integer' if integer else 'a number'}")
    return int(value) if integer else float(value)


def _numbers(values, name, path):
    """A list entry of the training summary (None when absent), each item a number."""
    from numbec.models.base import ModelFileError

    if values is None:
        return None
    if not isinstance(values, list):
        raise ModelFileError(f"{os.fspath(path)}: training entry {name!r} = {values!r} is not "
                             "a list of numbers")
    return [_number(v, f"{name}[{k}]", path) for k, v in enumerate(values)]


def model_summary(path) -> dict:
    """Facts about a saved model (JSON-ready dict).

    Keys: ``file``, ``kind`` (``"model"``), ``model_class``, ``numbec_version`` and
    ``created`` (of the file), ``state_sha256`` (the hash of the model's state that
    ``numbec predict`` records as the prediction store's ``model_sha256``, so that a
    prediction can be traced to its model file), ``species`` (symbols), ``outputs``; for
    kernel models also ``hyperparameters``, ``descriptors`` (the descriptor settings: cutoffs
    in Å, basis sizes), ``sparse_points`` ({symbol: count}), ``training`` (``n_frames``,
    ``n_atoms``, ``train_rmse`` e, ``noise_std`` e = sqrt of the fitted noise variance
    ``sigma_v2``, ``regression``), ``calibration`` (None, or ``method``, ``variance_scale``,
    ``noise_scale``, ``folds``, ``held_out_coverage_95`` of the raw variance and
    ``held_out_block_coverage_95``, the same per held-out block in frame order) and
    ``environment_reference`` (whether predictions can check their environments against the
    training ones).

    Raises
    ------
    numbec.models.base.ModelFileError
        As :func:`numbec.load_model`: a missing, damaged or foreign file, naming it.
    """
    from numbec.io.prediction import model_fingerprint
    from numbec.models.base import load_model
    from numbec.models.variance_scales import recalibrated

    model = load_model(path)  # every check of a model file, before anything is described
    header = _header(path)
    species = getattr(model, "species", ())
    out = {
        "file": os.fspath(path), "kind": "model", "model_class": header["model"],
        "numbec_version": header.get("numbec_version"), "created": header.get("created"),
        "state_sha256": model_fingerprint(model)["sha256"],
        "species": _symbols(species), "outputs": list(getattr(model, "outputs", ())),
    }
    if getattr(model, "sparse_unit", None) is None:  # no kernel: nothing learned to describe
        return out
    training = getattr(model, "training", None) or {}
    sigma_v2 = _number(training.get("sigma_v2"), "sigma_v2", path)
    fit = training.get("variance_scale_fit")
    calibration = None
    noise_scale = getattr(model, "noise_scale", None)
    if recalibrated(model):
        fit = fit if isinstance(fit, dict) else {}
        calibration = {
            "method": fit.get("method"), "variance_scale": float(model.variance_scale),
            "noise_scale": None if noise_scale is None else float(noise_scale),
            "folds": _number(fit.get("folds"), "variance_scale_fit.folds", path, True),
            "held_out_coverage_95": _number(fit.get("coverage_95_unscaled"),
                                            "variance_scale_fit.coverage_95_unscaled", path),
            "held_out_block_coverage_95": _numbers(
                fit.get("block_coverage_95_unscaled"),
                "variance_scale_fit.block_coverage_95_unscaled", path),
        }
    sparse = np.asarray(model.sparse_species)
    out.update(
        hyperparameters=model.hyperparameters(),
        descriptors={k: v for k, v in model.settings.to_dict().items() if k != "species"},
        sparse_points={s: int(np.count_nonzero(sparse == z))
                       for s, z in zip(_symbols(species), species, strict=True)},
        training={"n_frames": _number(training.get("n_frames"), "n_frames", path, True),
                  "n_atoms": _number(training.get("n_atoms"), "n_atoms", path, True),
                  "train_rmse": _number(training.get("train_rmse"), "train_rmse", path),
                  "noise_std": None if sigma_v2 is None else float(np.sqrt(sigma_v2)),
                  "regression": training.get("method")},
        calibration=calibration,
        environment_reference=bool(training.get("environment_residual")),
    )
    return out

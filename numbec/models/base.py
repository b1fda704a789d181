"""The interface every numbec model implements, and the saved-model file format.

Prediction protocol
-------------------
A model maps one structure (plain arrays) to a dict of numpy arrays::

    model.predict_arrays(positions, numbers, cell, pbc, uncertainty=False) -> dict

(models listing more than ``"float64"`` in :attr:`BECModel.precisions` also take
``precision=``; see there)

with inputs

``positions`` (N, 3) float64, Å, Cartesian; need not be wrapped into the cell.
``numbers`` (N,) int, atomic numbers.
``cell`` (3, 3) float64, Å, rows are lattice vectors (ASE convention); ignored where pbc is False.
``pbc`` (3,) bool.

and outputs (only the keys the model defines; see :attr:`BECModel.outputs`)

``bec`` (N, 3, 3) float64, e, canonical layout ``Z[a, i, j] = dP_i/dr_{a,j}``.
``charges`` (N,) float64, e: the monopole charges q_i (monopole/combined models).
``dipole`` (3,) float64, e·Å: ``sum_i q_i r_i (+ sum_i mu_i)``; only for non-periodic
    systems, where it is well defined (a periodic cell's polarisation is defined up to a
    quantum and is integrated from the BECs by :mod:`numbec.stream` instead).
``bec_monopole``, ``bec_dipole`` (N, 3, 3): the charge partition of a combined model.
``bec_std`` (N, 3, 3): predictive standard deviation of ``bec`` (with ``uncertainty=True``).

Saved-model format (``.npz``, no pickle)
----------------------------------------
A model file is a NumPy ``.npz`` archive readable with ``allow_pickle=False``. The
entry ``__numbec__`` holds a UTF-8 JSON document (as a 0-d unicode array) with keys

``format``: ``"numbec-model"``; ``format_version``: int (:data:`MODEL_FORMAT_VERSION`);
``model``: class name (registry key); ``numbec_version``; ``created``: ISO time;
``metadata``: model-specific JSON (hyperparameters, species, training summary).

Every other entry is a named float64/int64 array of the model's state.
"""

from __future__ import annotations

import datetime as _dt
import json
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

MODEL_FORMAT = "numbec-model"
#: Version of the saved-model layout; bump when the meaning of stored entries changes.
MODEL_FORMAT_VERSION = 1

_REGISTRY: dict[str, type[BECModel]] = {}


class ModelFileError(ValueError):
    """A model file is missing, damaged, of another format version or of an unknown model."""


class UnknownSpeciesError(ValueError):
    """A structure contains a species the model was not trained on."""


def register_model(cls):
    """Class decorator: make ``cls`` loadable by :func:`load_model` under its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


class BECModel(ABC):
    """Base class of all numbec models (see the module docstring for the protocol)."""

    #: Output keys this model returns from :meth:`predict_arrays` (``bec`` always).
    outputs: tuple[str, ...] = ("bec",)
    #: Atomic numbers the model knows, sorted.
    species: tuple[int, ...] = ()
    #: Largest cutoff radius (Å) the model looks at; 0 for purely local (per-atom) models.
    cutoff: float = 0.0
    #: True if :meth:`predict_arrays` may run for several frames at once on different threads
    #: and spends its time in code that releases the GIL (Numba ``nogil`` kernels, BLAS):
    #: :func:`numbec.predict` then computes the frames of a chunk concurrently. False (the
    #: default) for models whose time is Python, where threads only add contention.
    concurrent_frames: bool = False
    #: Arithmetic precisions :meth:`predict_arrays` accepts as ``precision=``. ``"float64"``
    #: (every model, the default) computes everything in double precision. ``"mixed"``
    #: (models with a dipole kernel) runs the dipole model's large matrix products in float32,
    #: everything else (descriptors, the scalar kernel x_i . x_b, the monopole charges and
    #: their gradients) in float64: see :class:`numbec.models.CombinedModel`.
    precisions: tuple[str, ...] = ("float64",)

    # ------------------------------------------------------------------ prediction
    @abstractmethod
    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False) -> dict:
        """Predict one structure from plain arrays; see the module docstring."""

    def predict_frames(self, positions, numbers, cells, pbc, precision="float64") -> dict:
        """Predict F frames of the same atoms; arrays of :meth:`predict_arrays` stacked on a
        leading frame axis (``bec`` (F, N, 3, 3), ``charges`` (F, N), ``dipole`` (F, 3), ...).

        positions : (F, N, 3) float64, Å; numbers : (N,) int; cells : (F, 3, 3) float64, Å,
        or None; pbc : (3,) bool. This default calls :meth:`predict_arrays` once per frame;
        the kernel models override it with one batched computation, which is what makes
        streaming frames of a few atoms fast (:func:`numbec.predict` uses it for them).
        """
        positions = np.asarray(positions, dtype=np.float64)
        extra = self.precision_arguments(precision)
        results = []
        for f in range(positions.shape[0]):
            try:
                results.append(self.predict_arrays(
                    positions[f], numbers, None if cells is None else cells[f], pbc, **extra))
            except ValueError as err:
                raise type(err)(f"frame {f}: {err}") from None
        return {key: np.stack([r[key] for r in results]) for key in results[0]}

    def predict(self, atoms, uncertainty=False, precision="float64") -> dict:
        """Predict one :class:`ase.Atoms`; returns the dict of :meth:`predict_arrays`."""
        return self.predict_arrays(
            atoms.get_positions(),
            atoms.get_atomic_numbers(),
            np.asarray(atoms.get_cell()),
            atoms.get_pbc(),
            uncertainty=uncertainty,
            **self.precision_arguments(precision),
        )

    def precision_arguments(self, precision: str) -> dict:
        """Keyword arguments of :meth:`predict_arrays` for ``precision`` (empty for
        ``"float64"``, so that models written before ``precision=`` existed keep working);
        a clear error for a precision this model does not offer."""
        if precision not in self.precisions:
            raise ValueError(
                f"{type(self).__name__} computes in {' or '.join(self.precisions)} only, not "
                f"{precision!r} (mixed precision applies to the products of a dipole kernel: "
                "DipoleModel, CombinedModel)"
            )
        return {} if precision == "float64" else {"precision": precision}

    def check_inputs(self, positions, numbers, where: str = "") -> None:
        """Raise a clear error for non-finite positions or species unknown to the model."""
        prefix = f"{where}: " if where else ""
        positions = np.asarray(positions)
        bad = ~np.isfinite(positions).all(axis=-1)
        if bad.any():
            atom = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{prefix}position of atom {atom} is NaN or inf")
        known = set(self.species)
        unknown = sorted(set(np.asarray(numbers).tolist()) - known)
        if unknown:
            from ase.data import chemical_symbols

            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            trained = ", ".join(chemical_symbols[z] for z in self.species)
            raise UnknownSpeciesError(
                f"{prefix}species {names} not seen in training; the model knows {trained}"
            )

    # ------------------------------------------------------------------ persistence
    @abstractmethod
    def _state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Return ``(metadata, arrays)``: JSON-serialisable metadata and named arrays."""

    @classmethod
    @abstractmethod
    def _from_state(cls, metadata: dict, arrays: dict[str, np.ndarray]) -> BECModel:
        """Rebuild a model from what :meth:`_state` returned."""

    def save(self, path) -> Path:
        """Write the model to ``path`` (``.npz`` appended if missing); returns the path."""
        from numbec import __version__

        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        metadata, arrays = self._state()
        header = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "model": type(self).__name__,
            "numbec_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "metadata": metadata,
        }
        if "__numbec__" in arrays:
            raise ValueError("'__numbec__' is reserved in a model's arrays")
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as fh:
            np.savez(fh, __numbec__=np.array(json.dumps(header)), **arrays)
        tmp.replace(path)  # atomic: a crash never leaves a half-written model under `path`
        return path


def load_model(path) -> BECModel:
    """Load a model written by :meth:`BECModel.save`.

    Raises :class:`ModelFileError` naming the file for a missing or damaged file, a
    file that is not a numbec model, another format version, or an unknown model class.
    """
    # make sure every model class has registered itself
    import numbec.models  # noqa: F401

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "__numbec__" not in data.files:
                raise ModelFileError(f"{path}: not a numbec model (no '__numbec__' entry)")
            header = json.loads(str(data["__numbec__"]))
            arrays = {k: data[k] for k in data.files if k != "__numbec__"}
    except ModelFileError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as exc:
        raise ModelFileError(f"{path}: damaged or unreadable model file ({exc})") from exc
    if header.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a numbec model file (format={header.get('format')!r})")
    version = header.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format version {version}, this numbec reads version "
            f"{MODEL_FORMAT_VERSION}; retrain or convert with the numbec that wrote it"
        )
    name = header.get("model")
    if name not in _REGISTRY:
        raise ModelFileError(f"{path}: unknown model class {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]._from_state(header.get("metadata", {}), arrays)

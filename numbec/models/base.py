"""The interface every numbec model implements, and the saved-model file format.

Prediction protocol
-------------------
A model maps one structure (plain arrays) to a dict of numpy arrays::

    model.predict_arrays(positions, numbers, cell, pbc, *, uncertainty=False,
                         total_charge=0.0) -> Prediction

(models listing more than ``"float64"`` in :attr:`BECModel.precisions` also take
``precision=``; see there)

with inputs

``positions`` (N, 3) float64, Å, Cartesian; need not be wrapped into the cell.
``numbers`` (N,) int, atomic numbers.
``cell`` (3, 3) float64, Å, rows are lattice vectors (ASE convention); ignored where pbc is False.
``pbc`` (3,) bool.
``total_charge`` float, e: the total charge Q of the structure (0 for a neutral one); the
    BECs then obey ``sum_a Z[a] = Q I``. :meth:`BECModel.predict` reads it from
    ``atoms.info["charge"]``.

and outputs (only the keys the model defines; see :attr:`BECModel.outputs`)

``bec`` (N, 3, 3) float64, e, canonical layout ``Z[a, i, j] = dP_i/dr_{a,j}``.
``charges`` (N,) float64, e: the monopole charges q_i (monopole/combined models).
``dipole`` (3,) float64, e·Å: ``sum_i q_i r_i (+ sum_i mu_i)``; only for non-periodic
    systems, where it is well defined (a periodic cell's polarisation is defined up to a
    quantum and is integrated from the BECs by :mod:`numbec.stream` instead).
``bec_monopole``, ``bec_dipole`` (N, 3, 3): the charge partition of a combined model.
``bec_std`` (N, 3, 3): predictive standard deviation of ``bec`` (with ``uncertainty=True``).
``asr_violation`` (3, 3) float64, e: ``sum_a Z_local[a] - Q I`` of the BECs the model's local
    formula gives *before* they are projected onto the acoustic sum rule (kernel models).
    The projection subtracts ``asr_violation / N`` from every atom; when this is comparable
    with the BECs themselves, the projection is doing more than removing a small constant.
    Zero to round-off for molecules, whose BECs are exact derivatives of a dipole.

:class:`Prediction` is the ``TypedDict`` of these keys.

Saved-model format (``.npz``, no pickle)
----------------------------------------
A model file is a NumPy ``.npz`` archive readable with ``allow_pickle=False``. The
entry ``__numbec__`` holds a UTF-8 JSON document (as a 0-d unicode array) with keys

``format``: ``"numbec-model"``; ``format_version``: int (:data:`MODEL_FORMAT_VERSION`);
``model``: class name (registry key); ``numbec_version``; ``created``: ISO time;
``metadata``: model-specific JSON (hyperparameters, species, training summary);
``content_sha256`` (optional; files written before it have none): hex SHA-256 of the
header without this key, as canonical JSON (``sort_keys=True``, separators ``","`` and
``":"``), followed, for every other entry in name order, by the UTF-8 of
``"\\0{name}\\0{dtype.str}\\0{shape}\\0"`` (NUL separators, ``dtype.str`` such as
``"<f8"``, ``shape`` a Python tuple) and the array's C-order bytes (see :func:`content_sha256`).

Every other entry is a named float64/int64 array of the model's state (:meth:`BECModel.state`);
:func:`load_model` verifies ``content_sha256`` when present and checks each array against the
metadata before the model is used. The checksum catches damage and edits made after the file
was written, not a deliberate forgery (an editor can recompute it). Adding it kept the format
version at 1: readers of version 1 ignore header keys they do not know.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import warnings
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TypedDict

import numpy as np

from numbec.conventions import first_non_finite
from numbec.io._files import atomic_write

MODEL_FORMAT = "numbec-model"
#: Version of the saved-model layout; bump when the meaning of stored entries changes.
MODEL_FORMAT_VERSION = 1

#: Header key of the content checksum (:func:`content_sha256`).
CHECKSUM_KEY = "content_sha256"

_REGISTRY: dict[str, type[BECModel]] = {}


class ModelFileError(ValueError):
    """A model file is missing, damaged, of another format version or of an unknown model."""


class UnknownSpeciesError(ValueError):
    """A structure contains a species the model was not trained on."""


class Prediction(TypedDict, total=False):
    """What :meth:`BECModel.predict_arrays` returns (only the keys in :attr:`BECModel.outputs`).

    Shapes for a structure of N atoms; units e and Å; BECs in the canonical layout
    ``Z[a, i, j] = dP_i/dr_{a,j}`` (row i polarisation, column j displacement).
    """

    #: (N, 3, 3) float64, e.
    bec: np.ndarray
    #: (N, 3, 3) float64, e: predictive standard deviation (``uncertainty=True``).
    bec_std: np.ndarray
    #: (N,) float64, e: monopole charges, summing to the total charge.
    charges: np.ndarray
    #: (3,) float64, e·Å: the dipole of a non-periodic structure.
    dipole: np.ndarray
    #: (N, 3, 3) float64, e: static-charge + charge-transfer part of a combined model.
    bec_monopole: np.ndarray
    #: (N, 3, 3) float64, e: local-dipole part of a combined model.
    bec_dipole: np.ndarray
    #: (3, 3) float64, e: sum-rule violation of the local formula before projection.
    asr_violation: np.ndarray
    #: (N,) float64, e: posterior std of each atom's neutral charge (``atom_std=True``).
    charge_std: np.ndarray
    #: (N,) float64, e·Å: root of the trace of the posterior covariance of each atom's local
    #: dipole (``atom_std=True``).
    local_dipole_std: np.ndarray


def checked_array(arrays: dict, name: str, shape: tuple, kind: str) -> np.ndarray:
    """``arrays[name]`` after checking it as a model file entry.

    Parameters
    ----------
    arrays : dict of str to numpy.ndarray
        The entries of a model file.
    name : str
        Entry to check.
    shape : tuple of int or None
        Expected shape; None in a position accepts any length there.
    kind : "float" or "int"
        Expected dtype family; float entries must also be finite.

    Returns
    -------
    numpy.ndarray
        float64 or int64 copy-free view of the entry.

    Raises
    ------
    ModelFileError
        Missing entry, wrong shape or dtype, or NaN/inf values (the message names the entry;
        :func:`load_model` adds the file name).
    """
    if name not in arrays:
        raise ModelFileError(f"array {name!r} is missing")
    arr = np.asarray(arrays[name])
    if arr.ndim != len(shape) or any(
            e is not None and e != n for e, n in zip(shape, arr.shape, strict=True)):
        expected = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
        raise ModelFileError(f"array {name!r} has shape {arr.shape}, the model's metadata "
                             f"needs {expected}")
    family = np.floating if kind == "float" else np.integer
    if not np.issubdtype(arr.dtype, family):
        raise ModelFileError(f"array {name!r} has dtype {arr.dtype}, expected {kind}")
    if kind == "float":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ModelFileError(f"array {name!r} holds NaN or inf (first at index "
                                 f"{tuple(int(i) for i in np.argwhere(bad)[0])})")
        return arr.astype(np.float64, copy=False)
    return arr.astype(np.int64, copy=False)


def content_sha256(header: dict, arrays: dict) -> str:
    """Hex SHA-256 of a model file's content: ``header`` (a parsed ``__numbec__`` header;
    its :data:`CHECKSUM_KEY` is left out) and ``arrays`` (name -> array), as the module
    docstring lays out."""
    h = hashlib.sha256()
    rest = {k: v for k, v in header.items() if k != CHECKSUM_KEY}
    h.update(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(arrays):
        arr = np.asarray(arrays[name])
        h.update(f"\0{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(np.ascontiguousarray(arr).reshape(-1).data)  # no copy for a loaded array
    return h.hexdigest()


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
    #: True if :meth:`predict_frames` computes a batch of frames in one pass (the kernel
    #: models); :func:`numbec.predict` then uses it for frames of fewer than
    #: :data:`numbec.parallel.BATCH_BELOW_ATOMS` atoms. False: frames one by one.
    batched_frames: bool = False

    # ------------------------------------------------------------------ prediction
    @abstractmethod
    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False) -> Prediction:
        """Predict one structure from plain arrays; see the module docstring."""

    def predict_frames(self, positions, numbers, cells, pbc, *, precision: str = "float64",
                       total_charge: float = 0.0) -> dict:
        """Predict F frames of the same atoms: the arrays of :meth:`predict_arrays` stacked
        on a leading frame axis (``bec`` (F, N, 3, 3), ``charges`` (F, N), ``dipole``
        (F, 3), ...).

        positions : (F, N, 3) float64, Å; numbers : (N,) int; cells : (F, 3, 3) float64, Å,
        or None; pbc : (3,) bool; precision, total_charge : as for :meth:`predict_arrays`.
        This default calls :meth:`predict_arrays` once per frame; the kernel models override
        it with one computation per batch of frames, which is what makes streaming frames of
        a few atoms fast (:func:`numbec.predict` uses it for them).

        Raises
        ------
        ValueError
            As :meth:`predict_arrays`, with the frame named.
        """
        positions = np.asarray(positions, dtype=np.float64)
        extra = self.precision_arguments(precision)
        if total_charge:
            extra["total_charge"] = total_charge
        results = []
        for f in range(positions.shape[0]):
            try:
                results.append(self.predict_arrays(
                    positions[f], numbers, None if cells is None else cells[f], pbc, **extra))
            except ValueError as err:
                raise type(err)(f"frame {f}: {err}") from None
        return {key: np.stack([r[key] for r in results]) for key in results[0]}

    def predict(self, atoms, uncertainty: bool = False, precision: str = "float64"
                ) -> Prediction:
        """Predict one :class:`ase.Atoms`; returns the dict of :meth:`predict_arrays`.

        A total charge in ``atoms.info["charge"]`` (e) is passed on as ``total_charge``.

        Raises
        ------
        ValueError
            Non-finite positions, a precision the model does not offer, a non-numeric
            ``info["charge"]``; :class:`UnknownSpeciesError` for species the model does not
            know.
        """
        return self.predict_arrays(
            atoms.get_positions(),
            atoms.get_atomic_numbers(),
            np.asarray(atoms.get_cell()),
            atoms.get_pbc(),
            uncertainty=uncertainty,
            **self.precision_arguments(precision),
            **charge_arguments(atoms),
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

    def check_inputs(self, positions: np.ndarray, numbers: np.ndarray, where: str = ""
                     ) -> None:
        """Raise a clear error for no atoms, non-finite positions or species unknown to the
        model."""
        prefix = f"{where}: " if where else ""
        if np.asarray(numbers).size == 0:
            raise ValueError(f"{prefix}the structure has no atoms")
        positions = np.asarray(positions)
        bad = first_non_finite(positions, 1)
        if bad is not None:
            raise ValueError(f"{prefix}position of atom {bad[0]} is NaN or inf")
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
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The model's saved state: ``(metadata, arrays)``.

        ``metadata`` is a JSON-serialisable dict (hyperparameters, species, training summary)
        and ``arrays`` maps names to float64/int64 numpy arrays. :meth:`save` writes exactly
        this, :func:`load_model` rebuilds the model from it, and
        :func:`numbec.stream.model_fingerprint` hashes it, so two models with equal states
        predict the same numbers. Subclasses implement it.

        Raises
        ------
        RuntimeError
            The model is not fitted.
        NotImplementedError
            The class has no saved state.
        """
        if type(self)._state is not BECModel._state:  # a subclass still using the old name
            return self._state()
        raise NotImplementedError(f"{type(self).__name__} has no saved state")

    def _state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Deprecated name of :meth:`state` (numbec 0.1); kept for code that calls it."""
        warnings.warn("BECModel._state() is deprecated; use BECModel.state()",
                      DeprecationWarning, stacklevel=2)
        return self.state()

    @classmethod
    @abstractmethod
    def _from_state(cls, metadata: dict, arrays: dict[str, np.ndarray]) -> BECModel:
        """Rebuild a model from what :meth:`state` returned; raise :class:`ModelFileError`
        (or KeyError, TypeError, ValueError) for entries that do not fit together."""

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (``.npz`` appended if missing); returns the path.

        The file is written under a temporary name and renamed, so ``path`` never holds a
        half-written model.

        Raises
        ------
        RuntimeError
            The model is not fitted.
        OSError
            The file cannot be written (the temporary file is removed).
        """
        from numbec import __version__

        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        metadata, arrays = self.state()
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
        # hashed as the reader will see it: JSON turns tuples into lists, int keys into str
        header[CHECKSUM_KEY] = content_sha256(json.loads(json.dumps(header)), arrays)

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, __numbec__=np.array(json.dumps(header)), **arrays)

        atomic_write(path, write)  # a crash never leaves a half-written model under `path`
        return path


def total_charge_value(value, name: str = "total_charge") -> float:
    """A total charge (e) as a finite float; ValueError naming ``name`` otherwise."""
    try:
        charge = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r} is not a number (total charge in e)") from None
    if not np.isfinite(charge):
        raise ValueError(f"{name} = {value!r} is not finite (total charge in e)")
    return charge


def charge_arguments(atoms) -> dict:
    """``{"total_charge": Q}`` for an :class:`ase.Atoms` with a non-zero ``info["charge"]``
    (e), else ``{}`` (so that models without the keyword keep working for neutral input).

    Raises
    ------
    ValueError
        ``info["charge"]`` is not a finite number.
    """
    value = atoms.info.get("charge", 0.0) if hasattr(atoms, "info") else 0.0
    charge = total_charge_value(value, "info['charge']")
    return {"total_charge": charge} if charge != 0.0 else {}


def _numeric_entry(data, name: str, path: Path) -> np.ndarray:
    try:
        return data[name]
    except ValueError:
        # numpy's message for an object array suggests allow_pickle=True, advice that would
        # run code from the file; a model never stores Python objects
        raise ModelFileError(f"{path}: not a numbec model file (entry {name!r} is not a "
                             "numeric array: it holds Python objects or is damaged)") from None


def load_model(path: str | Path) -> BECModel:
    """Load a model written by :meth:`BECModel.save`.

    The content checksum is verified when the file has one, and every array is checked
    against the metadata (shapes, dtypes, finite values, species) before the model is
    returned, so a damaged or edited file fails here and not later in a prediction.

    Raises
    ------
    ModelFileError
        Naming the file: missing or damaged file, not a numbec model, another format version,
        a content checksum that does not match, an unknown model class, a header that is not
        a JSON object or lacks a key, or arrays that do not fit the metadata.
    """
    # make sure every model class has registered itself
    import numbec.models  # noqa: F401

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        # np.load would try to unpickle it and suggest allow_pickle=True: wrong for a model
        raise ModelFileError(f"{path}: not a numbec model file (not an .npz archive: a file "
                             "of another kind, or a truncated copy of a model)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "__numbec__" not in data.files:
                raise ModelFileError(f"{path}: not a numbec model (no '__numbec__' entry)")
            header = json.loads(str(data["__numbec__"]))
            arrays = {k: _numeric_entry(data, k, path) for k in data.files
                      if k != "__numbec__"}
    except ModelFileError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as exc:
        raise ModelFileError(f"{path}: damaged or unreadable model file ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: the '__numbec__' header is a JSON "
                             f"{type(header).__name__}, not an object")
    if header.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a numbec model file (format={header.get('format')!r})")
    version = header.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format version {version}, this numbec reads version "
            f"{MODEL_FORMAT_VERSION}; retrain or convert with the numbec that wrote it"
        )
    expected = header.get(CHECKSUM_KEY)
    if expected is not None and expected != content_sha256(header, arrays):
        raise ModelFileError(f"{path}: the content checksum does not match: the file was "
                             "modified or damaged after it was written")
    for key in ("model", "metadata"):
        if key not in header:
            raise ModelFileError(f"{path}: the model header has no {key!r} entry")
    name = header["model"]
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ModelFileError(f"{path}: unknown model class {name!r}; known: {sorted(_REGISTRY)}")
    metadata = header["metadata"]
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: the model metadata is a JSON "
                             f"{type(metadata).__name__}, not an object")
    try:
        return _REGISTRY[name]._from_state(metadata, arrays)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {name}: {exc}") from exc
    except KeyError as exc:
        raise ModelFileError(f"{path}: {name}: metadata entry {exc} is missing") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path}: {name}: inconsistent model state ({exc})") from exc

"""Reference models without learning: species-mean BECs and fixed per-atom BECs.

:class:`SpeciesMeanModel` is the baseline every learned model is compared with
(``numbec.evaluate`` reports it side by side). :class:`FixedBECModel` carries one
constant tensor per atom, e.g. the DFPT charges of a crystal for harmonic-limit IR
spectra; it needs the same atom ordering in every frame.
"""

from __future__ import annotations

import numpy as np

from numbec.conventions import asr_project, to_canonical
from numbec.models.base import BECModel, ModelFileError, Prediction, checked_array, register_model


@register_model
class SpeciesMeanModel(BECModel):
    """Predict every atom by the mean BEC tensor of its species (ASR-projected per frame).

    Parameters
    ----------
    species : sequence of int
        Atomic numbers, sorted.
    mean_bec : array, shape (n_species, 3, 3), float64, e
        Mean canonical BEC ``Z[i, j] = dP_i/dr_j`` per species, same order as ``species``.
    """

    outputs = ("bec",)

    def __init__(self, species, mean_bec):
        self.species = tuple(int(z) for z in species)
        self.mean_bec = np.asarray(mean_bec, dtype=np.float64).reshape(len(self.species), 3, 3)

    @classmethod
    def fit(cls, frames) -> SpeciesMeanModel:
        """Average ``atoms.arrays["bec"]`` (canonical layout) over all atoms of each species.

        Raises
        ------
        ValueError
            No frames, or a frame without a ``bec`` array (named by its index).
        """
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for k, atoms in enumerate(frames):
            if "bec" not in atoms.arrays:
                raise ValueError(f"frame {k}: no 'bec' array (read data with numbec.read_bec)")
            bec = to_canonical(atoms.arrays["bec"])
            for z in np.unique(atoms.numbers):
                mask = atoms.numbers == z
                sums[int(z)] = sums.get(int(z), 0.0) + bec[mask].sum(axis=0)
                counts[int(z)] = counts.get(int(z), 0) + int(mask.sum())
        if not sums:
            raise ValueError("no frames to fit")
        species = sorted(sums)
        return cls(species, np.stack([sums[z] / counts[z] for z in species]))

    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False, *,
                       total_charge: float = 0.0) -> Prediction:
        """``bec`` (N, 3, 3) e: the species means, projected onto ``sum_a Z[a] = Q I``
        (Q = ``total_charge``, e)."""
        self.check_inputs(positions, numbers)
        index = np.searchsorted(self.species, numbers)
        return {"bec": asr_project(self.mean_bec[index], total_charge)}

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {"species": list(self.species)}, {"mean_bec": self.mean_bec}

    @classmethod
    def _from_state(cls, metadata, arrays):
        species = [int(z) for z in metadata["species"]]
        if not species or species != sorted(set(species)) or species[0] < 1:
            raise ModelFileError(f"species {species} are not distinct sorted atomic numbers")
        return cls(species, checked_array(arrays, "mean_bec", (len(species), 3, 3), "float"))


@register_model
class FixedBECModel(BECModel):
    """Constant per-atom BECs, independent of geometry (the harmonic/rigid-ion limit).

    Parameters
    ----------
    numbers : array, shape (N,), int
        Atomic numbers in the order of every structure it will be applied to.
    bec : array, shape (N, 3, 3), float64, e
        Canonical BECs ``Z[a, i, j] = dP_i/dr_{a,j}``.
    """

    outputs = ("bec",)

    def __init__(self, numbers, bec):
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.bec = to_canonical(bec)
        if self.bec.shape[0] != self.numbers.shape[0]:
            raise ValueError(f"{self.bec.shape[0]} BEC tensors for {self.numbers.size} atoms")
        self.species = tuple(sorted(set(self.numbers.tolist())))

    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False, *,
                       total_charge: float = 0.0) -> Prediction:
        """``bec`` (N, 3, 3) e: the stored tensors, as given (``total_charge`` is accepted
        for the protocol; the tensors carry their own sum rule).

        Raises
        ------
        ValueError
            The structure's atoms differ from the model's in number or order.
        """
        self.check_inputs(positions, numbers)
        if not np.array_equal(np.asarray(numbers), self.numbers):
            raise ValueError(
                "FixedBECModel: the structure's atoms differ from the model's "
                f"({len(numbers)} vs {self.numbers.size} atoms, or another order)"
            )
        return {"bec": self.bec.copy()}

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {}, {"numbers": self.numbers, "bec": self.bec}

    @classmethod
    def _from_state(cls, metadata, arrays):
        numbers = checked_array(arrays, "numbers", (None,), "int")
        if numbers.size and numbers.min() < 1:
            raise ModelFileError(f"array 'numbers' holds atomic number {numbers.min()}")
        return cls(numbers, checked_array(arrays, "bec", (numbers.size, 3, 3), "float"))

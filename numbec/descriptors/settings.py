"""The descriptor hyperparameters (saved with every model)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["DescriptorSettings"]


@dataclass(frozen=True)
class DescriptorSettings:
    """Hyperparameters of the scalar and vector (lambda = 1) descriptors.

    Attributes
    ----------
    species : tuple of int
        Atomic numbers of the neighbour-density channels, sorted ascending. A structure with any
        other species is rejected.
    cutoff_radial : float, Å
        Cutoff R2 of the two-body (radial) descriptor.
    cutoff_angular : float, Å
        Cutoff R3 of the three-body (angular power spectrum) descriptor.
    sigma : float, Å
        Width of the Gaussian smearing of every neighbour.
    n_radial : int
        Number of spherical Bessel functions of the two-body descriptor.
    n_angular : int
        Number of spherical Bessel functions per l of the three-body descriptor.
    l_max : int
        Largest angular momentum of the three-body expansion.
    radial_weight : float in [0, 1]
        beta in ``X = [sqrt(beta) X2, sqrt(1 - beta) X3]``.
    """

    species: tuple[int, ...] = (1, 8)
    cutoff_radial: float = 6.0
    cutoff_angular: float = 5.0
    sigma: float = 0.5
    n_radial: int = 8
    n_angular: int = 8
    l_max: int = 4
    radial_weight: float = 0.1

    def __post_init__(self):
        species = tuple(sorted(int(z) for z in self.species))
        if not species or len(set(species)) != len(species) or species[0] < 1:
            raise ValueError(
                f"species must be distinct positive atomic numbers, got {self.species}")
        object.__setattr__(self, "species", species)
        for name in ("cutoff_radial", "cutoff_angular", "sigma"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be a positive number of Å, got {value}")
            object.__setattr__(self, name, value)
        for name in ("n_radial", "n_angular"):
            value = int(getattr(self, name))
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
            object.__setattr__(self, name, value)
        if int(self.l_max) < 1:
            raise ValueError(f"l_max must be >= 1, got {self.l_max}")
        object.__setattr__(self, "l_max", int(self.l_max))
        beta = float(self.radial_weight)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"radial_weight must lie in [0, 1], got {beta}")
        object.__setattr__(self, "radial_weight", beta)

    @property
    def cutoff(self) -> float:
        """Largest cutoff, Å (the neighbour-list cutoff)."""
        return max(self.cutoff_radial, self.cutoff_angular)

    @property
    def n_species(self) -> int:
        return len(self.species)

    @property
    def n_radial_features(self) -> int:
        """Length of the two-body part X2: ``n_species * n_radial``."""
        return self.n_species * self.n_radial

    @property
    def n_angular_features(self) -> int:
        """Length of the three-body part X3 (species pairs J <= J', n <= n' when J == J')."""
        s, n, n_l = self.n_species, self.n_angular, self.l_max + 1
        return (s * n * (n + 1) // 2 + s * (s - 1) // 2 * n * n) * n_l

    @property
    def n_features(self) -> int:
        """Scalar descriptor length D = n_radial_features + n_angular_features."""
        return self.n_radial_features + self.n_angular_features

    @property
    def n_vector_features(self) -> int:
        """Vector descriptor length Dv = n_species * n_radial (two-body l = 1) +
        n_species**2 * n_angular**2 * l_max (products of l and l + 1 coefficients)."""
        s, n = self.n_species, self.n_angular
        return s * self.n_radial + s * s * n * n * self.l_max

    def to_dict(self) -> dict:
        """JSON-ready dict (species as a list)."""
        out = asdict(self)
        out["species"] = list(self.species)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DescriptorSettings:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown descriptor settings: {sorted(unknown)}")
        return cls(**{k: (tuple(v) if k == "species" else v) for k, v in data.items()})

"""Descriptors of atomic environments and their derivatives.

Equations: docs/method.md#descriptors and docs/method.md#adjoint-derivatives.

- :class:`DescriptorSettings`: the hyperparameters (saved with every model).
- :func:`compute_descriptors` -> :class:`StructureDescriptors`: scalar descriptors (N, D), the
  optional pair Jacobian (P, 3, D) and the adjoint contractions ``monopole_contraction`` and
  ``scalar_contraction``.
- :func:`compute_vector_descriptors` -> :class:`VectorDescriptors`: the lambda = 1 descriptor
  (N, 3, Dv), its Jacobian (P, 3, 3, Dv) and ``vector_contraction``.
- :func:`compute_scalar_and_vector_descriptors`: both from one neighbour list and expansion;
  their ``add_adjoint`` methods add into one set of coefficient adjoints
  (``Expansion.adjoint_arrays``), back-propagated through the pairs once.
"""

from numbec.descriptors.scalar import StructureDescriptors, compute_descriptors
from numbec.descriptors.settings import DescriptorSettings
from numbec.descriptors.vector import (
    VectorDescriptors,
    compute_scalar_and_vector_descriptors,
    compute_vector_descriptors,
)

__all__ = [
    "DescriptorSettings",
    "StructureDescriptors",
    "VectorDescriptors",
    "compute_descriptors",
    "compute_scalar_and_vector_descriptors",
    "compute_vector_descriptors",
]

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

from __future__ import annotations

from numbec._lazy import lazy_exports

# Exported lazily: DescriptorSettings (plain Python) is read without importing Numba, e.g. for
# the defaults that ``numbec train --help`` shows.
_LAZY = {
    "DescriptorSettings": "numbec.descriptors.settings",
    "StructureDescriptors": "numbec.descriptors.scalar",
    "compute_descriptors": "numbec.descriptors.scalar",
    "VectorDescriptors": "numbec.descriptors.vector",
    "compute_scalar_and_vector_descriptors": "numbec.descriptors.vector",
    "compute_vector_descriptors": "numbec.descriptors.vector",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

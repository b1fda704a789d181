"""Combined monopole + dipole kernel model with charge partitioning.

Equations: docs/method.md#combined-model-and-charge-partitioning.

``P = sum_i q_i r_i + sum_i mu_i``, both terms fitted jointly in one regression (concatenated
weights: first the monopole weights, then the dipole weights). The prediction carries the
partition ``Z = Z_mono + Z_dip`` per atom. The split is model dependent.
"""

from __future__ import annotations

from numbec.models._kernel_model import _FIT_AND_PREDICT, PARAMETERS_DOC, KernelBECModel
from numbec.models.base import register_model

__all__ = ["CombinedModel"]


@register_model
class CombinedModel(KernelBECModel):
    __doc__ = """Monopole charges plus lambda = 1 local dipoles, fitted jointly (the recommended
    model, and the default of ``numbec train``).

    ``CombinedModel(zeta=4, n_sparse=200, ...).fit(frames)``; all parameters are keywords.
""" + _FIT_AND_PREDICT + """
    Prediction: ``bec`` (N, 3, 3), ``bec_monopole`` (static charge + charge transfer,
    including the baseline q0) and ``bec_dipole`` (``sum_i dmu_i/dr_j``),
    ``bec = bec_monopole + bec_dipole``; ``bec_monopole`` sums to ``Q I`` and ``bec_dipole``
    to zero; ``charges`` (N,) e; ``dipole`` (3,) e·Å for molecules; ``asr_violation``
    (3, 3) e; ``bec_std``. Mixed precision (``precision="mixed"``) is offered.
""" + PARAMETERS_DOC

    _monopole = True
    _dipole = True

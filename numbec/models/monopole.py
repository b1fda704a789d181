"""Monopole (scalar charge) kernel model: docs/method.md#monopole-model, docs/models.md.

``q_i = q0_J(i) + sum_b w_b (x_i . x_b) ** zeta`` (made neutral), ``P = sum_i q_i r_i`` and the
local BEC formula ``Z[j] = q_j I + sum_i d_ij (x) dq_i/dr_j`` evaluated with the adjoint of the
descriptors (``add_adjoint``, ``Expansion.backprop`` and ``scatter_monopole``: no Jacobian).
"""

from __future__ import annotations

from numbec.models._kernel_model import _FIT_AND_PREDICT, PARAMETERS_DOC, KernelBECModel
from numbec.models.base import register_model

__all__ = ["MonopoleModel"]


@register_model
class MonopoleModel(KernelBECModel):
    __doc__ = """Kernel model of atomic charges trained on BECs (and molecular dipoles).

    ``MonopoleModel(zeta=4, n_sparse=200, ...).fit(frames)``; all parameters are keywords.
""" + _FIT_AND_PREDICT + """
    Prediction: ``bec`` (N, 3, 3) e, canonical layout; ``charges`` (N,) e, summing to the
    total charge (0 unless given); ``dipole`` (3,) e·Å for molecules; ``asr_violation`` (3, 3)
    e; ``bec_std`` (N, 3, 3) e with ``uncertainty=True``. BECs obey the acoustic sum rule
    exactly; for a molecule they are the derivative of the model's dipole ``sum_i q_i r_i``.
""" + PARAMETERS_DOC

    _monopole = True
    _dipole = False

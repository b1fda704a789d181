"""Monopole (scalar charge) kernel model: docs/method.md#monopole-model, docs/models.md.

``q_i = q0_J(i) + sum_b w_b (x_i . x_b) ** zeta`` (made neutral), ``P = sum_i q_i r_i`` and the
local BEC formula ``Z[j] = q_j I + sum_i d_ij (x) dq_i/dr_j`` evaluated with the adjoint
``monopole_contraction`` of the descriptors.
"""

from __future__ import annotations

from numbec.models._kernel_model import KernelBECModel
from numbec.models.base import register_model

__all__ = ["MonopoleModel"]


@register_model
class MonopoleModel(KernelBECModel):
    """Kernel model of atomic charges trained on BECs (and molecular dipoles).

    ``MonopoleModel(settings=None, zeta=4, n_sparse=200, sparse_method="cur",
    regression="bayesian", ridge=1e-6, seed=0).fit(frames)``; parameters as
    :class:`numbec.models._kernel_model.KernelBECModel`.

    Prediction (``predict`` / ``predict_arrays``): ``bec`` (N, 3, 3) e, canonical layout;
    ``charges`` (N,) e, neutral (sum zero); ``dipole`` (3,) e·Å for molecules;
    ``bec_std`` (N, 3, 3) e with ``uncertainty=True``. BECs obey the acoustic sum rule exactly;
    for a molecule they are the derivative of the model's dipole ``sum_i q_i r_i``.
    """

    _monopole = True
    _dipole = False

"""Dipole (tensorial, lambda = 1) kernel model: docs/method.md#dipole-model, docs/models.md.

``P = sum_i q0_J(i) r_i + sum_i mu_i`` with ``mu_i^mu = sum_b sum_nu K_{mu nu}(i, b) w_{b nu}``,
``K_{mu nu}(i, b) = (V_i^mu . V_b^nu) / s**2 * (x_i . x_b) ** (zeta - 1)``; BECs by the chain
rule through the adjoints of the vector and scalar descriptors (``add_adjoint`` into one set of
coefficient adjoints, one ``Expansion.backprop``, ``scatter_with_self``). Fitted to BECs
("derivative learning"); molecular dipoles are fitted too when present.
"""

from __future__ import annotations

from numbec.models._kernel_model import _FIT_AND_PREDICT, PARAMETERS_DOC, KernelBECModel
from numbec.models.base import register_model

__all__ = ["DipoleModel"]


@register_model
class DipoleModel(KernelBECModel):
    __doc__ = """Equivariant lambda = 1 kernel model of local dipoles trained on BECs.

    ``DipoleModel(zeta=4, n_sparse=200, ...).fit(frames)``; all parameters are keywords.
""" + _FIT_AND_PREDICT + """
    Prediction: ``bec`` (N, 3, 3) e; ``dipole`` (3,) e·Å for molecules
    (``sum_i q0'_i r_i + sum_i mu_i``); ``asr_violation`` (3, 3) e; ``bec_std`` with
    ``uncertainty=True``. The only charges are the fixed baseline ``q0`` (shifted to the total
    charge), so no ``charges`` output.
""" + PARAMETERS_DOC

    _monopole = False
    _dipole = True

"""BEC models: learned kernel models (monopole, dipole, combined) and reference baselines.

Every model implements :class:`numbec.models.base.BECModel`; saved models are read
back with :func:`load_model`.
"""

from numbec.models.base import (
    BECModel,
    ModelFileError,
    UnknownSpeciesError,
    load_model,
    register_model,
)
from numbec.models.baseline import FixedBECModel, SpeciesMeanModel
from numbec.models.combined import CombinedModel
from numbec.models.dipole import DipoleModel
from numbec.models.evaluate import evaluate
from numbec.models.monopole import MonopoleModel

__all__ = [
    "BECModel",
    "CombinedModel",
    "DipoleModel",
    "FixedBECModel",
    "ModelFileError",
    "MonopoleModel",
    "SpeciesMeanModel",
    "UnknownSpeciesError",
    "evaluate",
    "load_model",
    "register_model",
]

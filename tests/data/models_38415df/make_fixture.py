"""Write the model files and predictions of this folder (run with numbec at commit 38415df).

Usage, from a checkout of numbec at 38415df::

    PYTHONPATH=. python tests/data/models_38415df/make_fixture.py tests/data/models_38415df

Three tiny models (water, reduced descriptors, 2 sparse points per species, trained on two
periodic cells and two clusters of ``tests/kernel_model_checks.py``) and their predictions
(``bec``, ``bec_std`` and every other output) for one cluster and one periodic cell. The test
``tests/test_models_files.py`` loads them with the current code and compares the numbers.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for kernel_model_checks

from kernel_model_checks import SETTINGS, training_frames, water_cell, water_cluster  # noqa: E402

from numbec.models import CombinedModel, DipoleModel, MonopoleModel  # noqa: E402


def main(out: str) -> None:
    refs = {}
    for cls in (MonopoleModel, DipoleModel, CombinedModel):
        rng = np.random.default_rng(20261203)
        frames = training_frames(rng, True, 2) + training_frames(rng, False, 2)
        model = cls(settings=SETTINGS, zeta=3, n_sparse=2).fit(frames)
        model.save(f"{out}/{cls.__name__}.npz")
        structures = (("cluster", water_cluster(np.random.default_rng(5), 2)),
                      ("cell", water_cell(np.random.default_rng(6))))
        for label, atoms in structures:
            result = model.predict_arrays(atoms.positions, atoms.numbers, atoms.cell.array,
                                          atoms.pbc, uncertainty=True)
            for key, value in result.items():
                refs[f"{cls.__name__}/{label}/{key}"] = value
            refs[f"{label}/positions"] = atoms.positions
            refs[f"{label}/numbers"] = atoms.numbers
            refs[f"{label}/cell"] = atoms.cell.array
            refs[f"{label}/pbc"] = atoms.pbc
    np.savez(f"{out}/predictions.npz", **refs)


if __name__ == "__main__":
    main(sys.argv[1])

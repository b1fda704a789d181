"""The closed active-learning loop (numbec.learning_loop) and its example in reduced form."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import numbec
from numbec.descriptors import DescriptorSettings
from numbec.learning_loop import active_learning, kernel_trainer

SETTINGS = DescriptorSettings(species=(8, 14), cutoff_radial=5.0, cutoff_angular=4.0,
                              n_radial=6, n_angular=4, l_max=2)


@pytest.fixture(scope="module")
def quartz():
    return numbec.read_bec(numbec.io.example_file("sio2_quartz_subset"))


def _unlabelled(frames):
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        del atoms.arrays["bec"]
        out.append(atoms)
    return out


@pytest.mark.parametrize("strategy", ["uncertainty", "hybrid"])
def test_loop_labels_the_distorted_frames_first(quartz, strategy):
    """Two strongly distorted frames in a pool of ordinary ones: the uncertainty and hybrid
    strategies ask for exactly those two in their first round; every frame is labelled once."""
    rng = np.random.default_rng(5)
    labelled_pool = [a.copy() for a in quartz[:10]]
    for k in (3, 7):  # 0.15 Å random displacements (BECs kept: only the ranking matters)
        labelled_pool[k].positions += rng.normal(0.0, 0.15, labelled_pool[k].positions.shape)
    calls = []

    def label(k, atoms):
        calls.append(k)
        np.testing.assert_array_equal(atoms.positions, labelled_pool[k].positions)
        return labelled_pool[k]

    seen = []
    result = active_learning(
        _unlabelled(labelled_pool), label, kernel_trainer("monopole", 30, SETTINGS),
        strategy=strategy, n_initial=2, n_per_round=2, n_max=6, test=quartz[15:],
        callback=lambda model, record: seen.append(record.round) or {"n_species":
                                                                     len(model.species)})
    assert [r.n_train for r in result.records] == [2, 4, 6]
    assert result.records[0].added == [0, 9]          # evenly spaced initial set
    assert sorted(result.records[1].added) == [3, 7]  # the distorted frames
    assert sorted(calls) == sorted(result.labelled) and len(set(calls)) == 6
    assert seen == [0, 1, 2] and all(r.extra["n_species"] == 2 for r in result.records)
    n, err = result.learning_curve()
    assert n.tolist() == [2, 4, 6] and np.isfinite(err).all()
    # every model is far better than the species mean (0.4 e on quartz)
    assert err.max() < 0.1
    # the pool was more uncertain before the distorted frames were labelled
    assert result.records[1].pool_std_max > 2.0 * result.records[2].pool_std_max


@pytest.mark.parametrize("strategy", ["random", "stride", "diverse", "hybrid"])
def test_loop_strategies_label_distinct_frames(quartz, strategy):
    pool = _unlabelled(quartz[:12])
    result = active_learning(pool, lambda k, a: quartz[k], kernel_trainer("monopole", 20,
                                                                            SETTINGS),
                             strategy=strategy, n_initial=2, n_per_round=3, n_max=7, seed=1)
    assert [r.n_train for r in result.records] == [2, 5, 7]
    assert len(set(result.labelled)) == 7 and len(result.frames) == 7
    assert all(r.test_rmse is None for r in result.records)


def test_loop_rejects_bad_labels_and_sizes(quartz):
    pool = _unlabelled(quartz[:6])
    with pytest.raises(ValueError, match="pool frame 0"):
        active_learning(pool, lambda k, a: a, n_initial=2, n_max=4)
    with pytest.raises(ValueError, match="pool size"):
        active_learning(pool, lambda k, a: quartz[k], n_initial=2, n_max=10)
    with pytest.raises(ValueError, match="unknown strategy"):
        active_learning(pool, lambda k, a: quartz[k], strategy="best")


@pytest.mark.slow
def test_active_learning_example_runs(tmp_path):
    pytest.importorskip("tblite.ase")
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_examples import run_example

    out = tmp_path / "al"
    log = run_example("active_learning_xtb.py", "--quick", "--out", out, cwd=tmp_path)
    assert "uncertainty" in log
    summary = json.loads((out / "active_learning.json").read_text())
    assert (out / "active_learning.png").stat().st_size > 0
    for curve in summary["curves"].values():
        assert curve["frames"] == [3, 6, 9]
        assert len(set(curve["labelled"])) == 9
        # exact xTB APTs of water: a model from 3-9 clusters is far better than nothing
        # (species-mean RMSE of water-cluster APTs ~0.3 e) and learns from more frames
        assert max(curve["test_rmse"]) < 0.3
    # both runs start from the same frames; xTB labels each frame once
    assert summary["xtb_labels"] <= 9 + 6


@pytest.mark.slow
def test_active_learning_benchmark_smoke(tmp_path, shared_data):
    """benchmarks/active_learning.py in a tiny form: the table is printed and every strategy
    starts from the same frames, so from the same error. Needs the full quartz set (its pool
    is frames 0-149, its test set 150-200)."""
    import subprocess

    from conftest import HAVE_FULL_DATA, missing_data

    if not HAVE_FULL_DATA:
        missing_data("the full quartz data set (201 frames; the shipped subset has 6)")

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "active_learning.py"
    out = tmp_path / "al.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--systems", "quartz", "--quick", "--start", "3",
         "--step", "3", "--max", "6", "--seeds", "1", "--n-sparse", "20",
         "--strategies", "uncertainty,hybrid,random,stride", "--min-separation", "5",
         "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| frames | uncertainty | hybrid | random | stride |" in proc.stdout
    runs = json.loads(out.read_text())["systems"]["quartz"]["runs"]
    first = {name: rounds[0]["test_rmse"] for name, rounds in runs.items()}
    assert len(set(first.values())) == 1, first
    for rounds in runs.values():
        assert [r["n_train"] for r in rounds] == [3, 6]
        assert all(0 < r["test_rmse"] < 0.2 for r in rounds)  # species mean: 0.42 e
        # --min-separation reaches the selection: no two labelled pool frames closer than 5
        labelled = sorted(k for r in rounds for k in r["added"])
        assert min(np.diff(labelled)) >= 5, labelled


def test_kernel_trainer_sparse_fraction_grows_with_the_data(quartz):
    """sparse_fraction f: min(cap, ceil(f * environments)) sparse points per species, so the
    sparse set grows with the training frames; the model is the one of an explicit per-species
    n_sparse (same predictions to 1e-12)."""
    import math

    from numbec.models import MonopoleModel

    cap, fraction = 40, 0.3
    train = kernel_trainer("monopole", cap, SETTINGS, sparse_fraction=fraction)
    sizes = []
    for n_frames in (1, 2, 4):
        frames = quartz[:n_frames]
        model = train(frames)
        numbers = np.concatenate([a.numbers for a in frames])
        expected = {int(z): min(cap, math.ceil(fraction * int((numbers == z).sum())))
                    for z in np.unique(numbers)}
        got = {int(z): int((model.sparse_species == z).sum()) for z in np.unique(numbers)}
        assert got == expected
        sizes.append(sum(got.values()))
        reference = MonopoleModel(settings=SETTINGS, n_sparse=expected).fit(frames)
        np.testing.assert_allclose(model.predict(quartz[5])["bec"],
                                   reference.predict(quartz[5])["bec"], rtol=0, atol=1e-12)
    assert sizes[0] < sizes[1] < sizes[2]
    # without a fraction, n_sparse per species (capped at the environments) from the start
    fixed = kernel_trainer("monopole", cap, SETTINGS)(quartz[:1])
    numbers = quartz[0].numbers
    assert {int(z): int((fixed.sparse_species == z).sum()) for z in np.unique(numbers)} == \
        {int(z): min(cap, int((numbers == z).sum())) for z in np.unique(numbers)}
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="sparse_fraction"):
            kernel_trainer("monopole", cap, SETTINGS, sparse_fraction=bad)

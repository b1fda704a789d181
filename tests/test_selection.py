"""Frame selection for the next reference calculations (numbec.selection, numbec.io.dft_inputs).

Physics checked: the posterior variance ranks a frame far from the training data above one
identical to a training frame; the greedy posterior update makes a duplicate of a picked frame
worthless; no strategy ever picks two frames closer than the minimum separation; streaming in
chunks changes nothing; POSCAR and pw.x inputs read back through ASE to the same structures.
"""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

import numbec
from numbec.descriptors import DescriptorSettings
from numbec.io.dft_inputs import read_espresso_template, write_selected
from numbec.selection import (
    STRATEGIES,
    UNCERTAINTY_RANK,
    frame_residual,
    frame_score,
    frame_score_lowrank,
    select,
)

SETTINGS = DescriptorSettings(species=(8, 14), cutoff_radial=5.0, cutoff_angular=4.0,
                              n_radial=6, n_angular=4, l_max=2)


@pytest.fixture(scope="module")
def quartz():
    return numbec.read_bec(numbec.io.example_file("sio2_quartz_subset"))


@pytest.fixture(scope="module")
def model(quartz):
    return numbec.MonopoleModel(settings=SETTINGS, n_sparse=30).fit(quartz[:3])


def _displaced(atoms, amplitude, seed):
    out = atoms.copy()
    out.positions += np.random.default_rng(seed).normal(0.0, amplitude, out.positions.shape)
    return out


def _score(model, atoms):
    return frame_score(model, atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)


def test_score_is_the_epistemic_part_of_the_predicted_bec_variance(model, quartz):
    atoms = quartz[12]
    std = model.predict(atoms, uncertainty=True)["bec_std"]
    assert _score(model, atoms) == pytest.approx(np.mean(std**2) - model.sigma_v2, rel=1e-9)


def test_far_frame_ranks_above_training_frame(model, quartz):
    train = quartz[0]
    far = _displaced(quartz[10], 0.15, seed=1)  # 0.15 Å random displacements: hot, distorted
    assert _score(model, far) > 3.0 * _score(model, train)
    for strategy in ("uncertainty", "diverse"):
        picked = select(model, [train, far], 1, strategy, score="exact")
        assert list(picked.indices) == [1], strategy
        assert list(select(model, [train, far], 1, strategy).indices) == [1], strategy
        assert picked.scores[0] == pytest.approx(np.sqrt(_score(model, far)), rel=1e-12)


def _lowrank(model, atoms, rank=UNCERTAINTY_RANK):
    return frame_score_lowrank(model, atoms.positions, atoms.numbers, np.asarray(atoms.cell),
                               atoms.pbc, rank=rank)


@pytest.mark.parametrize("score", ["exact", "lowrank"])
def test_greedy_update_makes_a_duplicate_as_known_as_training_data(model, quartz, score):
    far = _displaced(quartz[10], 0.15, seed=1)
    # the training frame's score on the estimator of the picks' scores
    train_std = np.sqrt((_score if score == "exact" else _lowrank)(model, quartz[0]))
    picked = select(model, [far, far.copy()], 2, "uncertainty", score=score)
    assert picked.pick_score == picked.score
    # before: 2.5-3x the uncertainty of a training frame (exact 3.0x, lowrank 2.7x); after
    # adding the first copy to the posterior, the second is about as well known as the
    # training frames
    assert picked.scores[0] > 2.5 * train_std
    assert picked.scores[1] < 1.5 * train_std


def _pool(quartz):
    return list(quartz[:3]) + list(quartz[14:18]) + [
        _displaced(quartz[k], amp, seed=k) for k, amp in
        ((4, 0.02), (6, 0.05), (8, 0.08), (10, 0.11), (11, 0.14), (13, 0.2))]


def test_lowrank_selection_builds_no_design_rows_and_reports_one_estimator(model, quartz,
                                                                          monkeypatch):
    """The default score's greedy stage works in its K directions: no frame's design rows
    (several times the cost of the score) are built, and the picks' scores are on the
    estimator of the pool's, so the first pick's is the pool's largest."""
    import numbec.selection as selection

    def refuse(*args, **kwargs):
        raise AssertionError("design rows built")

    monkeypatch.setattr(selection, "frame_design", refuse)
    for strategy in ("uncertainty", "hybrid", "reduction"):
        picked = select(model, _pool(quartz), 3, strategy)
        assert len(picked.indices) == 3 and picked.pick_score == f"lowrank K={UNCERTAINTY_RANK}"
    picked = select(model, _pool(quartz), 3)
    assert picked.scores[0] == pytest.approx(picked.pool_score_max, rel=1e-12)
    assert picked.to_dict()["pick_score"] == picked.to_dict()["score"]


def test_lowrank_greedy_at_full_rank_is_the_exact_greedy(quartz):
    well_posed = numbec.MonopoleModel(settings=SETTINGS, n_sparse=10).fit(quartz[:3])
    pool = _pool(quartz)
    for strategy in ("uncertainty", "reduction"):
        exact = select(well_posed, pool, 4, strategy, score="exact")
        full = select(well_posed, pool, 4, strategy, uncertainty_rank=None)
        assert list(full.indices) == list(exact.indices), strategy
        np.testing.assert_allclose(full.scores, exact.scores, rtol=1e-6)


def test_custom_score_picks_are_scored_exactly(model, quartz):
    picked = select(model, _pool(quartz), 2, score=lambda *args: 1.0)
    assert picked.score == "custom" and picked.pick_score == "exact"
    atoms = _pool(quartz)[int(picked.indices[0])]
    assert picked.scores[0] == pytest.approx(np.sqrt(_score(model, atoms)), rel=1e-9)


def test_reduction_picks_the_frame_that_lowers_the_pool_variance_most(model, quartz):
    """Brute force: for every candidate, the posterior after adding it (hyperparameters
    fixed), and the mean frame_score over the pool under that posterior."""
    import copy

    from numbec.selection import frame_design

    pool = [_displaced(quartz[k], amp, seed=k) for k, amp in
            ((4, 0.02), (6, 0.06), (8, 0.1), (11, 0.14), (13, 0.2))]
    precision = np.linalg.inv(model.covariance)
    mean_now = np.mean([_score(model, a) for a in pool])
    gains = []
    for atoms in pool:
        phi = frame_design(model, atoms.positions, atoms.numbers, np.asarray(atoms.cell),
                           atoms.pbc)
        updated = copy.copy(model)
        updated.covariance = np.linalg.inv(precision + phi.T @ phi / model.sigma_v2)
        gains.append(mean_now - np.mean([_score(updated, a) for a in pool]))
    assert min(gains) > 0
    best = int(np.argmax(gains))
    assert select(model, pool, 1, "reduction", score="exact").indices[0] == best
    # the pool matrix from the posterior directions is exact at full rank
    assert select(model, pool, 1, "reduction", uncertainty_rank=None).indices[0] == best


def _spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_lowrank_score_at_full_rank_is_the_exact_epistemic_variance(quartz):
    # a model with a well-conditioned posterior (10 sparse points per species: condition
    # number 4e7): the two routes to the same trace differ by about 1e-19 times the condition
    # number, so with the 30-point fixture (2.5e11) a change of round-off order anywhere in
    # the fit moved them 3e-8 apart; here they agree to 2e-11
    well_posed = numbec.MonopoleModel(settings=SETTINGS, n_sparse=10).fit(quartz[:3])
    for atoms in (quartz[12], _displaced(quartz[5], 0.1, seed=4)):
        args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
        exact = frame_score(well_posed, *args)
        assert frame_score_lowrank(well_posed, *args, rank=None) == pytest.approx(exact,
                                                                                   rel=1e-9)
        # truncated: the variance in the leading directions, never more than the whole
        assert 0 < frame_score_lowrank(well_posed, *args, rank=8) <= exact * (1 + 1e-9)


def test_lowrank_score_ranks_frames_like_the_exact_score(model, quartz):
    """Training frames, training-like frames and frames displaced by 0.02-0.2 Å: the default
    rank keeps the order of the exact score."""
    frames = list(quartz[:3]) + list(quartz[14:18]) + [
        _displaced(quartz[k], amp, seed=k) for k, amp in
        ((4, 0.02), (6, 0.05), (8, 0.08), (10, 0.11), (11, 0.14), (13, 0.2))]
    exact = [_score(model, a) for a in frames]
    assert model.covariance.shape[0] > UNCERTAINTY_RANK  # truncated, not the full posterior
    fast = [frame_score_lowrank(model, a.positions, a.numbers, np.asarray(a.cell), a.pbc)
            for a in frames]
    assert _spearman(fast, exact) >= 0.9
    # the selection agrees on the most uncertain frame
    assert (select(model, frames, 1, "uncertainty").indices[0]
            == select(model, frames, 1, "uncertainty", score="exact").indices[0])


def _residual(model, atoms):
    return frame_residual(model, atoms.positions, atoms.numbers, np.asarray(atoms.cell),
                          atoms.pbc)


def test_residual_is_the_distance_to_the_span_of_the_sparse_points(quartz):
    """zeta = 2: the kernel's feature map is explicit, phi(x) = x (x) x, so the Nyström
    residual must equal the squared distance of phi(x) to the span of the sparse points'
    features (least squares), 0 for a sparse point and > 0 for an environment outside."""
    settings = DescriptorSettings(species=(8, 14), cutoff_radial=4.0, cutoff_angular=3.0,
                                  n_radial=3, n_angular=2, l_max=1)
    model = numbec.MonopoleModel(settings=settings, n_sparse={"O": 12, "Si": 6},
                                 zeta=2).fit(quartz[:1])
    far = _displaced(quartz[10], 0.2, seed=2)
    from numbec.descriptors import compute_descriptors

    desc = compute_descriptors(far.positions, far.numbers, np.asarray(far.cell), far.pbc,
                               model.settings).values
    unit = desc / np.linalg.norm(desc, axis=1)[:, None]
    expected = np.empty(len(far))
    for z in (8, 14):
        refs = model.sparse_unit[model.sparse_species == z]
        basis = np.einsum("bi,bj->bij", refs, refs).reshape(len(refs), -1).T  # (D^2, m)
        rows = np.flatnonzero(far.numbers == z)
        feats = np.einsum("ai,aj->aij", unit[rows], unit[rows]).reshape(len(rows), -1).T
        coef = np.linalg.lstsq(basis, feats, rcond=None)[0]
        expected[rows] = np.sum((feats - basis @ coef) ** 2, axis=0)
    got = _residual(model, far)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert got.max() > 1e-3  # the test means something: environments outside the span


def test_residual_zero_for_sparse_points_and_large_far_from_them(quartz):
    # n_sparse = every environment of the training frame: each of its atoms is a sparse point
    model = numbec.MonopoleModel(settings=SETTINGS, n_sparse={"O": 48, "Si": 24}).fit(quartz[:1])
    assert np.abs(_residual(model, quartz[0])).max() < 1e-6
    far = _residual(model, _displaced(quartz[0], 0.15, seed=3))
    assert far.mean() > 1e-3 and far.max() <= 1.0
    # an unseen frame of the same MD lies between
    assert 1e-6 < _residual(model, quartz[10]).mean() < far.mean()


def test_hybrid_ranks_the_unrepresented_frame_first_and_learns_from_its_picks(model, quartz):
    far = _displaced(quartz[10], 0.15, seed=1)
    assert _residual(model, far).mean() > 10 * _residual(model, quartz[0]).mean()
    assert list(select(model, [quartz[0], far], 1, "hybrid").indices) == [1]
    # after the first copy is picked its environments are references: the second copy's
    # representation error is gone and only the (updated) posterior variance is left, as
    # in the uncertainty strategy
    hybrid = select(model, [far, far.copy()], 2, "hybrid")
    plain = select(model, [far, far.copy()], 2, "uncertainty")
    assert hybrid.scores[0] > 1.5 * plain.scores[0]  # the residual term counts
    assert hybrid.scores[1] == pytest.approx(plain.scores[1], rel=1e-4)


def test_non_kernel_model_refused_for_uncertainty(quartz):
    from numbec.models import SpeciesMeanModel

    mean = SpeciesMeanModel.fit(quartz[:3])
    with pytest.raises(ValueError, match="posterior covariance"):
        select(mean, quartz[:4], 1, "uncertainty")
    assert len(select(mean, quartz[:4], 2, "random").indices) == 2


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("sel") / "quartz.zarr"
    numbec.convert_trajectory(numbec.io.example_file("sio2_quartz_subset"), path,
                              chunk_frames=6, timestep=2.0, progress=False)
    return path


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_min_separation_is_never_violated(model, store, strategy):
    exclude = [9]
    sel = select(model, store, 4, strategy, min_separation=5.0, exclude=exclude, seed=3)
    times = np.concatenate([sel.times, 2.0 * np.asarray(exclude, dtype=float)])
    assert len(sel.indices) == 4 and not set(sel.indices) & set(exclude)
    for a, b in itertools.combinations(times, 2):
        assert abs(a - b) >= 5.0
    # 20 frames 2 fs apart with 15 fs separation: at most 3 frames fit (0, 15+, 30+ fs)
    with pytest.warns(UserWarning, match="at most 3 of the 10 frames"):
        few = select(model, store, 10, strategy, min_separation=15.0)
    assert 1 <= len(few.indices) <= 3
    for a, b in itertools.combinations(few.times, 2):
        assert abs(a - b) >= 15.0


def test_constraints_are_checked_before_scoring(model, store, monkeypatch):
    import numbec.selection as selection

    scored = []

    def score(model, positions, numbers, cell, pbc, where):
        scored.append(int(where.rsplit(" ", 1)[1]))
        return 1.0

    # frames 2 fs apart: 5 fs around the excluded frame 9 rules out frames 7-11 unscored
    picked = select(model, store, 2, score=score, min_separation=5.0, exclude=[9])
    assert len(picked.indices) == 2
    assert sorted(scored) == [k for k in range(20) if not 7 <= k <= 11]

    def refuse(*args, **kwargs):
        raise AssertionError("frames scored")

    monkeypatch.setattr(selection, "_scan", refuse)
    # the 38 fs of the store all within 40 fs of frame 0: nothing to pick, no scoring
    with pytest.warns(UserWarning, match="at most 0 of the 2 frames"):
        empty = select(model, store, 2, min_separation=40.0, exclude=[0])
    assert len(empty.indices) == 0
    with pytest.raises(ValueError, match="every frame is excluded"):
        select(model, store, 1, exclude=range(20))


def test_streaming_chunks_do_not_change_the_selection(model, store, quartz):
    whole = select(model, store, 3, "uncertainty", chunk_frames=20)
    chunked = select(model, store, 3, "uncertainty", chunk_frames=3)
    frames = select(model, quartz, 3, "uncertainty")
    assert list(whole.indices) == list(chunked.indices) == list(frames.indices)
    np.testing.assert_allclose(whole.scores, chunked.scores, rtol=1e-10)
    # few candidates kept: the same first pick (the most uncertain frame)
    small = select(model, store, 1, "uncertainty", candidates=2)
    assert small.indices[0] == whole.indices[0]


def test_stride_spreads_frames_and_fills_gaps(store):
    sel = select(None, store, 4, "stride")
    assert list(sel.indices) == [0, 6, 13, 19]
    fill = select(None, store, 1, "stride", exclude=[0, 19])
    assert abs(int(fill.indices[0]) - 9.5) <= 0.5


# ---------------------------------------------------------------------------- DFT inputs
PW_TEMPLATE = """&control
  calculation = 'scf'
  lelfield = .true.
  nberrycyc = 3
  pseudo_dir = './pseudo'
/
&system
  ibrav = 0
  nat = 9
  ntyp = 2
  ecutwfc = 60.0
/
&electrons
  conv_thr = 1e-10
/
ATOMIC_SPECIES
Si 28.086 Si.pbe-n-rrkjus_psl.1.0.0.UPF
O 15.999 O.pbe-n-kjpaw_psl.0.1.UPF
K_POINTS automatic
2 2 2 0 0 0
"""


def _picked(quartz, ks, shuffle=False):
    out = []
    for k in ks:
        atoms = quartz[k].copy()
        if shuffle:  # species not in blocks: O and Si interleaved
            atoms = atoms[np.random.default_rng(k).permutation(len(atoms))]
        atoms.info["frame"] = k
        atoms.info["time"] = 2.0 * k
        out.append(atoms)
    return out


def _same_structure(a, b, order=None):
    ref_pos = a.positions if order is None else a.positions[order]
    ref_num = a.numbers if order is None else a.numbers[order]
    np.testing.assert_allclose(b.positions, ref_pos, atol=1e-8)
    np.testing.assert_array_equal(b.numbers, ref_num)
    np.testing.assert_allclose(np.asarray(b.cell), np.asarray(a.cell), atol=1e-10)
    np.testing.assert_array_equal(b.pbc, a.pbc)


def test_poscar_folders_read_back_to_the_same_structures(quartz, tmp_path):
    import ase.io

    template = tmp_path / "tpl"
    template.mkdir()
    (template / "INCAR").write_text("LEPSILON = .TRUE.\nIBRION = 8\n")
    (template / "KPOINTS").write_text("auto\n0\nGamma\n2 2 2\n")
    frames = _picked(quartz, [4, 11]) + _picked(quartz, [7], shuffle=True)
    summary = write_selected(tmp_path / "out", frames, "vasp", template=template)
    meta = json.loads(summary.read_text())
    assert meta["folders"] == ["frame_000004", "frame_000011", "frame_000007"]
    for atoms in frames:
        folder = tmp_path / "out" / f"frame_{atoms.info['frame']:06d}"
        info = json.loads((folder / "frame.json").read_text())
        assert info["frame"] == atoms.info["frame"] and info["time_fs"] == atoms.info["time"]
        order = None if info["atom_order"] is None else np.asarray(info["atom_order"])
        back = ase.io.read(folder / "POSCAR", format="vasp")
        _same_structure(atoms, back, order)
        if order is not None:  # POSCAR needs one block per species
            assert np.count_nonzero(np.diff(back.numbers)) == 1
        assert (folder / "INCAR").read_text() == (template / "INCAR").read_text()
    xyz = ase.io.read(tmp_path / "out" / "selected.extxyz", ":")
    for a, b in zip(frames, xyz, strict=True):
        _same_structure(a, b)
        assert b.info["frame"] == a.info["frame"] and b.info["time"] == a.info["time"]
    with pytest.raises(FileExistsError,
                       match=r"selection.json: .* \(overwrite=True, --overwrite\)"):
        write_selected(tmp_path / "out", frames, "vasp", template=template)


def test_pw_inputs_read_back_with_the_template_settings(quartz, tmp_path):
    import ase.io

    tpl = tmp_path / "pw.in"
    tpl.write_text(PW_TEMPLATE)
    settings = read_espresso_template(tpl)
    assert "nat" not in settings["input_data"]["system"] and settings["kpts"] == (2, 2, 2)
    frames = _picked(quartz, [3, 15], shuffle=True)
    write_selected(tmp_path / "qe", frames, "espresso", template=tpl)
    for atoms in frames:
        path = tmp_path / "qe" / f"frame_{atoms.info['frame']:06d}" / "pw.in"
        _same_structure(atoms, ase.io.read(path, format="espresso-in"))
        text = path.read_text()
        assert "lelfield" in text and "ecutwfc" in text and "nat              = 72" in text
        assert "Si.pbe-n-rrkjus_psl.1.0.0.UPF" in text and "2 2 2" in text


def test_pw_template_errors_name_the_file(quartz, tmp_path):
    tpl = tmp_path / "pw.in"
    tpl.write_text(PW_TEMPLATE.replace("Si 28.086 Si.pbe-n-rrkjus_psl.1.0.0.UPF\n", ""))
    with pytest.raises(ValueError, match=r"pw.in: ATOMIC_SPECIES has no pseudopotential for Si"):
        write_selected(tmp_path / "qe", _picked(quartz, [1]), "espresso", template=tpl)
    assert not list((tmp_path / "qe").glob("frame_*"))  # nothing half written
    with pytest.raises(ValueError, match="needs a template"):
        write_selected(tmp_path / "qe2", _picked(quartz, [1]), "espresso")


def test_cli_select_writes_folders(model, store, tmp_path):
    from numbec.cli import main

    model_path = model.save(tmp_path / "m.npz")
    out = tmp_path / "picked"
    code = main(["select", str(model_path), str(store), "-n", "3", "-o", str(out),
                 "--format", "vasp", "--min-separation", "6", "--exclude", "0,1",
                 "--no-progress"])
    assert code == 0
    meta = json.loads((out / "selection.json").read_text())
    frames = meta["selection"]["frames"]
    assert len(frames) == 3 and not set(frames) & {0, 1}
    assert all(abs(a - b) >= 3 for a, b in itertools.combinations(frames, 2))  # 6 fs = 3 frames
    assert sorted(p.name for p in out.glob("frame_*")) == sorted(f"frame_{k:06d}"
                                                                 for k in frames)
    # a second round: no model for stride, the first round's frames excluded via its json
    out2 = tmp_path / "picked2"
    assert main(["select", "-", str(store), "-n", "2", "-o", str(out2), "--strategy", "stride",
                 "--exclude", str(out / "selection.json"), "0,1", "--no-progress"]) == 0
    frames2 = json.loads((out2 / "selection.json").read_text())["selection"]["frames"]
    assert len(frames2) == 2 and not set(frames2) & (set(frames) | {0, 1})
    assert main(["select", "-", str(store), "-n", "2", "-o", str(tmp_path / "x")]) == 1
    assert meta["selection"]["score"] == f"lowrank K={UNCERTAINTY_RANK}"
    # --score exact reaches select(..., score="exact")
    out3 = tmp_path / "exact"
    assert main(["select", str(model_path), str(store), "-n", "2", "-o", str(out3),
                 "--score", "exact", "--no-progress"]) == 0
    meta3 = json.loads((out3 / "selection.json").read_text())["selection"]
    assert meta3["score"] == "exact"
    assert meta3["frames"] == [int(k) for k in select(model, store, 2, score="exact").indices]


def test_a_potcar_in_another_species_order_is_refused(quartz, tmp_path):
    """The POSCARs list species in order of first appearance; a template POTCAR with its
    potentials in another order would give each species another's potential."""
    from ase.data import chemical_symbols

    frames = _picked(quartz, [4, 11])
    numbers = frames[0].numbers
    order = [chemical_symbols[z] for z in dict.fromkeys(int(z) for z in numbers)]
    template = tmp_path / "tpl"
    template.mkdir()
    (template / "INCAR").write_text("LEPSILON = .TRUE.\n")

    def potcar(symbols):
        (template / "POTCAR").write_text("".join(
            f"  PAW_PBE {s} 01Jan2000\n   TITEL  = PAW_PBE {s}_sv 01Jan2000\n"
            for s in symbols))

    potcar(order[::-1])
    with pytest.raises(ValueError, match=rf"POTCAR: .* for {' '.join(order[::-1])} .*"
                                         rf"species {' '.join(order)}"):
        write_selected(tmp_path / "bad", frames, "vasp", template=template)
    assert not any((tmp_path / "bad").glob("frame_*"))
    potcar(order)
    write_selected(tmp_path / "good", frames, "vasp", template=template)
    poscar = (tmp_path / "good" / "frame_000004" / "POSCAR").read_text().splitlines()
    assert poscar[5].split() == order  # the species line


def test_vasp_folders_without_a_template_say_so(quartz, tmp_path):
    with pytest.warns(UserWarning, match="only POSCAR and frame.json"):
        summary = write_selected(tmp_path / "out", _picked(quartz, [4]), "vasp")
    assert "only POSCAR and frame.json" in json.loads(summary.read_text())["note"]


def test_cli_select_checks_inputs_before_scoring(model, store, tmp_path, monkeypatch, capsys):
    """Every error that does not depend on the picks comes before the scoring pass (minutes
    on a real trajectory), and no failed run leaves a selection behind."""
    import numbec.selection as selection
    from numbec.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("frames scored")

    monkeypatch.setattr(selection, "select", refuse)
    model_path = model.save(tmp_path / "m.npz")
    pw = tmp_path / "pw.in"
    pw.write_text(PW_TEMPLATE.replace("Si 28.086 Si.pbe-n-rrkjus_psl.1.0.0.UPF\n", ""))
    done = tmp_path / "done"
    done.mkdir()
    (done / "selection.json").write_text("{}")
    cases = [
        (["--format", "vasp", "--template", str(tmp_path / "missing")], "not found"),
        (["--format", "espresso"], "needs --template"),
        (["--format", "espresso", "--template", str(pw)], "no pseudopotential for Si"),
        # 20 frames 2 fs apart: 20 fs from frames 0, 10 and 19 (0, 20, 38 fs) leaves none
        (["--min-separation", "20", "--exclude", "0,10,19"], "no frame of .* can be picked"),
        # 15 fs apart: 3 frames at most (0, 16, 32 fs)
        (["--min-separation", "15"], "at most 3 of the 20 frames .* -n 3"),
        (["--exclude", "20"], "frame 20 is outside the 20 frames"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        assert main(["select", str(model_path), str(store), "-n", "4", "-o", str(out),
                     "--no-progress", *extra]) == 1, extra
        err = capsys.readouterr().err
        assert re.search(message, err), extra
        # a message that names the template it is about blames no other file
        assert "while reading" not in err, extra
        assert not (out / "selection.json").exists()
    assert main(["select", str(model_path), str(store), "-n", "1", "-o", str(done),
                 "--no-progress"]) == 1
    assert "a selection is already there" in capsys.readouterr().err


def test_cli_exclude_refuses_a_selection_of_another_trajectory(store, tmp_path, capsys):
    """The indices of a selection.json mean frames of its own trajectory: the same MD
    converted again is accepted, a strided conversion of it is refused."""
    from numbec.cli import main

    source = numbec.io.example_file("sio2_quartz_subset")
    again = tmp_path / "again.zarr"
    numbec.convert_trajectory(source, again, timestep=2.0, progress=False)
    strided = tmp_path / "strided.zarr"
    numbec.convert_trajectory(source, strided, timestep=4.0, index="::2", progress=False)
    round0 = tmp_path / "round0"
    assert main(["select", "-", str(store), "-n", "3", "-o", str(round0), "--strategy",
                 "stride", "--no-progress"]) == 0
    earlier = str(round0 / "selection.json")

    def run(traj, *exclude, name):
        return main(["select", "-", str(traj), "-n", "2", "-o", str(tmp_path / name),
                     "--strategy", "stride", "--no-progress", "--exclude", *exclude])

    assert run(again, earlier, name="a") == 0
    assert run(strided, earlier, name="b") == 1
    err = capsys.readouterr().err
    assert "whose frames are not those of" in err and "--exclude 0,10,19" in err
    assert not (tmp_path / "b").exists()
    # an explicit list of indices is the user's word for it
    assert run(strided, "0,5,9", name="c") == 0
    # without the extxyz, the recorded path and frame count must match
    (round0 / "selected.extxyz").unlink()
    assert run(store, earlier, name="d") == 0
    assert run(again, earlier, name="e") == 1
    assert "selected.extxyz is missing" in capsys.readouterr().err

"""Smoke tests of benchmarks/*.py in their reduced (--quick) form, so the benchmarks never rot.

Each script runs as a subprocess (as a user runs it). Its printed markdown tables are parsed:
the expected headers must be there, numbec's own timings must be positive finite numbers, and
relations that can fail are checked (two independent routes to the same spectrum agree, a
learned model beats the species-mean baseline, a model trained on BECs alone predicts the
dipole). Timings are never compared with fixed numbers: speed is read off the tables by
people, not asserted here.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import missing_data

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
#: where the scripts look for ../shared/data (the same expression as in benchmarks/*.py)
SHARED_DATA = Path(os.environ.get("NUMBEC_SHARED_DATA", REPO.parent / "shared" / "data"))


def run_benchmark(name, *args, cwd, env=None, timeout=600):
    env = dict(os.environ, MPLBACKEND="Agg", **(env or {}))
    # the scripts must import this checkout's numbec, whichever numbec is installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def markdown_tables(text):
    """Every markdown table in ``text``: list of (header cells, list of row cells)."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if block:
            assert len(block) >= 2 and set("".join(block[1])) <= set("-:"), block
            assert all(len(row) == len(block[0]) for row in block), block
            tables.append((block[0], block[2:]))
            block = []
    return tables


def table(text, header):
    """The rows (dicts header -> cell) of every table whose header is ``header``."""
    found = [[dict(zip(head, row, strict=True)) for row in rows]
             for head, rows in markdown_tables(text) if head == header]
    assert found, f"no table with header {header} in:\n{text}"
    return found


def number(cell):
    """The leading number of a cell ("37 (41)", "0.023 s", "6x", "100,000", "3.9%")."""
    match = re.match(r"[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?", cell)
    assert match, f"not a number: {cell!r}"
    return float(match.group().replace(",", ""))


def positive(cell):
    value = number(cell)
    assert math.isfinite(value) and value > 0, cell
    return value


def best_median(cell):
    """A "best (median)" timing cell; both positive, best <= median."""
    match = re.fullmatch(r"(\S+) \((\S+)\)", cell)
    assert match, f"not 'best (median)': {cell!r}"
    best, median = positive(match.group(1)), positive(match.group(2))
    assert best <= median, cell
    return best


def needs_shared_data():
    if not SHARED_DATA.is_dir():
        missing_data("the full reference data sets (all 201 quartz and 59 BaTiO3 frames, "
                     "and the ZrO2 OUTCARs, which numbec cannot ship)")


def test_spectra_benchmark(tmp_path):
    out = run_benchmark("spectra.py", "--quick", cwd=tmp_path)
    (row,) = table(out, ["frames", "simulated time", "ir_spectrum (1 block)",
                         "ir_spectrum (10 blocks)", "parzen (1 block)", "direct lag sum",
                         "direct / numbec", "max rel. diff"])[0]
    assert number(row["frames"]) == 100_000
    for key in ("ir_spectrum (1 block)", "ir_spectrum (10 blocks)", "parzen (1 block)",
                "direct lag sum"):
        positive(row[key])
    # FFT autocorrelation and the lag-by-lag sum are two routes to the same spectrum
    assert number(row["max rel. diff"]) < 1e-10


def test_convert_memory_benchmark(tmp_path):
    out = run_benchmark("convert_memory.py", "--quick", "--xz", cwd=tmp_path)
    (rows,) = table(out, ["frames", "atoms", "source", "MB file", "seconds", "frames/s",
                          "peak RSS MiB"])
    assert [(r["frames"], r["atoms"], r["source"]) for r in rows] == [
        ("100", "48", ".xyz"), ("100", "48", ".xyz.xz"),
        ("1000", "48", ".xyz"), ("1000", "48", ".xyz.xz")]
    for r in rows:
        for key in ("MB file", "frames/s", "peak RSS MiB"):
            positive(r[key])
    size = {(r["frames"], r["source"]): number(r["MB file"]) for r in rows}
    peak = {(r["frames"], r["source"]): number(r["peak RSS MiB"]) for r in rows}
    for frames in ("100", "1000"):  # random coordinates still compress
        assert size[frames, ".xyz.xz"] < size[frames, ".xyz"]
    assert size["1000", ".xyz"] > 5 * size["100", ".xyz"]
    # the claim of the benchmark: peak memory does not grow with the trajectory's length
    for source in (".xyz", ".xyz.xz"):
        assert peak["1000", source] < 1.25 * peak["100", source]


def _blocked_path(tmp_path):
    """A PYTHONPATH on which ``import featomic`` and ``import dscribe`` fail."""
    block = tmp_path / "block"
    for name in ("featomic", "dscribe"):
        (block / name).mkdir(parents=True)
        (block / name / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    return os.pathsep.join(filter(None, [str(block), os.environ.get("PYTHONPATH")]))


@pytest.mark.parametrize("comparison", ["installed", "blocked"])
def test_descriptors_benchmark(tmp_path, comparison):
    if comparison == "installed":
        for name in ("featomic", "dscribe"):
            if importlib.util.find_spec(name) is None:
                pytest.skip(f"{name} not installed (extra 'bench')")
        env = None
    else:
        env = {"PYTHONPATH": _blocked_path(tmp_path)}
    out = run_benchmark("descriptors.py", "--quick", cwd=tmp_path, env=env)
    tables = table(out, ["µs per atom, best (median)", "values", "+ Jacobian", "+ adjoint"])
    assert len(tables) == (2 if SHARED_DATA.is_dir() else 1)  # water box (+ quartz)
    for rows in tables:
        rows = {r["µs per atom, best (median)"]: r for r in rows}
        scalar, vector = rows["numbec scalar"], rows["numbec vector"]
        values = best_median(scalar["values"])
        # values + the full pair Jacobian cost more than the values alone
        assert best_median(scalar["+ Jacobian"]) > values
        best_median(scalar["+ adjoint"])
        best_median(vector["values"])
        best_median(vector["+ adjoint"])
        assert vector["+ Jacobian"] == "-"
        featomic = rows["featomic SoapPowerSpectrum"]
        dscribe = rows["DScribe SOAP (derivatives numerical, per centre)"]
        for row in (featomic, dscribe):
            assert row["+ adjoint"] == "-"
            for key in ("values", "+ Jacobian"):
                if comparison == "blocked":
                    assert row[key] == "n/a"
                else:
                    best_median(row[key])
    if comparison == "blocked":
        assert "featomic not available" in out and "dscribe not available" in out
        assert "featomic values / numbec values = n/a" in out
    else:
        lines = [line for line in out.splitlines() if line.startswith("featomic values /")]
        assert len(lines) == len(tables)
        for line in lines:
            ratios = re.findall(r"= ([^;\s]+)", line)
            assert len(ratios) == 2 and all(positive(r) for r in ratios), line


def test_basis_functions_benchmark(tmp_path):
    needs_shared_data()
    out = run_benchmark("basis_functions.py", "--quick", cwd=tmp_path)
    (rows,) = table(out, ["function", "ns per pair, best (median)"])
    names = [r["function"].split(" ")[0] for r in rows]
    assert names == ["sph_harm_unit", "sph_harm_unit_values", "hermite_eval", "hermite_values",
                     "hermite_eval", "hermite_values"]
    for r in rows:
        best_median(r["ns per pair, best (median)"])


@pytest.mark.slow
def test_water_dimer_dipole_benchmark(tmp_path):
    pytest.importorskip("tblite")
    out = run_benchmark("water_dimer_dipole.py", "--quick", cwd=tmp_path)
    (rows,) = table(out, ["model", "BEC RMSE (e)", "dipole error RMSE (e·Å)",
                          "relative dipole error, mean", "fit (s)"])
    rows = {r["model"]: r for r in rows}
    assert list(rows) == ["MonopoleModel", "DipoleModel", "CombinedModel"]
    for r in rows.values():
        positive(r["BEC RMSE (e)"])
        positive(r["dipole error RMSE (e·Å)"])
        # the dipole is never shown to the models: it follows from the BECs they learned
        assert number(r["relative dipole error, mean"]) < 20.0  # percent
    # the lambda = 1 model with bond dipoles: a few per cent at most (the paper: ~1 %)
    assert number(rows["CombinedModel"]["relative dipole error, mean"]) < 5.0


#: Bounds on test RMSE / species-mean RMSE of test_models_benchmark's reduced setting, keyed by
#: the data set's last species symbol (Si quartz, Zr ZrO2, Ba BaTiO3): 1.35 times the ratio
#: measured 2026-12-03 at commit f60c43e (quartz 0.189 / 0.078 / 0.076, ZrO2 0.42 / 0.31 /
#: 0.196, BaTiO3 0.267 / 0.137 / 0.133 for monopole / dipole / combined), never above the
#: former 0.5.
MODEL_RMSE_BOUND = {
    "Si": {"monopole": 0.26, "dipole": 0.11, "combined": 0.11},
    "Zr": {"monopole": 0.5, "dipole": 0.42, "combined": 0.27},
    "Ba": {"monopole": 0.36, "dipole": 0.19, "combined": 0.18},
}


@pytest.mark.slow
def test_models_benchmark(tmp_path):
    needs_shared_data()
    out = run_benchmark("models.py", "--quick", "--train-stride", "20", "--n-sparse", "20",
                        "--curve-sizes", "3,6", "--curve-model", "monopole",
                        "--json", tmp_path / "models.json", cwd=tmp_path)
    titles = re.findall(r"^### (.+?) — ", out, flags=re.M)
    assert titles == ["alpha-quartz SiO2 (QE)", "ZrO2 (VASP DFPT)", "BaTiO3 (QE)"]
    species = [["O", "Si"], ["O", "Zr"], ["O", "Ti", "Ba"]]
    for (head, rows), symbols in zip(
            [t for t in markdown_tables(out) if t[0][0] == "model"], species, strict=True):
        assert head == ["model", "fit s", "predict s", "RMSE", "MAE", "R2"] + [
            f"{m} {s}" for s in symbols for m in ("RMSE", "MAE", "R2")]
        rows = {r[0]: dict(zip(head, r, strict=True)) for r in rows}
        assert list(rows) == ["mean", "monopole", "dipole", "combined"]
        baseline = positive(rows["mean"]["RMSE"])
        for name in ("monopole", "dipole", "combined"):
            r = rows[name]
            positive(r["fit s"])
            assert positive(r["MAE"]) <= positive(r["RMSE"])
            assert number(r["R2"]) <= 1.0
            # held-out frames: the test RMSE relative to the species-mean one stays at what
            # this reduced setting achieves (MODEL_RMSE_BOUND)
            bound = MODEL_RMSE_BOUND[symbols[-1]][name]
            assert positive(r["RMSE"]) < bound * baseline, (name, r["RMSE"], baseline)
    (curve,) = table(out, ["training frames", "test RMSE", "MAE", "R2", "species-mean RMSE",
                           "fit s"])
    assert [r["training frames"] for r in curve] == ["3", "6"]
    for r in curve:  # measured 0.195 (3 frames) and 0.189 (6 frames) of the species mean
        assert positive(r["test RMSE"]) < 0.27 * positive(r["species-mean RMSE"])
    assert (tmp_path / "models.json").stat().st_size > 0


@pytest.mark.slow
def test_stream_benchmark(tmp_path):
    """benchmarks/stream.py --quick (small models, few frames; about 2.5 minutes, most of it
    starting the ~30 measurement processes), with featomic blocked so that its cells are n/a
    whether or not it is installed."""
    needs_shared_data()
    out = run_benchmark("stream.py", "--quick", cwd=tmp_path, timeout=900,
                        env={"PYTHONPATH": _blocked_path(tmp_path)})
    (rows,) = table(out, ["system", "model", "1 core", "2 cores", "x featomic (1 core)",
                          "x featomic (2 cores)"])
    rates = {}
    for r in rows:
        if r["model"] == "featomic values+gradients":
            assert r["1 core"] == r["2 cores"] == "n/a"
            continue
        rates[r["system"].split(",")[0], r["model"]] = positive(r["1 core"])
        positive(r["2 cores"])
        assert r["x featomic (1 core)"] == "n/a"
    assert set(rates) == {(s, m) for s in ("water", "alpha-quartz")
                          for m in ("SpeciesMeanModel", "MonopoleModel", "CombinedModel",
                                    "CombinedModel, mixed precision")}
    for system in ("water", "alpha-quartz"):
        # no descriptors at all against descriptors, kernels and back-propagation: an order
        # of magnitude apart, so the order survives a noisy machine
        assert rates[system, "SpeciesMeanModel"] > rates[system, "MonopoleModel"]
    (ceiling,) = table(out, ["system", "model", "products (ms/frame)", "ceiling (atom-frames/s)",
                             "ceiling x featomic (1 core)"])
    assert len(ceiling) == 6  # monopole, combined, combined in mixed precision
    for r in ceiling:
        positive(r["products (ms/frame)"])
    (stages,) = table(out, ["stage", "water MonopoleModel", "water CombinedModel",
                            "quartz MonopoleModel", "quartz CombinedModel"])
    by_stage = {r["stage"]: r for r in stages}
    assert len(by_stage) == 9
    for label, r in by_stage.items():
        if not label.startswith("Python glue"):  # the remainder: total minus the timed stages
            for key, cell in r.items():
                if key != "stage":
                    positive(cell)
    (uncertainty,) = table(out, ["system", "model", "plain", "atom_std", "S = 16 total only",
                                 "S = 16 per species", "bec_std K = 16", "bec_std K = 32"])
    assert {(r["system"].split(",")[0], r["model"]) for r in uncertainty} == {
        (s, m) for s in ("water", "alpha-quartz") for m in ("MonopoleModel", "CombinedModel")}
    for r in uncertainty:
        positive(r["plain"])
        # differences of two timings: the quick run's single round makes the small ratios
        # noisy, but 33 weight vectors as adjoint channels against one are several times the
        # plain work (measured 10-25x with these small models), far outside the noise
        ratios = {k: number(v) for k, v in r.items() if k not in ("system", "model", "plain")}
        assert ratios["bec_std K = 32"] > 2.0
    (memory,) = table(out, ["frames", "peak RSS (MiB)", "wall (s)"])
    peak = {number(r["frames"]): positive(r["peak RSS (MiB)"]) for r in memory}
    assert sorted(peak) == [100, 400]
    assert peak[400] < 1.25 * peak[100]  # memory set by the chunk, not the length
    (cluster,) = table(out, ["scheduler", "wall (s)", "start-up + warm-up (s)"])
    assert len(cluster) == 3
    for r in cluster:
        positive(r["wall (s)"])


@pytest.mark.parametrize("comparison", ["installed", "blocked"])
def test_molecule_stream_benchmark(tmp_path, comparison):
    """benchmarks/molecule_stream.py --quick: a water dimer and (H2O)6 streamed batched and
    frame by frame on 1 and the automatic number of threads; featomic's row and the ratio
    column are n/a when featomic cannot be imported."""
    if comparison == "installed":
        pytest.importorskip("featomic")
    env = {"PYTHONPATH": _blocked_path(tmp_path)} if comparison == "blocked" else None
    out = run_benchmark("molecule_stream.py", "--quick", "--frames", "40", cwd=tmp_path,
                        env=env)
    tables = table(out, ["what", "path", "threads", "ms per frame", "atom-frames/s",
                         "x featomic"])
    assert len(tables) == 2
    for rows, n_atoms in zip(tables, (6, 18), strict=True):
        by_row = {(r["what"], r["path"], r["threads"].split(" ")[0]): r for r in rows}
        for model in ("MonopoleModel", "CombinedModel"):
            for path in ("batched (default)", "frame by frame"):
                for threads in ("1", "auto"):
                    r = by_row[f"numbec.predict, {model}", path, threads]
                    ms = positive(r["ms per frame"])
                    # the two columns are the same measurement
                    assert number(r["atom-frames/s"]) == pytest.approx(n_atoms * 1e3 / ms,
                                                                       rel=0.01)
                    if comparison == "blocked":
                        assert r["x featomic"] == "n/a"
        # featomic on one thread (the ratio of the one-thread rows) and on all
        featomic = [r for r in rows if r["what"] == "featomic values+gradients"]
        assert [r["threads"] for r in featomic][:1] == ["1"] and len(featomic) == 2
        for r in featomic:
            if comparison == "blocked":
                assert r["ms per frame"] == r["atom-frames/s"] == "n/a"
            else:
                positive(r["ms per frame"])
        if comparison == "installed":  # like with like: one thread against one thread
            one = number(featomic[0]["ms per frame"])
            r = by_row["numbec.predict, MonopoleModel", "batched (default)", "1"]
            assert number(r["x featomic"]) == pytest.approx(one / number(r["ms per frame"]),
                                                            rel=0.02, abs=0.1)


@pytest.mark.slow
def test_calibration_and_uncertainty_cost_benchmarks(tmp_path):
    needs_shared_data()
    out = run_benchmark("calibration.py", "--systems", "quartz", "--quick", "--models",
                        "monopole", "--sizes", "small", "--n-sparse", "10", "--max-test", "3",
                        "--folds", "2", "--rank", "4", cwd=tmp_path)
    (head, rows), (head_m, rows_m) = markdown_tables(out)
    assert head[:5] == ["system", "model", "train", "test", "RMSE e"]
    row = dict(zip(head, rows[0], strict=True))
    for key in ("cov68", "cov95", "streamed cov68", "streamed cov95"):
        assert 0.0 <= number(row[key]) <= 100.0
    assert number(row["cov68"]) <= number(row["cov95"])
    low, high = map(float, row["cov95 over resampled test frames"].split("-"))
    assert low <= number(row["cov95"]) <= high
    assert row["in target"] == ("yes" if 90 <= number(row["cov95"]) <= 98 else "**no**")
    assert positive(row["streamed cost"].rstrip("x"))
    assert all(positive(x) for x in row["s / s_v / s_w"].split(" / "))
    # every recalibration from the same held-out errors; the default is the first table's
    methods = dict(zip(head_m, rows_m[0], strict=True))
    assert head_m[4:10] == ["raw", "likelihood", "coverage", "worst_block", "residual",
                            "two_part"]
    assert methods["two_part"].split()[0] == row["cov95"]
    assert methods["two_part"].split()[1] == f"({row['NLL']})"
    # two folds: two held-out blocks; the worst block's scale covers at least as much as
    # the pooled coverage scale
    assert len(methods["held-out cov95 raw per block"].split(" / ")) == 2
    assert number(methods["worst_block"].split()[0]) >= number(methods["coverage"].split()[0])
    out = run_benchmark("uncertainty_cost.py", "--systems", "quartz", "--ranks", "4",
                        "--frames", "1", cwd=tmp_path)
    (head, rows), (head_fwd, rows_fwd) = markdown_tables(out)
    assert head == ["system", "C", "plain per frame", "uncertainty", "cost vs plain",
                    "max frame dev", "captured"]
    assert [r[3] for r in rows] == ["exact", "K = 4"]
    assert positive(rows[1][4].rstrip("x"))
    assert head_fwd == ["system", "C", "plain per frame", "forward-mode dM/dt",
                        "cost vs plain"]
    assert [r[3] for r in rows_fwd] == [
        "plain", "+ dipole_derivative_std",
        "+ std and S = 16 samples, per species", "+ std and S = 16 samples, total only",
        "+ std and S = 64 samples, per species", "+ std and S = 64 samples, total only"]
    assert all(positive(r[4].rstrip("x")) for r in rows_fwd)


def test_select_score_benchmark(tmp_path):
    """benchmarks/select_score.py in a tiny form: one row per scoring (plain prediction, exact
    design-row score, low-rank score), speeds relative to the exact score (speed is measured
    by the benchmark, not asserted here)."""
    out = run_benchmark("select_score.py", "--frames", "2", "--ranks", "4", "--sparse", "10",
                        cwd=tmp_path)
    rows = {}
    for line in out.splitlines():
        words = line.split()
        if words[:1] in (["plain"], ["exact"], ["lowrank"], ["select"]):
            name = " ".join(words[:2]) if words[0] != "exact" else "exact"
            rows[name] = words
    assert set(rows) == {"plain BEC", "exact", "lowrank K=4", "select K=4", "select exact"}
    positive(rows["select K=4"][2])
    assert float(rows["exact"][2]) == 1.0  # speed-up column: relative to the exact score
    positive(rows["lowrank K=4"][2])
    positive(rows["plain BEC"][2])

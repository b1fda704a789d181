"""Speed of numbec's descriptors, Jacobians and adjoint products, side by side with featomic's
SoapPowerSpectrum and DScribe's SOAP on the same structures.

Usage::

    python benchmarks/descriptors.py [--repeat 5] [--no-cold] [--no-dscribe]
    python benchmarks/descriptors.py --quick     # smoke run: --repeat 1 --no-cold (seconds)

Systems: (a) a 192-atom periodic water box (64 H2O at 1 g/cm^3, molecules on a 4x4x4 grid with
random orientations and jitter, intermolecular distances >= 1.6 Å); (b) the 72-atom
alpha-quartz cell, first frame of ``../shared/data/sio2_quartz_qe/SiO2.xyz``.

Hyperparameters (as comparable as the three codes allow):

- numbec: cutoff_radial = cutoff_angular = 5 Å, sigma = 0.5 Å, n_radial = n_angular = 8,
  l_max = 4, spherical Bessel basis, cosine cutoff over the whole range (D = 696 for 2 species).
- featomic 0.6: ``cutoff={"radius": 5, "smoothing": {"type": "ShiftedCosine", "width": 0.5}}``,
  ``density={"type": "Gaussian", "width": 0.5}``,
  ``basis={"type": "TensorProduct", "max_angular": 4, "radial": {"type": "Gto",
  "max_radial": 7}}`` (8 radial functions; featomic has no full-range cosine cutoff).
- DScribe 2.1: ``SOAP(r_cut=5, n_max=8, l_max=4, sigma=0.5, rbf="gto", periodic=True)``.
  DScribe has no analytical derivatives for periodic systems, so its derivatives are numerical;
  they are timed for a few centres only and reported per centre.

Columns, µs per atom (best of ``--repeat`` runs, which is the least sensitive to other jobs on a
shared machine; the median is printed in brackets): "values" = descriptors only; "+ Jacobian" =
values and the full pair Jacobian (featomic: position gradients; DScribe: derivatives);
"+ adjoint" = values and the BEC monopole contraction ``monopole_contraction(G)`` with a random
G (what predicting BECs needs; never builds the Jacobian). For the vector descriptor, "+ adjoint"
is ``vector_contraction``. Numba compile time is measured in a subprocess with an empty
``NUMBA_CACHE_DIR`` (cold) and as the first call of this process (on-disk cache warm).
The machine may be shared: timings fluctuate with the load (printed at the start).
featomic and DScribe are optional (``pip install numbec[bench]``): without them their rows
print "n/a".
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NUMBEC_SHARED_DATA", REPO.parent / "shared" / "data"))
CUTOFF, SIGMA, N_MAX, L_MAX = 5.0, 0.5, 8, 4


def water_box(seed: int = 0, min_distance: float = 1.6):
    """64 H2O in a cubic box at 1 g/cm^3: positions (192, 3) Å, numbers, cell (3, 3).

    Molecules sit on a jittered 4x4x4 grid with random orientations, re-drawn until every
    intermolecular distance (minimum image) is at least ``min_distance`` Å.
    """
    rng = np.random.default_rng(seed)
    length = (64 * 18.015 / 6.02214076e23 / 1e-24) ** (1 / 3)
    grid = (np.indices((4, 4, 4)).reshape(3, -1).T + 0.5) * length / 4
    angle = np.deg2rad(104.5)
    local = np.array([[0, 0, 0], [0.9572, 0, 0],
                      [0.9572 * np.cos(angle), 0.9572 * np.sin(angle), 0]])
    positions = np.empty((0, 3))
    for centre in grid:
        for _ in range(1000):
            rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            molecule = centre + rng.normal(scale=0.1, size=3) + local @ rot.T
            delta = molecule[:, None, :] - positions[None, :, :]
            delta -= length * np.round(delta / length)
            if positions.size == 0 or np.sqrt((delta**2).sum(-1)).min() >= min_distance:
                break
        else:
            raise RuntimeError("could not place a water molecule")
        positions = np.concatenate([positions, molecule])
    return positions, np.tile([8, 1, 1], 64), np.eye(3) * length


def quartz():
    from ase.io import read

    atoms = read(SHARED / "sio2_quartz_qe" / "SiO2.xyz", index=0)
    return atoms.get_positions(), atoms.get_atomic_numbers(), np.array(atoms.get_cell())


def settings_for(numbers):
    from numbec.descriptors import DescriptorSettings

    return DescriptorSettings(species=tuple(sorted(set(int(z) for z in numbers))),
                              cutoff_radial=CUTOFF, cutoff_angular=CUTOFF, sigma=SIGMA,
                              n_radial=N_MAX, n_angular=N_MAX, l_max=L_MAX, radial_weight=0.1)


class Timing(float):
    """Best time in seconds (a float), with the median attached."""

    median: float


def cpu_model() -> str:
    """The processor's model name (Linux: /proc/cpuinfo; else ``platform.processor()``):
    printed with every table, since ratios measured on one processor do not carry over to
    another (vector width, caches)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(func, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    out = Timing(min(times))
    out.median = statistics.median(times)
    return out


def cold_compile_seconds() -> float:
    """Compile everything in a fresh process with an empty Numba cache."""
    code = (
        "import time, numpy as np\n"
        "t = time.perf_counter()\n"
        "from numbec.descriptors import DescriptorSettings, compute_descriptors, "
        "compute_vector_descriptors\n"
        "s = DescriptorSettings(species=(1, 8), n_radial=2, n_angular=2, l_max=2)\n"
        "p = np.array([[0., 0, 0], [0.9, 0.2, 0], [0.1, 1.1, 0.3]]); z = np.array([8, 1, 1])\n"
        "d = compute_descriptors(p, z, np.eye(3) * 6, True, s, gradients=True)\n"
        "d.monopole_contraction(np.ones(d.values.shape))\n"
        "v = compute_vector_descriptors(p, z, np.eye(3) * 6, True, s, gradients=True)\n"
        "v.vector_contraction(np.ones((3, v.values.shape[2])))\n"
        "print(time.perf_counter() - t)\n"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_numbec(positions, numbers, cell, repeat):
    from numbec.descriptors import compute_descriptors, compute_vector_descriptors

    s = settings_for(numbers)
    n = len(numbers)
    rng = np.random.default_rng(1)
    grad_x = rng.normal(size=(n, s.n_features))
    weights_v = rng.normal(size=(n, s.n_vector_features))

    def values():
        return compute_descriptors(positions, numbers, cell, True, s)

    def jacobian():
        return compute_descriptors(positions, numbers, cell, True, s, gradients=True)

    def adjoint():
        return values().monopole_contraction(grad_x)

    def vector_values():
        return compute_vector_descriptors(positions, numbers, cell, True, s)

    def vector_adjoint():
        return vector_values().vector_contraction(weights_v)

    desc = values()
    rows = {
        "numbec scalar": (timed(values, repeat), timed(jacobian, max(1, repeat // 2)),
                          timed(adjoint, repeat)),
        "numbec vector": (timed(vector_values, repeat), None, timed(vector_adjoint, repeat)),
    }
    info = {"pairs/atom": desc.pairs.n_pairs / n, "D": s.n_features,
            "Dv": s.n_vector_features}
    return {k: tuple(None if v is None else _per_atom(v, n) for v in t)
            for k, t in rows.items()}, info


def _per_atom(t: Timing, n: int) -> Timing:
    out = Timing(t / n * 1e6)
    out.median = t.median / n * 1e6
    return out


def bench_featomic(atoms, repeat):
    import featomic

    calc = featomic.SoapPowerSpectrum(
        cutoff={"radius": CUTOFF, "smoothing": {"type": "ShiftedCosine", "width": 0.5}},
        density={"type": "Gaussian", "width": SIGMA},
        basis={"type": "TensorProduct", "max_angular": L_MAX,
               "radial": {"type": "Gto", "max_radial": N_MAX - 1}},
    )
    calc.compute(atoms)
    n = len(atoms)
    values = timed(lambda: calc.compute(atoms), repeat)
    grads = timed(lambda: calc.compute(atoms, gradients=["positions"]), max(1, repeat // 2))
    return {"featomic SoapPowerSpectrum": (_per_atom(values, n), _per_atom(grads, n), None)}


def bench_dscribe(atoms, repeat, n_centres=4):
    from dscribe.descriptors import SOAP

    soap = SOAP(species=sorted(set(atoms.get_chemical_symbols())), r_cut=CUTOFF, n_max=N_MAX,
                l_max=L_MAX, sigma=SIGMA, rbf="gto", periodic=True, sparse=False)
    soap.create(atoms)
    n = len(atoms)
    values = timed(lambda: soap.create(atoms), repeat)
    centres = list(range(n_centres))
    derivs = timed(lambda: soap.derivatives(atoms, centers=centres, method="auto"), 1)
    return {"DScribe SOAP (derivatives numerical, per centre)":
            (_per_atom(values, n), _per_atom(derivs, n_centres), None)}


def optional(name: str) -> bool:
    """Whether the optional comparison package ``name`` imports; prints a note if not."""
    try:
        __import__(name)
    except ImportError as err:
        print(f"{name} not available ({err}): its rows print n/a")
        return False
    return True


def cell_text(value) -> str:
    """One table cell: best (median) µs, "-" when not applicable, "n/a" when not measured."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.0f} ({value.median:.0f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-compile run")
    parser.add_argument("--no-dscribe", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one repeat, no cold-compile run")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.no_cold = 1, True

    # numbec sets OMP_WAIT_POLICY=PASSIVE on import; import it before numba starts its threads
    import numba
    from ase import Atoms

    import numbec.descriptors  # noqa: F401

    print(f"load average {os.getloadavg()}, cpus {os.cpu_count()}, "
          f"numba threads {numba.get_num_threads()} ({numba.threading_layer()} layer, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})")
    have_featomic = optional("featomic")
    have_dscribe = not args.no_dscribe and optional("dscribe")
    if not args.no_cold:
        print(f"numba cold compile (empty cache, incl. imports): {cold_compile_seconds():.1f} s")
    start = time.perf_counter()
    from numbec.descriptors import (
        DescriptorSettings,
        compute_descriptors,
        compute_vector_descriptors,
    )
    s = DescriptorSettings(species=(1, 8), n_radial=2, n_angular=2, l_max=2)
    p = np.array([[0.0, 0, 0], [0.9, 0.2, 0], [0.1, 1.1, 0.3]])
    d = compute_descriptors(p, [8, 1, 1], np.eye(3) * 6, True, s, gradients=True)
    d.monopole_contraction(np.ones(d.values.shape))
    v = compute_vector_descriptors(p, [8, 1, 1], np.eye(3) * 6, True, s, gradients=True)
    v.vector_contraction(np.ones((3, v.values.shape[2])))
    print(f"first call with warm on-disk cache (load + tables): "
          f"{time.perf_counter() - start:.2f} s")

    systems = {"water box, 192 atoms": water_box()}
    if (SHARED / "sio2_quartz_qe" / "SiO2.xyz").exists():
        systems["alpha-quartz, 72 atoms"] = quartz()
    for name, (positions, numbers, cell) in systems.items():
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
        t0 = time.perf_counter()
        settings_for(numbers)  # radial tables are built once per settings
        from numbec.descriptors.radial_basis import radial_table

        radial_table(CUTOFF, SIGMA, N_MAX, L_MAX)
        radial_table(CUTOFF, SIGMA, N_MAX, 1)
        table_time = time.perf_counter() - t0
        rows, info = bench_numbec(positions, numbers, cell, args.repeat)
        if have_featomic:
            rows.update(bench_featomic(atoms, args.repeat))
        else:
            rows["featomic SoapPowerSpectrum"] = ("n/a", "n/a", None)
        if have_dscribe:
            rows.update(bench_dscribe(atoms, max(1, args.repeat // 2)))
        elif not args.no_dscribe:
            rows["DScribe SOAP (derivatives numerical, per centre)"] = ("n/a", "n/a", None)
        print(f"\n{name}: {info['pairs/atom']:.1f} pairs/atom within {CUTOFF} Å, "
              f"D = {info['D']}, Dv = {info['Dv']}, radial tables {table_time:.2f} s (once)")
        print("\n| µs per atom, best (median) | values | + Jacobian | + adjoint |")
        print("|---|---|---|---|")
        for label, cols in rows.items():
            print(f"| {label} | " + " | ".join(cell_text(c) for c in cols) + " |")
        ref_values, ref_grads = rows["featomic SoapPowerSpectrum"][:2]
        ours = rows["numbec scalar"]
        ratio = (lambda ref, num: ref if isinstance(ref, str) else f"{ref / num:.1f}")
        print(f"\nfeatomic values / numbec values = {ratio(ref_values, ours[0])}; "
              f"featomic values+gradients / numbec values+adjoint = "
              f"{ratio(ref_grads, ours[2])}")


if __name__ == "__main__":
    main()

"""Peak memory and time of ``numbec convert`` versus trajectory length.

Writes synthetic 192-atom extxyz trajectories with velocities (2,000 and 20,000
frames by default) to a temporary directory, converts each in a fresh subprocess
and prints the child's peak resident set size (``ru_maxrss`` from ``os.wait4``)
and the conversion's wall time (imports excluded). The
claim checked: peak memory does not grow with the length of the trajectory.

    python benchmarks/convert_memory.py [--frames 2000 20000] [--atoms 192] [--xz]
    python benchmarks/convert_memory.py --quick [--xz]   # smoke run: 100 and 1000 frames, 48 atoms

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import lzma
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, time
import numbec
t0 = time.perf_counter()
n = numbec.convert_trajectory(sys.argv[1], sys.argv[2], timestep=1.0, progress=False)
print(n, time.perf_counter() - t0)
"""


def write_trajectory(path: Path, n_frames: int, n_atoms: int, seed: int = 0) -> None:
    """Random-walk 192-atom trajectory in a 12 Å cubic cell, velocities in Å/fs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    species = np.array(["Zr", "O", "O"] * (n_atoms // 3) + ["O"] * (n_atoms % 3))
    pos = rng.uniform(0, 12.0, (n_atoms, 3))
    header = (
        f'{n_atoms}\nLattice="12.0 0.0 0.0 0.0 12.0 0.0 0.0 0.0 12.0" '
        'Properties=species:S:1:pos:R:3:vel:R:3 pbc="T T T"\n'
    )
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "wt") as fh:
        for _ in range(n_frames):
            vel = rng.normal(0.0, 0.005, (n_atoms, 3))
            pos = (pos + vel) % 12.0
            table = np.column_stack([pos, vel])
            body = "\n".join(
                f"{s} " + " ".join(f"{x:.6f}" for x in row)
                for s, row in zip(species, table, strict=True)
            )
            fh.write(header + body + "\n")


def convert_in_child(src: Path, store: Path) -> tuple[int, float, float]:
    """Run the conversion in a subprocess; return (frames, seconds, peak RSS in MiB).

    ``os.wait4`` returns the resource usage of exactly that child, so each length
    gets its own peak (``ru_maxrss``, KiB on Linux).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(src), str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"conversion of {src} failed:\n{err}")
    frames, seconds = out.split()
    return int(frames), float(seconds), usage.ru_maxrss / 1024.0


def write_in_child(path: Path, n_frames: int, n_atoms: int) -> None:
    """Write the source in a subprocess, so this parent process stays small.

    ``ru_maxrss`` of a child counts the pages it shares with its parent right after
    ``fork``; a parent grown by writing a large file would inflate every figure.
    """
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from convert_memory import "
        "write_trajectory; from pathlib import Path; "
        "write_trajectory(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))"
    )
    here = str(Path(__file__).resolve().parent)
    subprocess.run(
        [sys.executable, "-c", code, here, str(path), str(n_frames), str(n_atoms)], check=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=None,
                        help="trajectory lengths (default 2000 20000; --quick: 100 1000)")
    parser.add_argument("--atoms", type=int, default=None,
                        help="atoms per frame (default 192; --quick: 48)")
    parser.add_argument("--xz", action="store_true", help="also convert an .xz copy")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: short trajectories of few atoms (seconds)")
    args = parser.parse_args()
    if args.frames is None:
        args.frames = [100, 1000] if args.quick else [2000, 20000]
    if args.atoms is None:
        args.atoms = 48 if args.quick else 192
    print("| frames | atoms | source | MB file | seconds | frames/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n_frames in sorted(args.frames):
            suffixes = [".xyz", ".xyz.xz"] if args.xz else [".xyz"]
            for suffix in suffixes:
                src = Path(tmp) / f"traj_{n_frames}{suffix}"
                write_in_child(src, n_frames, args.atoms)
                store = Path(tmp) / f"store_{n_frames}{suffix}.zarr"
                frames, seconds, peak = convert_in_child(src, store)
                size = src.stat().st_size / 1e6
                print(
                    f"| {frames} | {args.atoms} | {suffix} | {size:.1f} | {seconds:.1f} "
                    f"| {frames / seconds:.0f} | {peak:.1f} |",
                    flush=True,
                )
                src.unlink()


if __name__ == "__main__":
    main()

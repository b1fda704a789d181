"""Shared options of the subcommands that read reference BEC data (``train``, ``evaluate``)."""

from __future__ import annotations

#: ``numbec.io.bec.FORMATS``, kept here so that ``--help`` does not import NumPy, SciPy and ASE
#: (``tests/test_cli_main.py`` checks that they agree).
FORMATS = ("outcar", "vasprun", "extxyz", "born", "qe-ph")


def add_data_arguments(parser, what: str = "reference data") -> None:
    """Add ``DATA...``, ``--format``, ``--layout``, ``--index``, ``--key``, ``--charge`` to
    ``parser``."""
    parser.add_argument(
        "data",
        nargs="+",
        metavar="DATA",
        help=f"{what}: files or glob patterns read by numbec.read_bec (OUTCAR*, extxyz, "
        "BORN, vasprun.xml, ph.x output; .gz/.xz/.bz2 allowed), or example:NAME for "
        "bundled data (example:sio2_quartz_subset)",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="file format (default: from the name)"
    )
    parser.add_argument(
        "--layout",
        choices=("pol-disp", "disp-pol"),
        default=None,
        help="layout of the BECs in the files: pol-disp (row = polarisation/field; VASP, "
        "phonopy, QE, allegro-pol) or disp-pol (row = displacement); default: an extxyz "
        "comment line's layout=, else pol-disp; contradicting the file is an error",
    )
    parser.add_argument(
        "--index",
        default=":",
        metavar="SLICE",
        help="frames of each file, e.g. ':' (default), '0:150', '-1'",
    )
    parser.add_argument(
        "--key", default=None, help="extxyz: name of the per-atom 9-column BEC array"
    )
    parser.add_argument(
        "--charge", type=float, default=None, metavar="Q",
        help="total charge in e of every frame without its own (an extxyz comment line's "
        "charge=); default: those frames are neutral",
    )


def read_frames(args) -> list:
    """Read the frames ``args`` names; errors become ValueErrors naming the input."""
    from numbec.io._files import resolve_example
    from numbec.io.bec import read_bec

    paths = [resolve_example(p) for p in args.data]
    try:
        frames = read_bec(paths, format=args.format, layout=args.layout,
                          index=args.index, key=args.key)
    except IndexError as exc:  # a frame slice outside a file
        raise ValueError(f"--index {args.index}: {exc}") from exc
    if not frames:
        raise ValueError(
            f"no frames with BECs in {' '.join(map(str, args.data))} (--index {args.index})"
        )
    charge = getattr(args, "charge", None)
    if charge is not None:
        import math

        if not math.isfinite(charge):
            raise ValueError(f"--charge {charge}: the total charge must be finite (e)")
        for atoms in frames:
            atoms.info.setdefault("charge", charge)
    return frames


def describe_frames(frames) -> str:
    """``"150 frames, 10800 atoms (Si 3600, O 7200)"``."""
    from collections import Counter

    from ase.data import chemical_symbols

    counts = Counter()
    for atoms in frames:
        counts.update(atoms.numbers.tolist())
    species = ", ".join(f"{chemical_symbols[z]} {n}" for z, n in sorted(counts.items()))
    return f"{len(frames)} frames, {sum(counts.values())} atoms ({species})"


def add_progress_argument(parser) -> None:
    """``--no-progress``: progress bars are on by default when stderr is a terminal."""
    parser.add_argument("--no-progress", action="store_true", default=None,
                        help="no progress bars (default: shown when stderr is a terminal)")


def progress_choice(args) -> bool | None:
    """False with ``--no-progress``, else None (the library decides: on for a terminal)."""
    return False if getattr(args, "no_progress", None) else None

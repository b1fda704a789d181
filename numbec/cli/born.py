"""``numbec born MODEL STRUCTURE --epsilon-inf E -o BORN``: learned BECs for phonopy.

Predicts the BECs of one periodic structure (e.g. a relaxed unit cell) with a model and
writes them where other tools read them: a phonopy ``BORN`` (default; symmetrised and
projected onto the acoustic sum rule, independent atoms only), i-PI's ``bec.txt``, or an
extxyz flavour (numbec, allegro-pol, MACE-Field). See ``docs/dielectric.md``.
"""

from __future__ import annotations

FORMATS = ("phonopy", "ipi", "extxyz", "allegro-pol", "mace-field")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "born",
        help="predict the BECs of one structure and write them for phonopy (BORN), i-PI, ...",
        description="Predict the Born effective charges of one structure (any file ASE reads: "
        "POSCAR, cif, extxyz, ...) with a numbec model and write them: a phonopy BORN file "
        "(with --epsilon-inf, symmetrised with the crystal's space group and projected onto the "
        "acoustic sum rule; phonopy's non-analytical correction, the LO-TO splitting, then "
        "runs with learned charges), i-PI's bec.txt, or extxyz for numbec / allegro-pol / "
        "MACE-Field.",
    )
    parser.add_argument("model", metavar="MODEL", help="numbec model file (.npz)")
    parser.add_argument("structure", metavar="STRUCTURE",
                        help="the structure (phonopy: the unit cell phonopy is run with)")
    parser.add_argument("-o", "--output", default="BORN", help="output file (default BORN)")
    parser.add_argument("--format", choices=FORMATS, default="phonopy",
                        help="phonopy BORN (default), i-PI bec.txt, or an extxyz flavour")
    parser.add_argument("--epsilon-inf", type=float, nargs="+", metavar="E",
                        help="high-frequency dielectric constant: 1 number (isotropic), "
                        "3 (diagonal) or 9 (row-major tensor); required for phonopy")
    parser.add_argument("--symprec", type=float, default=1e-5,
                        help="symmetry tolerance in Angstrom (default 1e-5)")
    parser.add_argument("--no-asr", action="store_true",
                        help="do not project the BECs onto the acoustic sum rule")
    parser.add_argument("--index", default="-1",
                        help="frame of a multi-frame STRUCTURE file (default: the last)")
    parser.add_argument("--debug", action="store_true", help="full traceback on errors")
    parser.set_defaults(func=run)


def _epsilon(values):
    import numpy as np

    if values is None:
        return None
    if len(values) == 1:
        return values[0] * np.eye(3)
    if len(values) == 3:
        return np.diag(values)
    if len(values) == 9:
        return np.asarray(values, dtype=float).reshape(3, 3)
    raise ValueError(f"--epsilon-inf takes 1, 3 or 9 numbers, got {len(values)}")


def run(args) -> int:
    import ase.io
    import numpy as np

    from numbec.io import bec_writers
    from numbec.models import load_model

    eps = _epsilon(args.epsilon_inf)
    if args.format == "phonopy" and eps is None:
        raise ValueError("a phonopy BORN needs --epsilon-inf (phonopy's NAC divides by it)")
    model = load_model(args.model)
    try:
        atoms = ase.io.read(args.structure, index=args.index)
    except Exception as exc:  # ASE raises many kinds for unreadable files
        raise ValueError(f"{args.structure}: cannot read a structure ({exc})") from exc
    if len(atoms) == 0:
        raise ValueError(f"{args.structure}: the structure (--index {args.index}) has no atoms")
    try:
        bec = model.predict(atoms)["bec"]
    except ValueError as exc:  # an unknown species, a NaN position: say in which file
        raise ValueError(f"{args.structure}: {exc}") from exc
    atoms.arrays["bec"] = np.asarray(bec, dtype=np.float64)
    n = len(atoms)
    if args.format == "phonopy":
        info = bec_writers.write_phonopy_born(args.output, atoms, eps_inf=eps,
                                              symprec=args.symprec, asr=not args.no_asr)
        asr = np.abs(info["asr_violation"]).max()
        print(f"{args.output}: BORN for {n} atoms, independent atoms "
              f"{' '.join(str(i + 1) for i in info['independent_atoms'])}; "
              f"|sum Z| before projection {asr:.2e} e, symmetrisation changed the BECs by "
              f"at most {info['symmetrisation_change']:.2e} e")
    elif args.format == "ipi":
        bec_writers.write_ipi_bec(args.output, atoms.arrays["bec"])
        print(f"{args.output}: i-PI bec.txt ({3 * n} x 3, row = displacement, e)")
    else:
        flavour = "numbec" if args.format == "extxyz" else args.format
        bec_writers.write_extxyz_flavour(args.output, [atoms], flavour)
        key, layout = bec_writers.EXTXYZ_FLAVOURS[flavour]
        print(f"{args.output}: extxyz, per-atom {key}:R:9 ({layout}, e)")
    return 0

"""``numbec select MODEL TRAJ.zarr -n N -o PICKED/``: the frames to compute reference BECs for.

Ranks the frames of a trajectory store by what labelling them would teach the model and
writes the N chosen ones for DFT (numbec.selection.select, numbec.io.dft_inputs):

* ``--strategy uncertainty`` (default): greedy, largest posterior BEC variance first, the
  posterior updated after each pick as if the frame were already in the training set, so
  every score drops by what the frame shares with the picks (neighbours in time can still
  follow each other: ``--min-separation`` keeps them apart); ``hybrid``: greedy like
  ``uncertainty``, the posterior variance plus the prior variance times the frame's
  representation error (the Nyström residual of its environments against the sparse points
  and the earlier picks); ``reduction``: greedy, largest expected reduction of the whole
  trajectory's mean variance; ``diverse``: farthest-point sampling in
  descriptor space among the most uncertain frames; ``random``, ``stride``: baselines.
* ``--min-separation T``: no two picked frames closer than T fs (frames if the store has no
  time), nor closer than T to a frame listed in ``--exclude`` (frames already labelled:
  indices, or the ``selection.json`` of earlier rounds, whose frames must be this
  trajectory's: checked against its ``selected.extxyz``). Asking for more frames than these
  constraints allow, a missing template or an earlier selection in PICKED/ fails before
  any frame is scored.
* Output in PICKED/: ``selected.extxyz`` (every frame with its index and time),
  ``selection.json`` and with ``--format vasp`` one folder per frame with a POSCAR and the
  files given by ``--template`` (INCAR, KPOINTS, POTCAR, or a directory of them), with
  ``--format espresso`` one folder per frame with a pw.x input ``pw.in`` built from the
  ``--template`` pw.x input (its namelists, ATOMIC_SPECIES and K_POINTS).

After the calculations, train on the old data plus the new results, e.g.
``numbec train old.extxyz PICKED/frame_*/OUTCAR --model combined -o model2.npz``.
The uncertainty strategies score every frame (``--score lowrank``: K extra channels of one
prediction per frame; ``exact``: the design rows, about one training step per frame); for
long trajectories convert a strided subset (``numbec convert --index ::10``).
"""

from __future__ import annotations

import sys

#: ``numbec.selection.STRATEGIES``, ``SCORES``, ``UNCERTAINTY_RANK`` and
#: ``numbec.io.dft_inputs.FORMATS``, kept here so that
#: ``numbec select --help`` does not import NumPy (``tests/test_cli_main.py`` checks that
#: they agree).
STRATEGIES = ("uncertainty", "hybrid", "reduction", "diverse", "random", "stride")
FORMATS = ("extxyz", "vasp", "espresso")
SCORES = ("lowrank", "exact")
UNCERTAINTY_RANK = 32


def register(subparsers):
    parser = subparsers.add_parser(
        "select",
        help="choose the trajectory frames to compute reference BECs for (active learning)",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("model", help="saved model (.npz); '-' for --strategy random or stride")
    parser.add_argument("trajectory", help="trajectory store (.zarr, from numbec convert)")
    parser.add_argument("-n", "--n-frames", type=int, required=True, dest="n",
                        help="number of frames to pick")
    parser.add_argument("-o", "--out", required=True, help="output directory")
    parser.add_argument("--strategy", choices=STRATEGIES, default="uncertainty",
                        help="how to rank the frames (default: uncertainty)")
    parser.add_argument("--min-separation", type=float, default=0.0, metavar="FS",
                        help="smallest time between two picked frames, fs (default 0)")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="I,J,...|selection.json",
                        help="frames already labelled (never picked): indices, or the "
                             "selection.json of earlier rounds")
    parser.add_argument("--candidates", type=int, default=None,
                        help="frames kept after the scoring pass (default: 20 N, at least 200, "
                             "for uncertainty; 4 N, at least 20, for diverse)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --strategy random")
    parser.add_argument("--score", choices=SCORES, default="lowrank",
                        help="frame score of the scoring pass: lowrank (default; K posterior "
                             "directions as extra channels of one prediction) or exact (the "
                             "frame's design rows, about one training step per frame)")
    parser.add_argument("--uncertainty-rank", type=int, default=UNCERTAINTY_RANK, metavar="K",
                        help="posterior directions of --score lowrank (default %(default)s)")
    parser.add_argument("--format", choices=FORMATS, default="extxyz", dest="fmt",
                        help="extxyz only (default), or also one folder per frame for vasp "
                             "or espresso (pw.x)")
    parser.add_argument("--template", nargs="+", default=None, metavar="FILE",
                        help="vasp: files or a directory copied into every folder; espresso: "
                             "a pw.x input with the calculation's settings")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier selection in the output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=run)
    return parser


def _excluded(items, frames) -> list[int]:
    """Frame indices from ``3,17 21`` and/or earlier ``selection.json`` files, checked
    against ``frames`` (numbec.selection._Frames): a selection made on another trajectory is
    refused (see :func:`_check_same_frames`)."""
    import json
    from pathlib import Path

    out = []
    for item in items:
        if item.endswith(".json"):
            try:
                meta = json.loads(Path(item).read_text())
                picked = [int(k) for k in meta["selection"]["frames"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"--exclude {item}: not a selection.json of numbec select "
                                 f"({exc})") from None
            _check_same_frames(Path(item), meta, picked, frames)
            out.extend(picked)
            continue
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise ValueError(f"--exclude: {part!r} is not a frame index") from None
    out = sorted(set(out))
    bad = [k for k in out if not 0 <= k < frames.n_frames]
    if bad:
        raise ValueError(f"--exclude: frame {bad[0]} is outside the {frames.n_frames} frames of "
                         f"{frames.name}")
    return out


#: Largest deviation (Å, minimum image) between a frame written to ``selected.extxyz`` and
#: the trajectory's frame of the same index for the two to count as the same frame: far
#: above the 1e-8 Å of the extxyz text, far below what an MD step moves the fastest atom.
SAME_FRAME_ATOL = 1e-4


def _check_same_frames(path, meta, picked, frames) -> None:
    """Refuse an earlier selection whose frames are not ``frames``' frames of the same index.

    The frame indices of a selection.json mean something only in the trajectory it was made
    on. Its ``selected.extxyz`` holds every picked frame: each must match this trajectory's
    frame of that index (numbers, cell and positions within SAME_FRAME_ATOL, minimum image),
    so the same MD converted again passes and a strided or different store does not. Without
    the extxyz, the recorded trajectory path and frame count must match.
    """
    from pathlib import Path

    import numpy as np
    from ase.io import read

    hint = (f"if these are the same frames, give their indices instead: --exclude "
            f"{','.join(str(k) for k in picked) or 'I,J,...'}")
    xyz = path.parent / str(meta.get("extxyz") or "selected.extxyz")
    recorded = str(meta.get("trajectory") or meta["selection"].get("source") or "?")
    if not xyz.is_file():
        same_path = Path(recorded).resolve() == Path(frames.name).resolve()
        same_count = meta["selection"].get("n_frames") == frames.n_frames
        if not (same_path and same_count):
            raise ValueError(
                f"--exclude {path}: made on {recorded} ({meta['selection'].get('n_frames')} "
                f"frames), not on {frames.name} ({frames.n_frames} frames), and {xyz.name} is "
                f"missing, so its frames cannot be compared; {hint}")
        return
    try:
        written = read(xyz, index=":", format="extxyz")
    except Exception as exc:  # noqa: BLE001 - any parse failure: the file is not usable
        raise ValueError(f"--exclude {path}: cannot read {xyz} ({exc})") from None
    for atoms in written:
        k = int(atoms.info.get("frame", -1))
        problem = None
        if not 0 <= k < frames.n_frames:
            problem = f"its frame {k} is outside the {frames.n_frames} frames"
        else:
            pos, numbers, cell, pbc = frames.frame(k)
            cell = np.asarray(cell, dtype=np.float64)
            if (len(numbers) != len(atoms)
                    or not np.array_equal(np.asarray(numbers), atoms.numbers)):
                problem = f"frame {k} has other atoms"
            elif not np.allclose(np.asarray(atoms.cell), cell, atol=SAME_FRAME_ATOL):
                problem = f"frame {k} has another cell"
            else:
                d = atoms.positions - np.asarray(pos, dtype=np.float64)
                periodic = np.asarray(pbc, dtype=bool)
                if periodic.any() and abs(np.linalg.det(cell)) > 0:
                    frac = d @ np.linalg.inv(cell)
                    frac[:, periodic] -= np.round(frac[:, periodic])
                    d = frac @ cell
                dev = float(np.abs(d).max()) if d.size else 0.0
                if dev > SAME_FRAME_ATOL:
                    problem = f"frame {k} differs (atoms up to {dev:.3g} Å apart)"
        if problem:
            raise ValueError(f"--exclude {path}: made on {recorded}, whose frames are not those "
                             f"of {frames.name}: {problem}; {hint}")


def _check_output(args, template, frames) -> None:
    """The errors of writing the selection that do not depend on which frames are picked,
    raised before the (long) scoring: an existing selection, leftover frame folders, a
    missing or unusable template."""
    from pathlib import Path

    from numbec.io.dft_inputs import _pw_text, _template_files, read_espresso_template

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    if not args.overwrite and out.is_dir():
        if (out / "selection.json").exists():
            raise FileExistsError(f"{out / 'selection.json'}: a selection is already there; "
                                  "choose another output directory, or --overwrite")
        left = sorted(p.name for p in out.glob("frame_*"))
        if left:
            raise FileExistsError(f"{out}: holds {left[0]} (from an unfinished selection?); "
                                  "choose another output directory, or --overwrite")
    if args.fmt == "extxyz" and template is not None:
        raise ValueError("--template is for --format vasp or espresso")
    if args.fmt == "vasp":
        _template_files(template)
    if args.fmt == "espresso":
        if template is None:
            raise ValueError("--format espresso needs --template: a pw.x input with the "
                             "settings of the calculation (namelists, ATOMIC_SPECIES, K_POINTS)")
        # one frame written to text: a species without a pseudopotential fails here
        _pw_text(frames.to_atoms(0), read_espresso_template(template))


def run(args) -> int:
    import warnings

    import numpy as np

    from numbec.io.dft_inputs import write_selected
    from numbec.models import load_model
    from numbec.selection import _Frames, _Separation, select

    if args.model == "-":
        if args.strategy not in ("random", "stride"):
            raise ValueError(f"--strategy {args.strategy} needs a model file (MODEL '-' is "
                             "for random and stride)")
        model = None
    else:
        model = load_model(args.model)
    if args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")
    frames = _Frames(args.trajectory)
    exclude = _excluded(args.exclude, frames)
    template = args.template
    if template is not None and args.fmt == "espresso":
        if len(template) != 1:
            raise ValueError("--format espresso takes one --template file (a pw.x input)")
        template = template[0]
    _check_output(args, template, frames)
    # how many frames the constraints allow at all: failing now costs nothing, after the
    # scoring pass it costs minutes
    sep = _Separation(frames.times, args.min_separation)
    excluded = np.zeros(frames.n_frames, dtype=bool)
    excluded[exclude] = True
    for k in exclude:
        sep.take(k)
    most = sep.max_picks(~excluded & sep.ok_many(np.arange(frames.n_frames)))
    if most < args.n:
        raise ValueError(
            f"at most {most} of the {frames.n_frames} frames of {frames.name} can be picked "
            f"with --min-separation {args.min_separation:g} ({sep.unit}) and {len(exclude)} "
            f"frames excluded; ask for -n {most} or lower --min-separation"
            if most else
            f"no frame of {frames.name} can be picked: all {frames.n_frames} are excluded or "
            f"closer than --min-separation {args.min_separation:g} ({sep.unit}) to an "
            f"excluded frame")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = select(model, args.trajectory, args.n, args.strategy,
                        min_separation=args.min_separation,
                        exclude=exclude, candidates=args.candidates, seed=args.seed,
                        score=args.score, uncertainty_rank=args.uncertainty_rank,
                        progress=not args.no_progress)
    if len(result.indices) == 0:  # cannot happen after the check above; never write it
        raise ValueError(f"no frame of {frames.name} was picked")
    picked = [frames.to_atoms(int(k)) for k in result.indices]
    summary = write_selected(args.out, picked, args.fmt, template,
                             metadata={"model": str(args.model),
                                       "trajectory": str(args.trajectory),
                                       "min_separation": args.min_separation,
                                       "exclude": exclude,
                                       "selection": result.to_dict()},
                             overwrite=args.overwrite)
    print(f"{summary.parent}: {len(picked)} of {result.n_frames} frames ({args.strategy}, "
          f"{result.seconds:.1f} s): {', '.join(str(int(k)) for k in result.indices)}",
          file=sys.stdout)
    for w in caught:
        print(f"numbec select: warning: {w.message}", file=sys.stderr)
    return 0

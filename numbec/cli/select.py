"""``numbec select MODEL TRAJ.zarr -n N -o PICKED/``: the frames to compute reference BECs for.

Ranks the frames of a trajectory store by what labelling them would teach the model and
writes the N chosen ones for DFT (numbec.selection.select, numbec.io.dft_inputs):

* ``--strategy uncertainty`` (default): greedy, largest posterior BEC variance first, the
  posterior updated after each pick as if the frame were already in the training set, so
  the picks are not neighbours of each other; ``hybrid``: greedy like ``uncertainty``, the
  posterior variance plus the prior variance times the frame's representation error (the
  Nyström residual of its environments against the sparse points and the earlier picks);
  ``reduction``: greedy, largest expected
  reduction of the whole trajectory's mean variance; ``diverse``: farthest-point sampling in
  descriptor space among the most uncertain frames; ``random``, ``stride``: baselines.
* ``--min-separation T``: no two picked frames closer than T fs (frames if the store has no
  time), nor closer than T to a frame listed in ``--exclude`` (frames already labelled:
  indices, or the ``selection.json`` of earlier rounds).
* Output in PICKED/: ``selected.extxyz`` (every frame with its index and time),
  ``selection.json`` and with ``--format vasp`` one folder per frame with a POSCAR and the
  files given by ``--template`` (INCAR, KPOINTS, POTCAR, or a directory of them), with
  ``--format espresso`` one folder per frame with a pw.x input ``pw.in`` built from the
  ``--template`` pw.x input (its namelists, ATOMIC_SPECIES and K_POINTS).

After the calculations, train on the old data plus the new results, e.g.
``numbec train old.extxyz PICKED/frame_*/OUTCAR --model combined -o model2.npz``.
The uncertainty strategies compute the design rows of every frame (about one training step
per frame); for long trajectories convert a strided subset (``numbec convert --index ::10``).
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


def _excluded(items) -> list[int]:
    """Frame indices from ``3,17 21`` and/or earlier ``selection.json`` files."""
    import json
    from pathlib import Path

    out = []
    for item in items:
        if item.endswith(".json"):
            try:
                frames = json.loads(Path(item).read_text())["selection"]["frames"]
                out.extend(int(k) for k in frames)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"--exclude {item}: not a selection.json of numbec select "
                                 f"({exc})") from None
            continue
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise ValueError(f"--exclude: {part!r} is not a frame index") from None
    return sorted(set(out))


def run(args) -> int:
    from numbec.io.dft_inputs import write_selected
    from numbec.models import load_model
    from numbec.selection import _Frames, select

    if args.model == "-":
        if args.strategy not in ("random", "stride"):
            raise ValueError(f"--strategy {args.strategy} needs a model file (MODEL '-' is "
                             "for random and stride)")
        model = None
    else:
        model = load_model(args.model)
    exclude = _excluded(args.exclude)
    template = args.template
    if template is not None and args.fmt == "espresso":
        if len(template) != 1:
            raise ValueError("--format espresso takes one --template file (a pw.x input)")
        template = template[0]
    result = select(model, args.trajectory, args.n, args.strategy,
                    min_separation=args.min_separation, exclude=exclude,
                    candidates=args.candidates, seed=args.seed, score=args.score,
                    uncertainty_rank=args.uncertainty_rank,
                    progress=not args.no_progress)
    frames = _Frames(args.trajectory)
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
    if len(picked) < args.n:
        print(f"numbec select: only {len(picked)} frames satisfy --min-separation "
              f"{args.min_separation} and --exclude", file=sys.stderr)
    return 0

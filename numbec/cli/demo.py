"""``numbec demo [--out DIR] [--quick]``: the offline end-to-end demo (see :mod:`numbec.demo`).

Water clusters with GFN2-xTB give exact atomic polar tensors; monopole, dipole and
combined models are trained on a few of them, streamed over an independent xTB MD, and
the IR spectrum from the predicted BECs is compared with the one from the exact xTB
dipole. It prints the calibration of each model's uncertainty and draws the combined
model's spectrum with its model-uncertainty band. Writes ir.png, spectra.csv and
results.json into DIR; the xTB data, models and predictions are cached in DIR/cache, so a
second run is fast.
"""

from __future__ import annotations

import sys


def register(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="offline end-to-end demo: xTB water clusters -> models -> MD -> IR spectra",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", default="numbec-demo", metavar="DIR",
                        help="output directory (default: ./numbec-demo)")
    parser.add_argument("--quick", action="store_true",
                        help="reduced run (smaller clusters, shorter MD; about a minute)")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore the cached xTB data, models and predictions")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from numbec.demo import MissingDependencyError, run_demo

    try:
        run_demo(args.out, quick=args.quick, fresh=args.fresh,
                 log=lambda line: print(line, flush=True), progress=args.progress)
    except MissingDependencyError as exc:
        print(f"numbec demo: {exc}", file=sys.stderr)
        return 3
    return 0

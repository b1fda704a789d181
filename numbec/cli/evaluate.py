"""``numbec evaluate MODEL DATA... [--json]``: errors of a saved model on reference BECs.

Compares the model's BECs with the raw reference BECs of DATA (not ASR-projected) and prints
RMSE, MAE, max error and R^2 overall, per species and for diagonal/off-diagonal components,
next to a species-mean baseline: the mean BEC per species of the model's own training data
(stored in the model file), or of ``--baseline-data`` when given; a model file written before
numbec stored those means falls back to DATA itself (an optimistic baseline; the output says
so).
``--json`` prints one JSON object (keys as ``numbec.evaluate`` returns them: ``rmse``,
``mae``, ``max_error``, ``r2``, ``n_frames``, ``n_atoms``, ``per_species``,
``per_component``, ``per_cartesian``, ``baseline``, ``baseline_note``, and for models with
``bec_std`` ``calibration``: ``coverage_68``, ``coverage_95`` (and their ranges over the
frames resampled in blocks of consecutive frames, ``coverage_68_interval``,
``coverage_95_interval``, and the frames per block, ``coverage_68_block``,
``coverage_95_block``),
``nll``, ``frame_rank_correlation``, ...; for kernel models ``environments``, the share of the
frames' atoms per species beyond the training environments).
"""

from __future__ import annotations

import json
import math

from numbec.cli._bec_data import (
    add_data_arguments,
    add_progress_argument,
    progress_choice,
    read_frames,
)


def register(subparsers):
    parser = subparsers.add_parser(
        "evaluate",
        help="RMSE/MAE/R2 of a saved model on reference BECs, with a species-mean baseline",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("model", metavar="MODEL", help="saved model (.npz)")
    add_data_arguments(parser, "reference (test) data")
    parser.add_argument("--baseline-data", action="append", default=None, metavar="PATH",
                        help="data to fit the species-mean baseline on (repeatable; read with "
                             "the same --format/--layout/--key, all frames)")
    parser.add_argument("--no-baseline", action="store_true", help="no baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_progress_argument(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=run)
    return parser


def _fmt(value) -> str:
    return "     nan" if value is None or math.isnan(value) else f"{value:8.4f}"


def format_table(res: dict) -> str:
    """Human-readable table of an ``evaluate`` result (errors in e)."""
    base = res.get("baseline")
    lines = [
        f"{res['model']} on {res['n_frames']} frames, {res['n_atoms']} atoms "
        f"(reference BECs {res['reference']}; errors in e)",
        f"{'':<14}{'RMSE':>8}{'MAE':>8}{'max':>8}{'R2':>8}"
        + (f"  | {'baseline RMSE':>13}{'R2':>8}" if base else ""),
    ]
    rows = [("all", res, base)]
    rows += [(s, e, base and base["per_species"].get(s)) for s, e in res["per_species"].items()]
    rows += [(k.replace("_", "-"), e, base and base["per_component"][k])
             for k, e in res["per_component"].items()]
    for label, e, b in rows:
        line = f"{label:<14}{_fmt(e['rmse'])}{_fmt(e['mae'])}{_fmt(e['max_error'])}{_fmt(e['r2'])}"
        if b:
            line += f"  | {_fmt(b['rmse']):>13}{_fmt(b['r2'])}"
        lines.append(line)
    if base:
        lines.append(f"baseline: {res['baseline_note']}")
    cal = res.get("calibration")
    if cal:
        lines.append(
            f"calibration of bec_std: coverage {100 * cal['coverage_68']:.1f} % (nominal 68.3)"
            f"{_interval(cal, 'coverage_68')}, {100 * cal['coverage_95']:.1f} % (nominal 95)"
            f"{_interval(cal, 'coverage_95')}, NLL {cal['nll']:.3f}, frame rank "
            f"correlation {cal.get('frame_rank_correlation', float('nan')):.2f}")
        if _interval(cal, "coverage_95"):
            b68, b95 = cal.get("coverage_68_block"), cal.get("coverage_95_block")
            size = f"{b95} " if b68 == b95 else f"{b68} (68 %) and {b95} (95 %) "
            lines.append("  (in brackets: the central 95 % range over the frames resampled "
                         f"in blocks of {size}consecutive frames)")
    env = res.get("environments")
    if env:
        shares = ", ".join(f"{s} {100 * e['beyond']:.1f} %" for s, e in env.items()
                           if isinstance(e, dict))
        lines.append(f"atoms beyond the training environments (Nyström residual past the "
                     f"training 99th percentile; about 1 % for frames like the training "
                     f"ones): {shares}")
        if env["extrapolated"]:
            lines.append(f"  these frames are extrapolations for {', '.join(env['extrapolated'])}"
                         ": their errors are not those of frames like the training ones")
    return "\n".join(lines)


def _interval(cal: dict, key: str) -> str:
    """`` [low-high]`` in % of a coverage's resampling range, or "" when there is none."""
    low, high = cal.get(key + "_interval") or (None, None)
    if low is None or math.isnan(low):
        return ""
    return f" [{100 * low:.1f}-{100 * high:.1f}]"


def _finite(obj):
    """Replace NaN/inf by None so that the JSON output is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run(args) -> int:
    from numbec.io.bec import read_bec
    from numbec.models import evaluate, load_model

    model = load_model(args.model)
    frames = read_frames(args)
    baseline_frames = None
    if args.baseline_data:
        from numbec.io._files import resolve_example

        paths = [resolve_example(p) for p in args.baseline_data]
        baseline_frames = read_bec(paths, format=args.format, layout=args.layout,
                                   key=args.key)
    res = evaluate(model, frames, baseline=not args.no_baseline,
                   baseline_frames=baseline_frames, progress=progress_choice(args))
    res["model_file"] = str(args.model)
    if args.json:
        print(json.dumps(_finite(res), indent=1, allow_nan=False))
    else:
        print(format_table(res))
    return 0

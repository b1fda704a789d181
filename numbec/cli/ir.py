"""``numbec ir OUT.zarr -o spectrum.csv|.nc [--plot ir.png]``: IR spectrum of a prediction.

Reads the Prediction store written by ``numbec predict`` (its ``dipole_derivative``,
time step, volume and, when recorded, temperature), computes the absolute IR spectrum
(alpha*n in cm^-1 for periodic cells, the cross-section in cm^2 per system without a
volume) and writes it as CSV (``#`` header lines with the settings, then columns) or
netCDF. Several stores are independent runs: averaged, with error bars from their
spread. ``--plot`` draws the spectrum, its error band, optional partials and an optional
reference (a QE IR table, an eps'' curve or another spectrum), up to where the signal ends
(``--max-frequency`` to choose), labelled with the system and the model. The default window
gives a spectrum that is never negative (docs/spectra.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

#: ``numbec.spectra.WINDOWS`` and ``numbec.spectra.QUANTUM_CORRECTIONS`` (first = default),
#: kept here so that ``numbec ir --help`` does not import SciPy and ASE
#: (``tests/test_cli_main.py`` checks that they agree).
WINDOWS = ("parzen", "hann", "blackman", "gaussian", "cos2", "none")
QUANTUM_CORRECTIONS = ("harmonic", "standard", "schofield", "none")


def register(subparsers):
    parser = subparsers.add_parser(
        "ir",
        help="IR spectrum (absolute units, error bars) from a prediction store",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("prediction", nargs="+", metavar="OUT.zarr",
                        help="prediction store(s) of numbec predict (several = runs)")
    parser.add_argument("-o", "--out", required=True, metavar="FILE",
                        help="spectrum file: .csv or .nc")
    parser.add_argument("--plot", metavar="PNG", help="also draw the spectrum into this file")
    parser.add_argument("--temperature", type=float, metavar="K",
                        help="temperature (default: from the store, else the kinetic "
                             "temperature of --trajectory or of the trajectory store the "
                             "prediction was made from)")
    parser.add_argument("--trajectory", nargs="+", metavar="TRAJ.zarr",
                        help="the trajectory store(s) predicted (one per prediction): "
                             "velocities for species partials from bec, kinetic temperature "
                             "(default: the store each prediction records it was made from, "
                             "if it is still there and unchanged)")
    parser.add_argument("--volume", type=float, metavar="A3",
                        help="cell volume in Å^3 (default: from the store; none for molecules)")
    parser.add_argument("--timestep", type=float, metavar="FS",
                        help="time step in fs (default: from the store)")
    parser.add_argument("--window", default=WINDOWS[0], choices=WINDOWS,
                        help="lag window (parzen: spectrum >= 0 for any data)")
    parser.add_argument("--correlation-time", type=float, metavar="FS",
                        help="correlation length; resolution ~ 1/(c T) (default: "
                             "min(block/2, 2000 fs))")
    parser.add_argument("--blocks", type=int, default=1, metavar="N",
                        help="blocks per run for error bars (default 1)")
    parser.add_argument("--quantum-correction", default="harmonic",
                        choices=QUANTUM_CORRECTIONS, help="quantum correction factor")
    parser.add_argument("--partials", nargs="?", const="species", default=None,
                        choices=("species", "partition"),
                        help="partial spectra by species (default) or monopole/dipole "
                             "partition, cross terms included")
    parser.add_argument("--zero-padding", type=int, default=8, metavar="N",
                        help="frequency grid refinement (default 8)")
    parser.add_argument("--max-frequency", type=float, metavar="CM-1",
                        help="crop the spectrum and the figure above this wavenumber "
                             "(default: all frequencies in the file; the figure ends where "
                             "the signal does)")
    parser.add_argument("--reference", metavar="FILE",
                        help="reference to plot against (QE IR table, eps'' curve, spectrum)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=run)
    return parser


#: Options that must be finite numbers > 0 when given (flag, attribute of ``args``).
_POSITIVE_OPTIONS = (("--temperature", "temperature"), ("--volume", "volume"),
                     ("--timestep", "timestep"), ("--correlation-time", "correlation_time"),
                     ("--max-frequency", "max_frequency"))


def _check_options(args) -> None:
    """Reject impossible option values before any file is read, naming the flag."""
    import math

    for flag, name in _POSITIVE_OPTIONS:
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a number > 0, got {value:g}")
    for flag, name in (("--blocks", "blocks"), ("--zero-padding", "zero_padding")):
        if getattr(args, name) < 1:
            raise ValueError(f"{flag} must be >= 1, got {getattr(args, name)}")
    if Path(args.out).suffix not in (".csv", ".nc"):
        raise ValueError(f"{args.out}: the output (-o) must end in .csv or .nc")


def run(args) -> int:
    from numbec.spectra.ir import ir_spectrum, spectral_peaks

    _check_options(args)
    reference = None
    if args.plot and args.reference:  # a bad reference fails before the spectrum is computed
        from numbec.spectra.reference import read_reference

        reference = read_reference(args.reference)
    stores = args.prediction  # paths: ir_spectrum opens them and names them in errors
    trajectories = None
    if args.trajectory:
        if len(args.trajectory) != len(stores):
            raise ValueError(f"{len(args.trajectory)} --trajectory stores for "
                             f"{len(stores)} predictions")
        trajectories = args.trajectory if len(stores) > 1 else args.trajectory[0]
    spectrum = ir_spectrum(
        stores if len(stores) > 1 else stores[0],
        timestep=args.timestep,
        temperature=args.temperature,
        volume=args.volume,
        window=args.window,
        correlation_time=args.correlation_time,
        blocks=args.blocks,
        quantum_correction=args.quantum_correction,
        zero_padding=args.zero_padding,
        partials=args.partials or False,
        max_frequency=args.max_frequency,
        trajectory=trajectories,
    )
    out = Path(args.out)
    if out.suffix == ".csv":
        from numbec.spectra.reference import write_spectrum_csv

        write_spectrum_csv(spectrum, out)
    elif out.suffix == ".nc":
        from numbec.io._files import atomic_write

        atomic_write(out, spectrum.to_netcdf)
    else:
        raise ValueError(f"{out}: the output must end in .csv or .nc")
    a = spectrum.attrs
    peaks, _ = spectral_peaks(spectrum, min_height=0.1)
    print(f"{out}: {a['spectrum']} [{a['units']}] on {spectrum.sizes['frequency']} frequencies "
          f"(T = {a['temperature']:g} K, {a['window']} window, T_corr = "
          f"{a['correlation_time']:g} fs, FWHM {a['resolution_fwhm']:.1f} cm^-1, "
          f"{a['n_blocks']} block(s)); strongest peaks (cm^-1): "
          + (", ".join(f"{p:.1f}" for p in peaks[:5]) or "none found"), file=sys.stdout)
    if args.plot:
        try:
            _plot(spectrum, args, reference)
        except ImportError as exc:  # matplotlib missing: the spectrum is written anyway
            print(f"numbec ir: {out} written, but no figure: {exc}", file=sys.stderr)
            return 3
    return 0


def _plot(spectrum, args, reference):
    from numbec.io._files import atomic_write
    from numbec.plot import _pyplot, plot_spectrum

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    plot_spectrum(spectrum, ax=ax, reference=reference, partials=bool(args.partials),
                  max_frequency=args.max_frequency)
    fig.tight_layout()
    try:
        atomic_write(args.plot, lambda tmp: fig.savefig(tmp, dpi=150))
    finally:
        plt.close(fig)
    print(f"{args.plot}: figure written", file=sys.stdout)

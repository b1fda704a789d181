"""``numbec info PATH``: what a trajectory store, prediction store or model file holds."""

from __future__ import annotations

import json
import os
import textwrap
import zipfile


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a trajectory store, prediction store or model file",
        description="Trajectory stores ('numbec convert'): frames, atoms, species, time step, "
        "duration, chunking and completeness; exit status 1 when the time coordinate "
        "contradicts the time step (NaN, going backwards, another spacing). Prediction "
        "stores ('numbec predict'): the trajectory and model they come from, how many "
        "frames are predicted (of a run still going or interrupted, too), the variables, "
        "the uncertainty asked for and the environment check's result. Model files "
        "('numbec train'): class, species, descriptor settings, sparse points, training "
        "set, calibration, and the hash of the model's state that prediction stores record "
        "as model_sha256. netCDF files (spectra of 'numbec ir -o FILE.nc', predictions "
        "exported with to_netcdf): what kind, dimensions, variables with units, and the "
        "attributes that say where they come from.",
    )
    parser.add_argument("store", metavar="PATH", help="trajectory or prediction store "
                        "directory, model file (.npz) or netCDF file (.nc)")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    parser.add_argument("--set-timestep", type=float, metavar="FS",
                        help="first set a trajectory store's time step (fs between stored "
                             "frames) in place, e.g. for a store converted with --no-time")
    parser.set_defaults(func=run)


def run(args) -> int:
    from numbec.io.prediction import PREDICTION_FORMAT, group_attrs
    from numbec.io.trajectory import set_timestep, trajectory_summary

    if os.path.isfile(args.store) and (args.store.endswith(".npz")
                                       or zipfile.is_zipfile(args.store)):  # a model file
        if args.set_timestep is not None:
            raise ValueError(f"{args.store} is a model file: --set-timestep applies to "
                             "trajectory stores")
        return _model_info(args)
    if os.path.isfile(args.store) and is_netcdf(args.store):
        if args.set_timestep is not None:
            raise ValueError(f"{args.store} is a netCDF file: --set-timestep applies to "
                             "trajectory stores")
        return _netcdf_info(args)
    if group_attrs(args.store).get("format") == PREDICTION_FORMAT:
        if args.set_timestep is not None:
            raise ValueError(f"{args.store} is a prediction store: --set-timestep applies to "
                             "trajectory stores (set it on the trajectory, then predict again)")
        return _prediction_info(args)
    if args.set_timestep is not None:
        set_timestep(args.store, args.set_timestep)
    info = trajectory_summary(args.store)
    if args.json:
        print(json.dumps(info, indent=2))
        return _time_status(info)
    species = ", ".join(f"{sym} {count}" for sym, count in info["species"].items())
    dt = info["timestep"]
    duration = info["duration"]
    dt_text = "unknown" if dt is None else f"{dt:g} fs"
    duration_text = "unknown" if duration is None else f"{duration:g} fs"
    state = "complete" if info["complete"] else "INCOMPLETE (resume with 'numbec convert --append')"
    lines = [
        f"store        {info['store']}",
        f"source       {info['source']}",
        f"frames       {info['frames']}",
        f"atoms        {info['atoms']}  ({species})",
        f"time step    {dt_text}",
        f"duration     {duration_text}",
        f"chunking     {info['chunk_frames']} frames per chunk",
        f"velocities   {'yes' if info['velocities'] else 'no'}",
        f"pbc          {' '.join('T' if p else 'F' for p in info['pbc'])}",
        f"status       {state}",
    ]
    print("\n".join(lines))
    return _time_status(info)


#: The first bytes of a netCDF file: netCDF-3 (classic, 64-bit offset, 64-bit data) and
#: netCDF-4 (HDF5), whatever the file is called.
NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")

#: Attributes of a prediction export or a spectrum that say what it is and where it comes
#: from, in this order (those present are shown).
NETCDF_FACTS = ("format", "format_version", "numbec_version", "created", "input",
                "prediction_store", "model_class", "model_file", "model_sha256", "system",
                "model", "spectrum", "partial_kind", "temperature", "timestep", "window",
                "correlation_time", "resolution", "quantum_correction", "volume", "n_runs",
                "n_blocks", "n_posterior_samples", "total_charge", "complete", "note")


#: Names of netCDF-4 files: HDF5 files under other names (trajectories of other formats,
#: say) are left to the trajectory reader.
NETCDF4_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")


def is_netcdf(path) -> bool:
    """True when the file at ``path`` starts like a netCDF-3 file, or like HDF5 under a
    netCDF name (:data:`NETCDF_MAGIC`, :data:`NETCDF4_SUFFIXES`)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    if head.startswith(NETCDF_MAGIC[-1]):
        return os.fspath(path).lower().endswith(NETCDF4_SUFFIXES)
    return head.startswith(NETCDF_MAGIC[:-1])


def netcdf_summary(path) -> dict:
    """Facts about a netCDF file for ``numbec info``: ``file``, ``kind`` (``"prediction"``
    for an export of a numbec prediction, ``"spectrum"`` for ``numbec ir -o FILE.nc``,
    ``"trajectory"`` for an AMBER NetCDF trajectory (to convert), else ``"netcdf"``),
    ``dims`` ({name: size}), ``variables`` ({name: {``dims``, ``shape``, ``units``}}),
    ``attrs`` (those of :data:`NETCDF_FACTS` present and their ``*_units``, as JSON
    values).

    Raises ValueError naming the file when it cannot be read (netCDF-4 files need the
    netCDF4 or h5netcdf package, which numbec does not require).
    """
    import xarray as xr

    from numbec.io.prediction import PREDICTION_FORMAT

    where = os.fspath(path)
    try:
        ds = xr.open_dataset(where)
    except Exception as exc:  # noqa: BLE001 - any failure: the file is not readable here
        raise ValueError(f"{where}: cannot read this netCDF file ({type(exc).__name__}: "
                         f"{exc}); a netCDF-4 file needs the netCDF4 or h5netcdf package"
                         ) from None
    with ds:
        attrs = ds.attrs
        if attrs.get("format") == PREDICTION_FORMAT:
            kind = "prediction"
        elif "spectrum" in attrs and "frequency" in ds.coords:
            kind = "spectrum"
        elif str(attrs.get("Conventions", "")).startswith("AMBER"):
            kind = "trajectory"
        else:
            kind = "netcdf"
        variables = {
            str(name): {"dims": [str(d) for d in var.dims], "shape": [int(n) for n in var.shape],
                        "units": str(var.attrs["units"]) if "units" in var.attrs else None}
            for name, var in ds.data_vars.items()}
        facts = {}
        for key in NETCDF_FACTS + (("Conventions", "program") if kind == "trajectory" else ()):
            for name in (key, key + "_units"):
                if name in attrs:
                    facts[name] = _json_value(attrs[name])
        dims = {str(name): int(size) for name, size in ds.sizes.items()}
    return {"file": where, "kind": kind, "dims": dims, "variables": variables, "attrs": facts}


def _json_value(value):
    """A netCDF attribute as a JSON value (numpy scalars and arrays to Python)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _netcdf_info(args) -> int:
    from numbec.cli.evaluate import _finite

    info = netcdf_summary(args.store)
    if args.json:  # strict JSON: a NaN attribute (a molecule's volume) becomes null
        print(json.dumps(_finite(info), indent=2))
        return 0
    kind = {"prediction": "prediction (a netCDF export of a numbec prediction)",
            "spectrum": "IR spectrum ('numbec ir')",
            "trajectory": "AMBER NetCDF trajectory: run 'numbec convert "
                          f"{info['file']} STORE.zarr' and use STORE.zarr",
            "netcdf": "netCDF dataset (not a numbec prediction or spectrum; a trajectory "
                      "is converted with 'numbec convert FILE STORE.zarr')"}[info["kind"]]
    lines = [f"file         {info['file']}", f"kind         {kind}",
             "dimensions   " + (", ".join(f"{k} {v}" for k, v in info["dims"].items())
                                or "none"), "variables"]
    for name, var in info["variables"].items():
        units = f" [{var['units']}]" if var["units"] else ""
        lines.append(f"  {name}{units} ({', '.join(var['dims'])})")
    if info["attrs"]:
        lines.append("attributes")
    facts = info["attrs"]
    for key, value in facts.items():
        if key.endswith("_units") and key[:-6] in facts:
            continue
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        if key + "_units" in facts and text != "nan":
            text += f" {facts[key + '_units']}"
        lines.append(textwrap.fill(text, width=100, initial_indent=f"  {key:<20} ",
                                   subsequent_indent=" " * 23, break_on_hyphens=False))
    if info["kind"] == "prediction" and info["attrs"].get("complete") in (False, 0):
        lines.append("status       INCOMPLETE: exported before its run finished")
    print("\n".join(lines))
    return 0


def _time_status(info) -> int:
    """Exit status 1, with the reason on stderr, when predict and ir would refuse the
    store's time coordinate; the facts above are printed first, as they help find why."""
    if info["time_error"] is None:
        return 0
    import sys

    print(f"numbec info: error: {info['time_error']}", file=sys.stderr)
    return 1


def _prediction_info(args) -> int:
    from numbec.io.prediction import prediction_summary

    info = prediction_summary(args.store)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    model = info["model_class"] or "unknown"
    details = [f"file {info['model_file']}" if info["model_file"] else "not from a file"]
    if info["model_sha256"]:
        details.append(f"sha256 {info['model_sha256'][:12]}")
    lines = [
        f"store        {info['store']}",
        f"kind         prediction (format {info['format_version']}, numbec "
        f"{info['numbec_version']}, created {info['created']})",
        f"trajectory   {info['input']}" + ("" if info["input_complete"] else
                                               "  (still being converted when predicted)"),
        f"model        {model} ({', '.join(details)})",
    ]
    if info["initialised"]:
        species = ", ".join(f"{sym} {count}" for sym, count in info["species"].items())
        dt = info["timestep"]
        lines += [
            f"frames       {info['frames_done']} of {info['frames']} predicted "
            f"({info['chunks_done']} of {info['chunks']} chunks of {info['chunk_frames']} "
            "frames)",
            f"atoms        {info['atoms']}  ({species})",
            f"time step    {'unknown' if dt is None else f'{dt:g} fs'}",
            _wrapped("variables", ", ".join(info["variables"])),
            f"storage      {info['storage_dtype']}"
            + ("" if info["precision"] == "float64" else f", {info['precision']} precision"),
            f"uncertainty  {_uncertainty_text(info)}",
            f"charge       {info['total_charge']:g} e",
            f"velocities   {info['velocities_source'] or 'none (no dM/dt)'}",
            _wrapped("environments", _environment_text(info["environment_check"])),
        ]
    lines.append(f"status       {_status_text(info)}")
    print("\n".join(lines))
    return 0


def _uncertainty_text(info) -> str:
    parts = []
    if info["uncertainty"]:
        rank = info["uncertainty_rank"]
        parts.append("per-atom bec_std " + (f"(rank {rank})" if rank else "(exact)"))
    parts += [name for name in ("charge_std", "local_dipole_std", "dipole_derivative_std")
              if name in info["variables"]]
    if info["posterior_samples"]:
        parts.append(f"{info['posterior_samples']} posterior samples of dM/dt")
    return ", ".join(parts) or "none"


def _environment_text(check) -> str:
    if check is None:
        return "not checked (a model without the training reference, or an older numbec)"
    shares = ", ".join(f"{sym} {100 * entry['beyond']:.1f} %" for sym, entry in check.items()
                       if isinstance(entry, dict) and "beyond" in entry)
    verdict = ("EXTRAPOLATION for " + ", ".join(check.get("extrapolated", []))
               if check.get("extrapolated") else "like the training environments")
    return (f"{verdict} ({len(check.get('frames', []))} frames checked; atoms beyond the "
            f"training 99th percentile: {shares})")


def _status_text(info) -> str:
    if info["complete"]:
        return "complete"
    writer = info["writer"]
    if writer:
        return (f"being written by pid {writer['pid']} on {writer['host']} "
                f"({writer['command']}, since {writer['started']})")
    if not info["initialised"]:
        return ("INCOMPLETE: the run stopped while laying out the store; run the same "
                "'numbec predict' command again")
    missing = info["chunks"] - info["chunks_done"]
    return (f"INCOMPLETE: {missing} of {info['chunks']} chunks missing; run the same "
            "'numbec predict' command again to resume")


def _model_info(args) -> int:
    from numbec.models.summary import model_summary

    info = model_summary(args.store)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    lines = [
        f"file         {info['file']}",
        f"kind         model (numbec {info['numbec_version']}, created {info['created']})",
        f"model        {info['model_class']}",
        f"state sha256 {info['state_sha256']}",
        "             (the model_sha256 of the prediction stores made with it)",
        f"species      {', '.join(info['species'])}",
        _wrapped("outputs", ", ".join(info["outputs"])),
    ]
    if "training" in info:
        d = info["descriptors"]
        hyper = info["hyperparameters"]
        train = info["training"]
        rmse, noise = train["train_rmse"], train["noise_std"]
        lines += [
            _wrapped("descriptors", f"cutoffs {d['cutoff_radial']:g} / {d['cutoff_angular']:g} "
                     f"Å (radial / angular), sigma {d['sigma']:g} Å, {d['n_radial']} radial and "
                     f"{d['n_angular']} angular functions, l_max {d['l_max']}"),
            f"kernel       zeta {hyper['zeta']}, sparse points "
            + ", ".join(f"{s} {n}" for s, n in info["sparse_points"].items())
            + f" ({hyper['sparse_method']}), {hyper['regression']} regression",
            f"training     {train['n_frames']} frames, {train['n_atoms']} atoms"
            + ("" if rmse is None else f"; training RMSE {rmse:.4f} e")
            + ("" if noise is None else f", fitted noise {noise:.4f} e"),
            _wrapped("calibration", _calibration_text(info["calibration"])),
            _wrapped("environments", "reference stored: predict checks its frames against "
                     "the training environments" if info["environment_reference"]
                     else "no reference (a numbec before the environment check): predict "
                     "cannot check its frames"),
        ]
    print("\n".join(lines))
    return 0


def _wrapped(label: str, text: str) -> str:
    """``label`` in a 13-column margin, ``text`` wrapped to 100 columns beside it."""
    return textwrap.fill(text, width=100, initial_indent=f"{label:<13}",
                         subsequent_indent=" " * 13, break_on_hyphens=False)


def _calibration_text(cal) -> str:
    if cal is None:
        return "none (the raw Bayesian variance)"
    if cal["noise_scale"] is not None:
        text = (f"{cal['method'] or 'two-part'}: epistemic variance x {cal['variance_scale']:.3g}"
                f", noise variance x {cal['noise_scale']:.3g}")
    else:
        text = f"{cal['method'] or 'one scale'}: variance x {cal['variance_scale']:.3g}"
    if cal["folds"]:
        text += f", learned by {cal['folds']}-fold cross-validation on the training frames"
    held = cal["held_out_coverage_95"]
    if held is not None:
        text += f" (held-out 95 % coverage before: {100 * held:.1f} %"
        blocks = cal.get("held_out_block_coverage_95")
        if blocks and len(blocks) > 1:
            from numbec.cli.train import block_coverage_text

            text += ", per block in frame order: " + block_coverage_text(blocks)
        text += ")"
    return text

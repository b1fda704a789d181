"""Reference spectra to plot against: QE DFPT IR tables, eps(omega) curves, saved spectra.

:func:`read_reference` recognises

* a Quantum ESPRESSO ``dynmat.x``-style IR table (header ``# mode [cm-1] [THz] IR``;
  IR activities in (D/Å)^2/amu) -> sticks: ``mode_frequency`` (mode) cm^-1,
  ``intensity`` (mode) e^2/amu and ``intensity_km_mol`` (mode) km/mol;
* a two-column curve ``frequency (cm^-1)  value`` (e.g. ``SiO2-epsim-dfpt.dat``): the
  value is ``imag_dielectric`` when the file name contains ``epsim`` or ``kind="epsim"``
  (then ``absorption = 2 pi nu~ eps''`` in cm^-1 is added, the quantity of
  :func:`numbec.ir_spectrum`), ``real_dielectric`` for ``epsre``, else ``value``;
* a CSV or netCDF spectrum written by ``numbec ir`` (columns/variables as written).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from numbec.conventions import DEBYE_IN_E_ANGSTROM
from numbec.io._files import atomic_write

if TYPE_CHECKING:
    import xarray as xr


def _frequency_coords(f):
    from numbec.conventions import MEV_TO_INVCM, THZ_TO_INVCM

    return {
        "frequency": ("frequency", f, {"units": "cm^-1"}),
        "frequency_thz": ("frequency", f / THZ_TO_INVCM, {"units": "THz"}),
        "frequency_mev": ("frequency", f / MEV_TO_INVCM, {"units": "meV"}),
    }


def _numeric_rows(path, lines):
    rows = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            rows.append([float(v) for v in text.replace(",", " ").split()])
        except ValueError as exc:
            raise ValueError(f"{path}: line {number}: not numbers: {line.strip()!r}") from exc
    if not rows:
        raise ValueError(f"{path}: no data rows")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"{path}: rows have different numbers of columns {sorted(widths)}")
    return np.array(rows)


def _text_of(path) -> str:
    """The text of a reference file; ValueError naming it when it is binary or not UTF-8."""
    where = os.fspath(path)
    data = Path(path).read_bytes()
    if b"\0" in data[:65536]:
        raise ValueError(f"{where}: a binary file, not a text reference (QE IR table, "
                         "two-column curve or numbec CSV); netCDF files must end in .nc")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text (byte {exc.start}: "
                         f"{data[exc.start:exc.start + 1]!r})") from None


def read_reference(path, *, kind: str | None = None) -> xr.Dataset:
    """Read a reference spectrum (see the module docstring) as an xarray Dataset.

    Parameters
    ----------
    path : str or Path
    kind : {"qe-ir", "epsim", "epsre", "curve", "numbec-csv", "netcdf"}, optional
        Default: from the file name and header.

    Returns
    -------
    xarray.Dataset
        attrs ``source`` (the path) and ``reference_kind``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Binary or non-UTF-8 content, rows that are not numbers, wrong column counts, an
        unreadable netCDF file, an unknown ``kind``; the message names the file (and line).
    """
    import xarray as xr

    path = Path(path)
    where = os.fspath(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such reference file")
    kinds = ("qe-ir", "epsim", "epsre", "curve", "numbec-csv", "netcdf")
    if kind is None:
        kind = _guess_kind(path)
    elif kind not in kinds:
        raise ValueError(f"{where}: unknown reference kind {kind!r}; use one of "
                         f"{', '.join(kinds)}")
    if kind == "netcdf":
        try:
            ds = xr.load_dataset(path)
        except Exception as exc:
            raise ValueError(f"{where}: not a readable netCDF file ({exc})") from exc
    elif kind == "numbec-csv":
        ds = read_spectrum_csv(path)
    else:
        lines = _text_of(path).splitlines()
        data = _numeric_rows(where, lines)
        if kind == "qe-ir":
            if data.shape[1] < 4:
                raise ValueError(f"{where}: an IR table needs 4 columns (mode, cm-1, THz, IR)")
            activity = data[:, 3]  # (D/Å)^2/amu
            from numbec.spectra.harmonic import KM_PER_MOL_PER_E2_AMU

            inten = activity * DEBYE_IN_E_ANGSTROM**2
            ds = xr.Dataset(
                {
                    "mode_frequency": ("mode", data[:, 1], {"units": "cm^-1"}),
                    "intensity": ("mode", inten, {"units": "e^2/amu"}),
                    "intensity_km_mol": ("mode", inten * KM_PER_MOL_PER_E2_AMU,
                                         {"units": "km/mol"}),
                },
                coords={"mode": data[:, 0].astype(int)},
            )
        else:
            if data.shape[1] != 2:
                raise ValueError(f"{where}: a curve needs 2 columns (cm^-1, value), "
                                 f"found {data.shape[1]}")
            f, y = data[:, 0], data[:, 1]
            ds = xr.Dataset(coords=_frequency_coords(f))
            if kind == "epsim":
                ds["imag_dielectric"] = ("frequency", y, {"units": "1"})
                ds["absorption"] = ("frequency", 2 * np.pi * f * y, {
                    "units": "cm^-1", "long_name": "alpha*n = 2 pi nu~ eps''"})
                ds.attrs["spectrum"] = "absorption"
            elif kind == "epsre":
                ds["real_dielectric"] = ("frequency", y, {"units": "1"})
                ds.attrs["spectrum"] = "real_dielectric"
            else:
                ds["value"] = ("frequency", y)
                ds.attrs["spectrum"] = "value"
    ds.attrs["source"] = where
    ds.attrs["reference_kind"] = kind
    return ds


def _guess_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".nc", ".nc4", ".netcdf")):
        return "netcdf"
    head = _text_of(path).split("\n", 1)[0]
    if head.startswith("# numbec"):
        return "numbec-csv"
    if "mode" in head.lower() and "ir" in head.lower():
        return "qe-ir"
    if "epsim" in name or "eps_im" in name or "imag" in name:
        return "epsim"
    if "epsre" in name or "eps_re" in name:
        return "epsre"
    return "curve"


# ---------------------------------------------------------------------------- CSV
def write_spectrum_csv(spectrum, path) -> None:
    """Write a spectrum Dataset as CSV: ``#`` header lines with the attrs, then columns.

    Columns: every variable on the ``frequency`` dimension (name ``[units]``), partial
    variables as ``name[label] [units]``; a variable without units is written ``[1]``
    (dimensionless) so that every column header states its unit. Attributes with units
    have a companion ``*_units`` line.
    """
    columns, names = [], []
    for coord in ("frequency", "frequency_thz", "frequency_mev"):
        columns.append(np.asarray(spectrum[coord].values))
        names.append(f"{coord} [{spectrum[coord].attrs.get('units', '')}]")
    for name, var in spectrum.data_vars.items():
        units = var.attrs.get("units") or "1"
        if var.dims == ("frequency",):
            columns.append(np.asarray(var.values))
            names.append(f"{name} [{units}]")
        elif var.dims == ("partial", "frequency"):
            for label, row in zip(spectrum["partial"].values, var.values, strict=True):
                columns.append(np.asarray(row))
                names.append(f"{name}[{label}] [{units}]")
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write("# numbec infrared spectrum\n")
            for key, value in spectrum.attrs.items():
                fh.write(f"# {key}: {value}\n")
            fh.write(",".join(names) + "\n")
            np.savetxt(fh, np.column_stack(columns), delimiter=",", fmt="%.10g")

    # a failed write (full disk) must not truncate the spectrum of an earlier run
    atomic_write(path, write)


def read_spectrum_csv(path) -> xr.Dataset:
    """Read a CSV written by :func:`write_spectrum_csv` back into a Dataset."""
    import io

    import xarray as xr

    where = os.fspath(path)
    attrs, header = {}, None
    fh = io.StringIO(_text_of(path))
    for line in fh:
        if line.startswith("#"):
            key, sep, value = line[1:].strip().partition(": ")
            if sep:
                attrs[key] = value
            continue
        header = line.strip().split(",")
        break
    if header is None:
        raise ValueError(f"{where}: no column header")
    try:
        data = np.loadtxt(fh, delimiter=",", ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{where}: not a numbec spectrum CSV ({exc})") from None
    if data.shape[1] != len(header):
        raise ValueError(f"{where}: {len(header)} column names but {data.shape[1]} columns")
    names = [h.split(" [")[0] for h in header]
    units = [h.split(" [", 1)[1].rstrip("]") if " [" in h else "" for h in header]
    if names[0] != "frequency":
        raise ValueError(f"{where}: the first column must be frequency, found {names[0]!r}")
    coords = {"frequency": ("frequency", data[:, 0], {"units": units[0]})}
    data_vars, partials = {}, {}
    for i, (name, unit) in enumerate(zip(names, units, strict=True)):
        if i == 0:
            continue
        if name.startswith("frequency_"):
            coords[name] = ("frequency", data[:, i], {"units": unit})
        elif "[" in name:
            base, label = name[:-1].split("[", 1)
            partials.setdefault(base, ([], [], unit))
            partials[base][0].append(label)
            partials[base][1].append(data[:, i])
        else:
            data_vars[name] = ("frequency", data[:, i], {"units": unit})
    for base, (labels, rows, unit) in partials.items():
        coords["partial"] = ("partial", labels)
        data_vars[base] = (("partial", "frequency"), np.array(rows), {"units": unit})
    for key, value in attrs.items():
        try:
            attrs[key] = float(value) if key not in ("provenance",) else value
        except ValueError:
            pass
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)

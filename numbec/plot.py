"""Figures of IR spectra (matplotlib is optional: ``pip install numbec[plot]``)."""

from __future__ import annotations

import numpy as np

#: x axis choices: coordinate name and label.
_X_AXES = {
    "cm^-1": ("frequency", "wavenumber (cm$^{-1}$)"),
    "THz": ("frequency_thz", "frequency (THz)"),
    "meV": ("frequency_mev", "energy (meV)"),
}


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib: pip install 'numbec[plot]' (or pip install matplotlib)"
        ) from exc
    return plt


def _label(name, units):
    pretty = {
        "absorption": r"$\alpha n$",
        "cross_section": r"$\sigma$ per cell",
        "imag_dielectric": r"$\varepsilon''$",
    }.get(name, name)
    units = {"cm^-1": "cm$^{-1}$", "cm^2": "cm$^2$", "1": ""}.get(units, units)
    return f"{pretty} ({units})" if units else pretty


def signal_extent(spectrum, variable: str | None = None, threshold: float = 0.01) -> float:
    """Upper end (cm^-1) of the frequency range where a spectrum has its signal.

    The highest frequency where ``variable`` (default ``attrs["spectrum"]``) or any of its
    partials exceeds ``threshold`` times the largest value, plus a margin of three line
    widths (``attrs["resolution_fwhm"]``, else 5 % of it), rounded up to a multiple of
    100 cm^-1 (10 below 200 cm^-1) and never beyond the last frequency. A crystal's phonons
    then fill the axis instead of its left tenth (the Nyquist limit of a 1 fs step is
    16,678 cm^-1).
    """
    variable = variable or spectrum.attrs.get("spectrum", "absorption")
    f = np.asarray(spectrum["frequency"].values, dtype=np.float64)
    curves = [np.asarray(spectrum[variable].values, dtype=np.float64)[None]]
    if f"{variable}_partial" in spectrum:
        curves.append(np.abs(np.asarray(spectrum[f"{variable}_partial"].values, float)))
    y = np.nanmax(np.concatenate(curves), axis=0)
    top = np.nanmax(y) if np.isfinite(y).any() else 0.0
    if not top > 0:
        return float(f.max())
    high = float(f[np.flatnonzero(y > threshold * top)[-1]])
    width = float(spectrum.attrs.get("resolution_fwhm", np.nan))
    margin = 3.0 * width if np.isfinite(width) and width > 0 else 0.05 * high
    step = 100.0 if high + margin >= 200.0 else 10.0
    return float(min(np.ceil((high + margin) / step) * step, f.max()))


def curve_label(spectrum, fallback: str = "spectrum") -> str:
    """Legend text of a spectrum: its system and model (``attrs["system"]``,
    ``attrs["model"]``, written by :func:`numbec.ir_spectrum`), else ``fallback``."""
    parts = [str(spectrum.attrs[k]) for k in ("system", "model") if spectrum.attrs.get(k)]
    return ", ".join(parts) if parts else fallback


def plot_spectrum(spectrum, ax=None, *, reference=None, partials: bool = False,
                  variable: str | None = None, unit: str = "cm^-1", label: str | None = None,
                  reference_label: str | None = None, max_frequency: float | None = None):
    """Plot a spectrum with its error band, its model band, optional partials and a reference.

    The block standard error (``*_stderr``) is a shaded band; the model-uncertainty band
    (``*_model_p16`` to ``*_model_p84``, present when the prediction has posterior samples) is
    hatched, and so are the partials' model bands (``*_partial_model_p16`` to ``..._p84``,
    when the samples have species parts) in the colour of their partial.

    Parameters
    ----------
    spectrum : xarray.Dataset
        From :func:`numbec.ir_spectrum` (or :func:`numbec.spectra.harmonic_ir`).
    ax : matplotlib Axes, optional
    reference : xarray.Dataset, optional
        From :func:`numbec.spectra.reference.read_reference` or another spectrum: a curve
        of the same variable is drawn dashed on the same axis; sticks (``mode_frequency``
        with ``intensity_km_mol``) are drawn on a second y axis in km/mol.
    partials : bool
        Draw the partial spectra (``*_partial``) too.
    variable : str, optional
        Default ``spectrum.attrs["spectrum"]`` ("absorption" or "cross_section").
    unit : {"cm^-1", "THz", "meV"}
        x axis.
    label : str, optional
        Legend entry of the spectrum (default: system and model, :func:`curve_label`;
        with partials prefixed by "total: ").
    max_frequency : float, optional
        Upper x limit in ``unit`` (default: where the signal is, :func:`signal_extent`).

    Returns
    -------
    matplotlib Axes
    """
    plt = _pyplot()
    if unit not in _X_AXES:
        raise ValueError(f"unit must be one of {', '.join(_X_AXES)}, got {unit!r}")
    xname, xlabel = _X_AXES[unit]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    variable = variable or spectrum.attrs.get("spectrum", "absorption")
    if variable not in spectrum:
        raise ValueError(f"the spectrum has no {variable!r} (it has {list(spectrum.data_vars)})")
    x = np.asarray(spectrum[xname].values)
    y = np.asarray(spectrum[variable].values)
    units = spectrum[variable].attrs.get("units", "")
    if label is None:
        label = curve_label(spectrum)
        if partials:
            label = f"total: {label}"
    (line,) = ax.plot(x, y, lw=1.4, label=label, zorder=3)
    err_name = f"{variable}_stderr"
    if err_name in spectrum:
        err = np.asarray(spectrum[err_name].values)
        if np.isfinite(err).any():
            ax.fill_between(x, y - err, y + err, color=line.get_color(), alpha=0.3, lw=0,
                            label="standard error", zorder=2)
    if f"{variable}_model_p16" in spectrum:  # posterior samples (numbec.spectra.model_band)
        lo = np.asarray(spectrum[f"{variable}_model_p16"].values)
        hi = np.asarray(spectrum[f"{variable}_model_p84"].values)
        ax.fill_between(x, lo, hi, facecolor="none", edgecolor=line.get_color(), hatch="////",
                        lw=0.0, alpha=0.6, label="model band (16-84 %)", zorder=1)
    part_name = f"{variable}_partial"
    if partials:
        if part_name not in spectrum:
            raise ValueError(f"the spectrum has no partials ({part_name}); compute it with "
                             "partials=True")
        band = f"{part_name}_model_p16" in spectrum  # samples with species parts
        for lab in spectrum["partial"].values:
            (part,) = ax.plot(x, spectrum[part_name].sel(partial=lab).values, lw=0.9,
                              label=str(lab))
            if band:
                ax.fill_between(x, spectrum[f"{part_name}_model_p16"].sel(partial=lab).values,
                                spectrum[f"{part_name}_model_p84"].sel(partial=lab).values,
                                facecolor="none", edgecolor=part.get_color(), hatch="\\\\",
                                lw=0.0, alpha=0.5, zorder=1)
    if reference is not None:
        _plot_reference(ax, reference, variable, xname, unit, reference_label)
    ax.axhline(0.0, color="0.6", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_label(variable, units))
    if max_frequency is None:  # the same place on every x axis: scale cm^-1 to ``unit``
        f_cm = np.asarray(spectrum["frequency"].values, dtype=np.float64)
        max_frequency = signal_extent(spectrum, variable) * (x[-1] / f_cm[-1] if f_cm[-1] > 0
                                                             else 1.0)
    elif not (np.isfinite(max_frequency) and max_frequency > 0):
        raise ValueError(f"max_frequency must be a number > 0, got {max_frequency}")
    ax.set_xlim(0, float(max_frequency))
    title = []
    for key, fmt in (("temperature", "T = {:g} K"), ("window", "{} window"),
                     ("resolution_fwhm", "FWHM {:.1f} cm$^{{-1}}$")):
        if key in spectrum.attrs:
            title.append(fmt.format(spectrum.attrs[key]))
    if title:
        ax.set_title(", ".join(title), fontsize=9)
    _align_twins(ax, float(np.nanmax(y)))
    handles, labels = ax.get_legend_handles_labels()
    for other in getattr(ax, "_numbec_twins", []):
        h2, l2 = other.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, frameon=False)
    return ax


def _plot_reference(ax, reference, variable, xname, unit, label):
    label = label or str(reference.attrs.get("source", "reference")).rsplit("/", 1)[-1]
    if "mode_frequency" in reference and "intensity_km_mol" in reference:
        from numbec.conventions import MEV_TO_INVCM, THZ_TO_INVCM

        scale = {"cm^-1": 1.0, "THz": 1 / THZ_TO_INVCM, "meV": 1 / MEV_TO_INVCM}[unit]
        twin = ax.twinx()
        f, h = _merge_degenerate(np.asarray(reference["mode_frequency"].values),
                                 np.asarray(reference["intensity_km_mol"].values))
        f = f * scale
        twin.vlines(f, 0, h, color="k", lw=1.2, label=f"{label} (sticks)")
        twin.set_ylabel("intensity (km/mol)")
        twin._numbec_max = float(h.max())
        ax._numbec_twins = [*getattr(ax, "_numbec_twins", []), twin]
        return
    if variable in reference and xname in reference.coords:
        ax.plot(reference[xname].values, reference[variable].values, "k--", lw=1.0,
                label=label, zorder=4)
        return
    raise ValueError(
        f"the reference {label} has neither {variable!r} nor sticks (mode_frequency, "
        "intensity_km_mol)"
    )


def _merge_degenerate(frequency, intensity, tolerance=0.5):
    """Sum the intensities of modes closer than ``tolerance`` cm^-1 (degenerate sets)."""
    order = np.argsort(frequency)
    f, h = frequency[order], intensity[order]
    starts = np.r_[0, np.nonzero(np.diff(f) > tolerance)[0] + 1]
    return f[starts], np.add.reduceat(h, starts)


def _align_twins(ax, curve_max):
    """Put the stick axis's zero on the main axis's zero; tallest stick at the tallest peak."""
    bottom, top = ax.get_ylim()
    for twin in getattr(ax, "_numbec_twins", []):
        if not (curve_max > 0 and top > 0):
            twin.set_ylim(bottom=0)
            continue
        twin_top = twin._numbec_max * top / curve_max
        twin.set_ylim(bottom / top * twin_top, twin_top)

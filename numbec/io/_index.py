"""Frame selections (``index`` arguments) applied while streaming."""

from __future__ import annotations


def parse_index(index) -> slice | int:
    """Turn ``":"``, ``"10:200:5"``, ``"-1"``, an int or a slice into a slice or int.

    Raises :class:`ValueError` for anything else.
    """
    if isinstance(index, slice):
        return index
    if isinstance(index, int):
        return index
    if index is None:
        return slice(None)
    text = str(index).strip()
    try:
        if ":" not in text:
            return int(text)
        parts = text.split(":")
        if len(parts) > 3:
            raise ValueError
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise ValueError(
            f"invalid frame index {index!r}; use e.g. ':', '100:', '0:1000:2' or -1"
        ) from None
    values += [None] * (3 - len(values))
    if values[2] == 0:
        raise ValueError(f"invalid frame index {index!r}: slice step cannot be zero")
    return slice(*values)


def needs_length(sel: slice | int) -> bool:
    """True when the selection can only be resolved knowing the number of frames."""
    if isinstance(sel, int):
        return sel < 0
    return any(v is not None and v < 0 for v in (sel.start, sel.stop, sel.step))


def forward_range(sel: slice | int, n_total: int | None = None) -> range | None:
    """Selected frame numbers in increasing order, as a ``range``.

    ``n_total`` is needed only when :func:`needs_length` is true; otherwise
    the range may be open-ended (``stop`` = a huge number). Returns ``None`` for an
    open-ended slice. Negative steps are refused: streams run forwards only.
    """
    if isinstance(sel, int):
        i = sel + n_total if sel < 0 else sel
        if i < 0 or (n_total is not None and i >= n_total):
            raise IndexError(f"frame index {sel} out of range ({n_total} frames)")
        return range(i, i + 1)
    if sel.step is not None and sel.step < 0:
        raise ValueError("reversed frame selections are not supported for streamed trajectories")
    if n_total is not None:
        return range(*sel.indices(n_total))
    start = sel.start or 0
    step = sel.step or 1
    stop = sel.stop if sel.stop is not None else 2**62
    return range(start, stop, step)

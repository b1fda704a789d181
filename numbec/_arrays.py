"""Whether two arrays are the same data: for caches keyed by an array the caller passes on."""

from __future__ import annotations

import numpy as np


def same_memory(a, b) -> bool:
    """Whether a and b are the same elements of the same memory: the same array, or views of
    all of it with the same shape, strides and dtype (``np.ascontiguousarray`` may return
    such a view rather than its argument, e.g. where the dtype object differs, as for
    arrays made by Numba; ``x[None][0]`` is another)."""
    if a is b:
        return a is not None
    return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
            and a.strides == b.strides and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])

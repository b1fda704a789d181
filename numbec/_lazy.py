"""Lazy exports of a package (PEP 562): names imported from their module on first use.

Keeps ``import numbec`` and the ``--help`` of every command free of Numba, SciPy and xarray.
"""

from __future__ import annotations

import importlib
import importlib.util


def lazy_exports(package: str, exports: dict[str, str], namespace: dict):
    """Module ``__getattr__`` and ``__dir__`` for ``package``.

    Submodules are attributes too, imported on first use. ``exports`` maps an exported
    name to the module that defines it; ``namespace`` is the package's ``globals()``, where
    a name is cached once imported.
    """
    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        # a submodule not imported yet (``numbec.spectra`` after ``import numbec``), as the
        # docs use them; importing it makes it an attribute of the package
        if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}"):
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():  # what the package holds so far, and what it will import on use
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__

"""MD under an electric field with learned Born effective charges: an ASE calculator.

:class:`FieldCalculator` wraps any ASE calculator (the force field, DFTB, a machine-learned
potential, ...) and adds the force a homogeneous electric field ``E`` exerts through the
BECs of a numbec model, to first order in the field:

``F_{a,j} = F^base_{a,j} + sum_i Z[a, i, j] E_i``

with numbec's convention ``Z[a, i, j] = dP_i / dr_{a,j}`` (row ``i`` = field /
polarisation direction, column ``j`` = displacement; see ``docs/conventions.md``), ``E`` in
V/Å, ``Z`` in e, so the field force is in e·V/Å = eV/Å. The field may be a constant vector
or a function of time (fs): pulses, THz driving (:func:`oscillating_field`).

Energy
------
* Molecules and clusters (``pbc`` all False) with a model that gives the dipole ``M``
  (monopole, dipole and combined kernel models): ``energy = E_base - E . M`` (eV, ``M`` the
  model's own dipole in e·Å). The field forces are exactly ``-grad(-E . M)`` because the
  models' BECs are the derivatives of their dipole, so a constant-field NVE run conserves
  this energy plus the kinetic energy. For a time-dependent field it changes by
  ``-integral (dE/dt) . M dt``: the energy the field pumps in.
* Periodic cells (any ``pbc`` True) and models without a dipole: ``energy = E_base`` only.
  The polarisation of a cell is multivalued and the models learn BECs directly, not as the
  gradient of a polarisation; the field forces then need not be the gradient of any energy,
  so no field term is added and **the reported energy is not conserved** under a field
  (``E_base + E_kin`` changes by the work of the field ``integral E . dM``, with
  ``dM/dt = sum_a Z_a v_a``). A ``RuntimeWarning`` says so once per calculator.

The field force is linear in the field: the electronic polarisability (the
``-1/2 E . alpha E`` energy and the field dependence of ``Z``) is left out, which is an
error of order ``|E|^2``; tblite's own finite-field forces of a water trimer differ from
``Z^T E`` by 6e-5 eV/Å at 0.04 V/Å and 4e-6 eV/Å at 0.01 V/Å (``docs/dielectric.md``).
Neutral systems with BECs that obey the acoustic sum rule (every numbec kernel model)
feel no net field force; a charged system feels ``Q E``.

Time
----
A time-dependent field is evaluated at the time (fs) of the positions being computed:

* ``calc.time = t`` sets it by hand (cached results are dropped when it changes);
* ``calc.follow(dyn)`` makes it follow an ASE molecular-dynamics object: the positions at
  the last observer call of ``dyn`` are at ``dyn.get_time()``, any new positions are one
  step later. This is right for every ASE integrator that evaluates the forces once per
  step, at the new positions (``VelocityVerlet``, ``Langevin``, ``Andersen``, ``Bussi``).
"""

from __future__ import annotations

import warnings

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from numbec.conventions import INVCM_TO_RAD_PER_FS

__all__ = ["FieldCalculator", "oscillating_field"]


def oscillating_field(amplitude, wavenumber, phase=0.0, center=None, fwhm=None):
    """``E(t) = amplitude * cos(omega t + phase) * envelope(t)``, a function of time in fs.

    Parameters
    ----------
    amplitude : (3,) float, V/Å
    wavenumber : float, cm^-1 (``omega = 2 pi c wavenumber``)
    phase : float, rad
    center, fwhm : float, fs, optional
        A Gaussian envelope ``exp(-4 ln 2 (t - center)^2 / fwhm^2)`` (a pulse); without them
        a continuous wave.

    Returns
    -------
    callable ``field(t) -> (3,) float64`` V/Å
    """
    amplitude = np.asarray(amplitude, dtype=np.float64).reshape(3)
    omega = float(wavenumber) * INVCM_TO_RAD_PER_FS
    if (center is None) != (fwhm is None):
        raise ValueError("a pulse needs both center= and fwhm= (fs)")
    if fwhm is not None and not float(fwhm) > 0:
        raise ValueError(f"fwhm must be > 0 fs, got {fwhm}")

    def field(t):
        value = amplitude * np.cos(omega * t + phase)
        if fwhm is not None:
            value = value * np.exp(-4.0 * np.log(2.0) * (t - center) ** 2 / fwhm**2)
        return value

    return field


class FieldCalculator(Calculator):
    """An ASE calculator: ``base_calculator`` plus the force of an electric field on BECs.

    Parameters
    ----------
    base_calculator : ase Calculator
        Gives ``energy`` (eV) and ``forces`` (eV/Å) without the field.
    model : numbec model (:class:`numbec.models.base.BECModel`)
        Gives ``bec`` (N, 3, 3) e, canonical ``Z[a, i, j] = dP_i / dr_{a,j}``, and for
        molecules the ``dipole`` (3,) e·Å whose derivative they are.
    field : (3,) float or callable
        The homogeneous electric field in V/Å: a constant vector, or ``field(t)`` returning
        the vector at time ``t`` (fs).
    time : float, fs
        Initial time for a callable field (see :attr:`time` and :meth:`follow`).
    precision : str
        Passed to ``model.predict`` (``"float64"`` or, for dipole models, ``"mixed"``).

    Results (``calc.results`` after a calculation)
    ----------------------------------------------
    ``energy``, ``free_energy`` : float, eV (see the module docstring: ``E_base - E . M`` for
    molecules with a model dipole, else ``E_base``); ``forces`` (N, 3) eV/Å;
    ``base_energy`` float eV, ``base_forces`` (N, 3) eV/Å; ``field_forces`` (N, 3) eV/Å,
    ``F_{a,j} = sum_i Z[a, i, j] E_i``; ``bec`` (N, 3, 3) e canonical; ``charges`` (N,) e
    (monopole and combined models); ``dipole`` (3,) e·Å (molecules, models with a dipole);
    ``field`` (3,) V/Å and ``time`` (fs) at which it was evaluated.
    Stress is not available: the field's contribution to it is not defined by the BECs.
    """

    implemented_properties = ["energy", "free_energy", "forces", "bec", "charges", "dipole",
                              "field"]

    def __init__(self, base_calculator, model, field, time=0.0, precision="float64"):
        super().__init__()
        if base_calculator is None:
            raise ValueError("FieldCalculator needs a base calculator for the field-free forces")
        if not hasattr(model, "predict"):
            raise TypeError(f"model must be a numbec model with predict(atoms), got {model!r}")
        model.precision_arguments(precision)  # a clear error now, not inside the MD
        self.base = base_calculator
        self.model = model
        self.precision = precision
        if callable(field):
            self._field = field
        else:
            constant = self._check_field(field, None)
            self._field = lambda t: constant
        self._time = float(time)
        self._results_time = None
        self._follow = None
        self._warned = False

    # ------------------------------------------------------------------ field and time
    @staticmethod
    def _check_field(value, t):
        when = "" if t is None else f" at t = {t:g} fs"
        arr = np.asarray(value, dtype=np.float64)
        if arr.shape != (3,):
            raise ValueError(f"the electric field{when} must be a vector of 3 components "
                             f"(V/Å), got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"the electric field{when} is not finite: {arr}")
        return arr

    def field_at(self, t) -> np.ndarray:
        """The field (3,) V/Å at time ``t`` (fs)."""
        return self._check_field(self._field(float(t)), float(t))

    @property
    def time(self) -> float:
        """Time (fs) at which the field is evaluated when no dynamics is followed."""
        return self._time

    @time.setter
    def time(self, value):
        self._time = float(value)
        self.results = {}

    def follow(self, dynamics):
        """Evaluate the field at the time of ``dynamics`` (an ASE MD object) from now on.

        The positions at ``dynamics``'s last observer call (or now) are at time
        ``dynamics.nsteps * dt`` (fs; ``dynamics.get_time()``); any other positions are the
        next step's, one ``dt`` later (integrators with one force evaluation per step, at the
        new positions). Returns ``self``.
        """
        from ase import units

        if not hasattr(dynamics, "nsteps") or not hasattr(dynamics, "attach"):
            raise TypeError(f"follow() needs an ASE MolecularDynamics object, got {dynamics!r}")
        self._follow = {"dynamics": dynamics, "dt": float(dynamics.dt) / units.fs}
        self._observe()
        dynamics.attach(self._observe, interval=1)
        return self

    def _observe(self):
        dyn = self._follow["dynamics"]
        self._follow["positions"] = dyn.atoms.get_positions().copy()
        self._follow["step"] = int(dyn.nsteps)

    def time_of(self, atoms) -> float:
        """Time (fs) of the positions of ``atoms`` (see :meth:`follow` and :attr:`time`)."""
        if self._follow is None:
            return self._time
        same = np.array_equal(atoms.get_positions(), self._follow["positions"])
        # step * dt, not get_time() + dt: the same positions must always get the same float
        return (self._follow["step"] + (0 if same else 1)) * self._follow["dt"]

    def check_state(self, atoms, tol=1e-15):
        changes = super().check_state(atoms, tol)
        if not changes and self._results_time is not None \
                and self.time_of(atoms) != self._results_time:
            changes.append("time")
        return changes

    # ------------------------------------------------------------------ calculation
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        t = self.time_of(atoms)
        field = self.field_at(t)
        base_energy = float(self.base.get_potential_energy(atoms))
        base_forces = np.asarray(self.base.get_forces(atoms), dtype=np.float64)
        pred = self.model.predict(atoms, precision=self.precision)
        bec = np.asarray(pred["bec"], dtype=np.float64)
        if bec.shape != (len(atoms), 3, 3):
            raise ValueError(f"the model returned BECs of shape {bec.shape} for "
                             f"{len(atoms)} atoms")
        field_forces = np.einsum("aij,i->aj", bec, field)
        molecule = not bool(np.any(atoms.pbc))
        energy = base_energy
        if molecule and "dipole" in pred:
            dipole = np.asarray(pred["dipole"], dtype=np.float64)
            energy = base_energy - float(field @ dipole)
            self.results["dipole"] = dipole
        elif not self._warned and np.any(field != 0):
            self._warned = True
            why = ("the cell is periodic" if not molecule
                   else f"{type(self.model).__name__} gives no dipole")
            warnings.warn(
                f"FieldCalculator: {why}, so the reported energy is the base energy only "
                "and is not conserved under a field (it changes by the work of the field, "
                "integral E . dM)", RuntimeWarning, stacklevel=2)
        if "charges" in pred:
            self.results["charges"] = np.asarray(pred["charges"], dtype=np.float64)
        self.results.update(
            energy=energy, free_energy=energy, forces=base_forces + field_forces,
            base_energy=base_energy, base_forces=base_forces, field_forces=field_forces,
            bec=bec, field=field, time=t,
        )
        self._results_time = t

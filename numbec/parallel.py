"""Thread and process policy: who runs on how many threads, decided in one place.

numbec parallelises at three levels, and only one of them may be active at a time on a
core, or the machine oversubscribes (threads wait for each other instead of computing):

* **atoms** of one structure: Numba ``parallel=True`` kernels (neighbour search,
  descriptors) on ``numba.get_num_threads()`` threads, one thread below
  :data:`SERIAL_BELOW` work items (:func:`serial_if_small`);
* **frames** of one chunk: concurrent threads, each with its Numba kernels on one thread
  (:func:`frame_threads`, :func:`numba_threads`);
* **chunks**: Dask tasks on threads, processes or ``distributed`` workers
  (:func:`chunk_executor_kind`); a chunk task that is not the main thread of the main
  process is one of several concurrent tasks and keeps to one thread
  (:func:`chunk_task_threads`).

BLAS (numpy's matrix products) always runs on one thread while numbec predicts
(:func:`blas_limit`, in the driving thread and in every chunk task): per-frame matrices
have a few hundred rows, and a multi-threaded BLAS spent longer synchronising than
computing (2.5x slower per frame on a busy 2-core machine, 10x for the demo's water
clusters).

Nothing here imports Numba, threadpoolctl or Dask at module level: ``import numbec`` stays
light.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import warnings

# Numba's OpenMP workers spin while waiting; on a shared or oversubscribed machine they starve
# each other (measured: 6x slower at load 2 on 2 cores). Passive waiting costs nothing
# measurable on an idle machine. Set when numbec is imported (numbec/__init__ imports this
# module), before any numbec kernel starts the OpenMP runtime; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Below this many work items (atoms for the neighbour search, pairs for descriptors) Numba
#: kernels run on one thread: starting the thread team costs more than it saves (measured: a
#: 6-atom structure takes 260 µs on one thread, 370-550 µs on two).
SERIAL_BELOW = {"atoms": 48, "pairs": 1500}

#: With the automatic number of frame threads, frames run on concurrent threads only if one
#: frame alone takes at least this long (s). Shorter frames are mostly Python between the
#: kernels, which holds the GIL: for water clusters two threads ran at 0.5-0.8x the speed of
#: one up to 24 atoms (1-2.4 ms per frame) and at 1.2-1.6x from 48 atoms (2.4-11 ms per
#: frame). Measured at commit 6fe8735 (numbec 0.1.0.dev0, numba 0.61, 2 cores).
MIN_THREADED_FRAME_S = 3e-3

#: Frames with fewer atoms than this are predicted in batches (``model.predict_frames``, one
#: descriptor pass, kernel product and back-propagation per batch of frames) by models that
#: offer it (``batched_frames``). Per-frame vs batched CPU time per frame, 1 thread, water
#: clusters, demo-sized models (2026-12-03, numba 0.68, numpy 2.4, loaded machine): monopole
#: 471 -> 157 us (6 atoms), 1141 -> 564 (18), 1570 -> 1299 (48); combined 861 -> 602,
#: 1462 -> 1116, 2564 -> 3851: the gain fades past a few tens of atoms.
BATCH_BELOW_ATOMS = 32

#: Atoms per batch of stacked frames: large enough that the kernel products of a batch are
#: efficient BLAS calls, small enough that their temporaries stay in cache (water dimers, kernel
#: part 91, 68 and 189 us per frame for batches of 192, 768 and 3072 atoms, same conditions).
BATCH_ATOMS = 768

#: Cap on the atoms per batch of models with the dipole kernel (``model.batch_atoms``): their
#: vector descriptors, four adjoint channels and dipole-kernel products take about 35 kB per
#: atom, twice the monopole model's, and batches of 768 atoms no longer stay in cache.
#: CPU time per frame, 1 thread, demo-sized combined model, batches of 384 / 768 atoms, four
#: alternating rounds (2026-12-03, load 5 on 2 cores): water dimer 165-210 / 212-251 us,
#: (H2O)6 551-742 / 714-838 us; the monopole model is fastest at 768.
VECTOR_BATCH_ATOMS = 384

#: With the automatic number of threads, a chunk of batches (:data:`BATCH_BELOW_ATOMS`) first
#: times its second batch with the Numba kernels on all threads, the third on one thread and
#: the next ones on concurrent batch threads, and runs the rest the fastest way
#: (:func:`fastest_batch_mode`); another way must beat the Numba-threaded one by this factor.
#: On a busy 2-core machine the second thread often cost more than it gave (2026-12-03, load
#: 2-14: (H2O)6 combined model 1.76 ms per frame on one frame thread, 2.43 on two).
MIN_THREAD_GAIN = 1.1

#: The probe of :data:`MIN_THREAD_GAIN` runs in predict calls of at least this many batches,
#: once per call (in its first chunk of at least 3 + threads batches; the other chunks run
#: the way it chose); shorter calls run their batches one at a time with the Numba kernels on
#: their threads (a probe took 5 of the 8 batches of 1,000 water dimers and made them
#: 1.3-1.4x slower than ``threads=1``, 2026-12-03, load 12).
PROBE_FROM_BATCHES = 16

#: Environment of ``dask.distributed`` worker processes started by numbec: one thread per
#: library, the parallelism is over workers.
SINGLE_THREAD_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                     "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def dask_worker_settings() -> dict:
    """Dask configuration (for ``dask.config.set``) under which ``dask.distributed`` spawns its
    worker processes with glibc's heap thresholds where :func:`numbec._heap.keep_freed_memory`
    puts a process of its own: trim at 60 MiB instead of Dask's 64 KiB, which made small
    frames fault their batch memory back in every batch, and mmap at 30 MiB (an explicit trim
    threshold freezes the mmap threshold, at 128 KiB unless it is given too). Set it around
    the creation of a ``LocalCluster``; a ``MALLOC_*`` variable already in ``os.environ``
    takes precedence."""
    from numbec._heap import RAISE_TO_BYTES, WORKER_TRIM_THRESHOLD

    key = "distributed.nanny.pre-spawn-environ."
    return {key + "MALLOC_TRIM_THRESHOLD_": WORKER_TRIM_THRESHOLD,
            key + "MALLOC_MMAP_THRESHOLD_": RAISE_TO_BYTES}


__all__ = [
    "BATCH_ATOMS",
    "VECTOR_BATCH_ATOMS",
    "BATCH_BELOW_ATOMS",
    "MIN_THREADED_FRAME_S",
    "MIN_THREAD_GAIN",
    "PROBE_FROM_BATCHES",
    "SERIAL_BELOW",
    "SINGLE_THREAD_ENV",
    "dask_worker_settings",
    "blas_limit",
    "chunk_executor_kind",
    "chunk_task_threads",
    "distributed_client",
    "fastest_batch_mode",
    "batch_frames",
    "frame_threads",
    "in_main_thread",
    "numba_threads",
    "serial_if_small",
]


# ------------------------------------------------------------------------------ Numba
@contextlib.contextmanager
def numba_threads(n: int):
    """Numba kernels called from this thread use ``n`` threads (the setting is per thread)."""
    import numba

    previous = numba.get_num_threads()
    if previous == n:  # nothing to switch (10 µs saved per call)
        yield
        return
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@contextlib.contextmanager
def serial_if_small(n_items: int, kind: str = "pairs"):
    """Context in which Numba parallel kernels use one thread if ``n_items`` is small
    (below ``SERIAL_BELOW[kind]``, ``kind`` "atoms" or "pairs")."""
    if n_items >= SERIAL_BELOW[kind]:
        yield
        return
    with numba_threads(1):
        yield


def in_main_thread() -> bool:
    """True in the main thread of the main process (not in a Dask worker thread or
    process): the one place where a chunk may use every core."""
    return (threading.current_thread() is threading.main_thread()
            and multiprocessing.parent_process() is None)


_warned_layer = False


def batch_frames(n_atoms: int, max_atoms: int | None = None) -> int:
    """Frames per batch of :data:`BATCH_ATOMS` atoms (at most ``max_atoms``, a model's
    ``batch_atoms``, when given) for frames of ``n_atoms`` atoms."""
    atoms = BATCH_ATOMS if max_atoms is None else min(BATCH_ATOMS, max_atoms)
    return max(1, atoms // max(1, n_atoms))


def fastest_batch_mode(seconds_per_batch: dict) -> str:
    """The way to run the remaining batches of a chunk, from probe timings.

    ``seconds_per_batch``: wall seconds per batch for ``"numba"`` (one batch at a time, Numba
    kernels on their threads), ``"serial"`` (one at a time, Numba on one thread) and
    ``"batch threads"`` (batches on concurrent threads, each Numba kernel on one thread;
    wall time of the round divided by its batches). ``"numba"`` unless another is faster by
    :data:`MIN_THREAD_GAIN`."""
    best = "numba"
    for mode in ("serial", "batch threads"):
        if seconds_per_batch[mode] * MIN_THREAD_GAIN < seconds_per_batch[best]:
            best = mode
    return best


def frame_threads(requested: int, concurrent_frames: bool, n_frames: int) -> int:
    """Threads that compute the frames of a chunk concurrently.

    ``requested`` > 0 is taken as given; 0 means automatic: for models that declare
    ``concurrent_frames`` (the kernel models) ``numba.get_num_threads()`` in the main thread
    of the main process, 1 in chunk tasks elsewhere (they parallelise over chunks). Threads
    need a thread-safe Numba threading layer (OpenMP or TBB; with 'workqueue' concurrent
    kernels would abort the process): with any other layer frames run one after another and
    a warning says so once.
    """
    import numba

    n = requested
    if n == 0:
        if not concurrent_frames:
            return 1
        n = numba.get_num_threads() if in_main_thread() else 1
    if n < 2 or n_frames < 3:
        return 1
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        return 1
    if layer in ("omp", "tbb"):
        return min(n, n_frames)
    global _warned_layer
    if not _warned_layer:
        _warned_layer = True
        warnings.warn(
            f"Numba's threading layer is {layer!r}, which cannot run kernels from several "
            "threads at once: the frames of a chunk run one after another. Install an "
            "OpenMP runtime or tbb (pip install tbb) for parallel frames.",
            RuntimeWarning, stacklevel=2,
        )
    return 1


# ------------------------------------------------------------------------------ BLAS
@contextlib.contextmanager
def blas_limit(n_threads, refresh: bool = False):
    """``with blas_limit(n):`` BLAS runs on at most ``n`` threads (None: unchanged), set in
    the calling thread and restored on exit. Needs threadpoolctl; without it, a no-op.
    ``refresh``: look for the loaded BLAS libraries again first (:func:`_blas_controller`).

    OpenBLAS builds differ in whether the setting is per thread or process-wide (and older
    ones take it from the main thread only), so numbec sets it both in the thread that
    drives a run (the main thread: :func:`numbec.predict`, or :func:`limit_blas_for_graph`
    for a lazy result) and in every chunk task (:func:`chunk_task_threads`).
    """
    if n_threads is None:
        yield
        return
    controller = _blas_controller(refresh)
    if controller is None:  # pragma: no cover - optional dependency
        yield
        return
    with controller.limit(limits=int(n_threads), user_api="blas"):
        yield


_controller = None


def _blas_controller(refresh: bool = False):
    """threadpoolctl's view of the thread pools loaded in this process (None without
    threadpoolctl), made once and reused: making it scans every loaded library, 2-3 ms in a
    process that has imported numbec, zarr and dask, which a call of :func:`blas_limit`
    per chunk would pay every time (7 % of the time of 5,000 water-dimer frames in chunks
    of 1,000, 2026-12-04). ``refresh``: scan again
    (:func:`numbec.predict` does at every call, so a BLAS library loaded since is limited
    too)."""
    global _controller
    if _controller is None or refresh:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - optional dependency
            return None
        _controller = ThreadpoolController()
    return _controller


#: Graph key prefixes of lazy numbec results -> BLAS threads their tasks want.
_LAZY_GRAPHS: dict[str, int] = {}
_lazy_callback = None


def limit_blas_for_graph(key_prefix: str, blas_threads) -> None:
    """Apply ``blas_limit(blas_threads)`` whenever a Dask graph holding keys that start
    with ``key_prefix`` is computed on a local scheduler (threads, processes, synchronous).

    OpenBLAS takes its thread count from the main thread only: a limit set inside a task on
    a pool thread does not hold. So a Dask callback sets it in the thread that calls
    ``compute`` (normally the main thread) for the duration of the computation, and only
    for graphs of numbec predictions. ``distributed`` workers get one BLAS thread from
    their environment (:data:`SINGLE_THREAD_ENV`, set by ``numbec predict --workers``).
    """
    global _lazy_callback
    if blas_threads is None:
        return
    from dask.callbacks import Callback

    _LAZY_GRAPHS[key_prefix] = int(blas_threads)
    if _lazy_callback is None:
        class _LazyBlasLimit(Callback):
            def __init__(self):
                super().__init__()
                self._active = []

            def _start(self, dsk):
                wanted = _wanted_blas_threads(dsk)
                stack = contextlib.ExitStack()
                if wanted is not None:
                    # in the computing thread; the BLAS libraries looked for again, as
                    # predict does at every call
                    stack.enter_context(blas_limit(wanted, refresh=True))
                self._active.append(stack)

            def _finish(self, dsk, state, errored):
                if self._active:
                    self._active.pop().close()

        _lazy_callback = _LazyBlasLimit()
    # registered again if it has gone: Dask swaps its global set of callbacks out during a
    # computation, so one registered inside a computation, or dropped by computations that
    # overlap in other threads, would otherwise stay missing for the rest of the process
    if _lazy_callback._callback not in Callback.active:
        _lazy_callback.register()


def _wanted_blas_threads(dsk):
    if not _LAZY_GRAPHS:
        return None
    for key in dsk:
        name = key[0] if isinstance(key, tuple) else key
        if isinstance(name, str) and name.startswith("numbec-"):
            for prefix, n in _LAZY_GRAPHS.items():
                if name.startswith(prefix):
                    return n
    return None


@contextlib.contextmanager
def chunk_task_threads(blas_threads):
    """The thread policy of one chunk task, on whatever scheduler runs it.

    BLAS on ``blas_threads`` threads (None: unchanged; this holds where the task runs in a
    main thread, and on pool threads when the main thread holds the limit as well: numbec's
    own executors and, for lazy results, :func:`limit_blas_for_graph`); and, outside the
    main thread of the main process (Dask worker threads and processes, ``distributed``
    workers), Numba kernels on one thread: the tasks themselves are the parallelism there.
    """
    with blas_limit(blas_threads):
        if in_main_thread():
            yield
        else:
            with numba_threads(1):
                yield


# ------------------------------------------------------------------------------ Dask
def distributed_client():
    """The active ``dask.distributed`` client, if any (and if Dask's configured scheduler
    does not say otherwise)."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover
        return None
    import dask

    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None
    try:
        return get_client()
    except ValueError:
        return None


def chunk_executor_kind(lazy_input: bool) -> tuple[str, int]:
    """How the chunks of an eager or ``out=`` run execute: ``(kind, workers)``.

    ``("distributed", 0)`` for a dask-backed input with an active ``distributed`` client;
    ``("threads", n)`` with
    Dask's threaded scheduler configured (``num_workers``, default all cores) or, for a
    dask-backed input with no scheduler configured, Dask's own default; otherwise
    ``("serial", 1)``: chunks one after another in this thread (frames of a chunk on
    :func:`frame_threads` threads). The ``processes`` scheduler runs as threads: the
    kernels release the GIL.
    """
    import dask

    if lazy_input and distributed_client() is not None:
        return "distributed", 0
    scheduler = dask.config.get("scheduler", None)
    if scheduler in ("sync", "synchronous", "single-threaded"):
        return "serial", 1
    if scheduler in ("threads", "threading", "processes", "multiprocessing") or (
            scheduler is None and lazy_input):
        workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
        return ("threads", int(workers)) if workers > 1 else ("serial", 1)
    return "serial", 1

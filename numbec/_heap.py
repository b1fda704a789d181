"""Keep freed batch memory in the process instead of handing it back page by page (glibc).

glibc gives the top of its heap back to the operating system whenever more than its trim
threshold is free there. The threshold starts at 128 KiB and only grows when a block that
glibc served by ``mmap`` is freed: it becomes twice that block's size (blocks up to 32 MiB).
A prediction of small frames allocates and frees some 10-20 MB of temporaries per batch. In a
process whose largest freed block was small -- a first ``predict`` on four frames, then the
whole trajectory -- the heap was trimmed after every batch and the next batch faulted the same
memory back in: 67 page faults per water-dimer frame with the combined model, 0.37 ms per
frame instead of 0.15. Whether a process is in that state depends on what it happened to
allocate before, so the same call ran 2.5x slower or not for no reason a user could see.

:func:`keep_freed_memory` allocates and frees one block of :data:`RAISE_TO_BYTES`, once per
process: glibc raises its thresholds exactly as a longer history of large arrays would have.
No allocator setting is changed (an explicit ``MALLOC_TRIM_THRESHOLD_`` or ``mallopt`` still
wins, since those turn the adjustment off), nothing stays allocated, and the pages of the
block are never touched. The process may keep up to twice the block's size of freed memory
for reuse. Other allocators ignore the block.

dask.distributed starts its worker processes with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
``distributed.nanny.pre-spawn-environ``), which pins the trim threshold at 64 KiB and, since
an explicit setting turns the adjustment off, the mmap threshold at 128 KiB: there the
combined model ran at 0.40-0.43 ms per water-dimer frame (79 page faults per frame) instead
of 0.13-0.17. :func:`numbec.parallel.dask_worker_settings` is the Dask configuration under
which a ``LocalCluster`` starts its workers with the thresholds this module gives a process
of its own; ``numbec predict --workers N`` uses it. glibc reads the variables when a process
starts, so they have to be in the environment the workers are spawned with, and a value
already in ``os.environ`` (set by hand, or left there by an earlier cluster of the same
process) takes precedence.
"""

from __future__ import annotations

import threading

import numpy as np

#: Size of the freed block: below glibc's 32 MiB bound on the blocks that raise the thresholds
#: (the block's size with glibc's header, rounded to pages, must not exceed it). The trim
#: threshold becomes 60 MiB, above a batch's temporaries.
RAISE_TO_BYTES = 30 * 2**20

#: glibc trim threshold (bytes) of the Dask workers numbec starts, with :data:`RAISE_TO_BYTES`
#: as their mmap threshold: the thresholds :func:`keep_freed_memory` gives a process of its own.
WORKER_TRIM_THRESHOLD = 2 * RAISE_TO_BYTES

_done = False
_lock = threading.Lock()


def keep_freed_memory() -> None:
    """Raise glibc's mmap threshold to :data:`RAISE_TO_BYTES` and its trim threshold to twice
    that (once per process)."""
    global _done
    if _done:
        return
    with _lock:
        if not _done:
            block = np.empty(RAISE_TO_BYTES, dtype=np.uint8)  # never written: no page is used
            del block
            _done = True


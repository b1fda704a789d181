"""Freed batch memory stays in the process (numbec._heap): no page faults per batch."""

import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numbec
from numbec import _heap
from numbec.models.baseline import SpeciesMeanModel

# A batch of temporaries like a prediction's: 20 arrays of 1 MiB, written, then freed; the
# page faults of the later rounds are counted in a fresh interpreter, whose allocator has
# freed nothing large yet (the state that made streaming 2.5x slower).
ROUNDS = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from numbec import _heap

    if sys.argv[1] == "keep":
        _heap.keep_freed_memory()

    def batch():
        arrays = [np.ones(2**17) for _ in range(20)]
        return sum(a[0] for a in arrays)

    batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        batch()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
""")


def faults_per_round(mode):
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the trim thresholds are glibc's")
def test_freed_batch_memory_is_reused_without_page_faults():
    # 20 MiB are 5,120 pages: without the raised threshold every round faults them in again
    assert faults_per_round("plain") > 2000
    assert faults_per_round("keep") < 100


def test_every_chunk_task_keeps_freed_memory(monkeypatch):
    from test_stream import make_trajectory

    calls = []
    monkeypatch.setattr(_heap, "_done", False)
    monkeypatch.setattr(_heap, "np", _RecordingNumpy(calls))
    ds = make_trajectory(n_frames=4)
    model = SpeciesMeanModel([1, 8], np.stack([0.4 * np.eye(3), -0.8 * np.eye(3)]))
    numbec.predict(model, ds, progress=False)
    numbec.predict(model, ds, progress=False)
    assert calls == [_heap.RAISE_TO_BYTES]  # once per process


class _RecordingNumpy:
    uint8 = np.uint8

    def __init__(self, calls):
        self.calls = calls

    def empty(self, size, dtype):
        self.calls.append(size)
        return np.empty(size, dtype)

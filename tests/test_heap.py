"""Freed batch memory stays in the process (numbec._heap): no page faults per batch."""

import os
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
    def faults_per_round():
        import resource

        import numpy as np

        def batch():
            arrays = [np.ones(2**17) for _ in range(20)]
            return sum(a[0] for a in arrays)

        batch()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            batch()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
""")
FRESH = textwrap.dedent("""
    import sys
    from numbec import _heap

    if sys.argv[1] == "keep":
        _heap.keep_freed_memory()
""") + ROUNDS + "print(faults_per_round())\n"


TRIM = "MALLOC_TRIM_THRESHOLD_"
glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the trim thresholds are glibc's")


def faults_per_round(mode, **malloc_env):
    # without the MALLOC_* variables of this process: dask.distributed writes its workers'
    # value into the os.environ of the process that starts a cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | malloc_env
    out = subprocess.run([sys.executable, "-c", FRESH, mode], capture_output=True, text=True,
                         check=True, env=env)
    return float(out.stdout.strip())


@glibc_only
def test_freed_batch_memory_is_reused_without_page_faults():
    # 20 MiB are 5,120 pages: without the raised threshold every round faults them in again
    assert faults_per_round("plain") > 2000
    assert faults_per_round("keep") < 100
    # an explicit setting wins (Dask's workers: 64 KiB)
    assert faults_per_round("keep", **{TRIM: "65536"}) > 2000


@pytest.fixture
def no_trim_setting():
    """No MALLOC_TRIM/MMAP_THRESHOLD_ in os.environ during the test, none left behind."""
    keys = (TRIM, "MALLOC_MMAP_THRESHOLD_")
    saved = {key: os.environ.pop(key) for key in keys if key in os.environ}
    yield
    for key in keys:
        os.environ.pop(key, None)
    os.environ.update(saved)


@glibc_only
def test_cli_cluster_workers_keep_freed_memory(no_trim_setting):
    """``numbec predict --workers 2`` spawns workers whose freed batch memory stays (Dask's
    default, 64 KiB, gives it back after every batch)."""
    pytest.importorskip("distributed")
    from distributed import get_client

    from numbec.cli.predict import _scheduler

    def rounds():
        code = {}
        exec(ROUNDS, code)
        return os.environ.get(TRIM), code["faults_per_round"]()

    with _scheduler(2, False):
        got = list(get_client().run(rounds).values())
    assert len(got) == 2
    for setting, faults in got:
        assert setting == str(_heap.WORKER_TRIM_THRESHOLD)
        assert faults < 100


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

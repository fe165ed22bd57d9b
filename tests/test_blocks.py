"""Row blocks of the native kernels (sophia/graph/engines/blocks.py): how rows split, and
that every block runs, in parallel threads, with errors passed on."""
import os
import signal
import threading

import pytest

from sophia.graph.engines import blocks


def test_blocks_cover_the_rows_in_order_with_near_equal_sizes():
    spans = blocks.split(10, blocks.MIN_BLOCK_ELEMENTS, workers=3)
    assert spans == [(0, 3), (3, 6), (6, 10)]
    assert blocks.split(2, blocks.MIN_BLOCK_ELEMENTS, workers=8) == [(0, 1), (1, 2)]     # no empty block


def test_small_work_stays_in_one_block():
    assert blocks.split(64, 16, workers=4) == [(0, 64)]                          # 1024 values
    assert len(blocks.split(8192, 1024, workers=4)) == 4
    assert blocks.split(0, 16, workers=4) == [(0, 0)]


def test_the_thread_limit_follows_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert blocks.cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert blocks.cores() >= 1


def test_every_block_runs_once_and_the_blocks_run_side_by_side():
    spans = blocks.split(9, blocks.MIN_BLOCK_ELEMENTS, workers=3)
    barrier = threading.Barrier(3, timeout=10)        # breaks unless all three run at once
    seen = {}

    def call(k, start, stop):
        barrier.wait()
        seen[k] = (start, stop, threading.get_ident())
    blocks.run(call, spans)
    assert [seen[k][:2] for k in range(3)] == spans
    assert len({ident for *_, ident in seen.values()}) == 3


def test_an_error_in_a_block_is_raised_after_all_blocks_finish():
    done = []

    def call(k, start, stop):
        if k == 1:
            raise ValueError("block 1 failed")
        done.append(k)
    with pytest.raises(ValueError, match="block 1 failed"):
        blocks.run(call, blocks.split(3, blocks.MIN_BLOCK_ELEMENTS, workers=3))
    assert sorted(done) == [0, 2]


def test_a_forked_child_runs_blocks_on_its_own_threads():

    blocks.run(lambda k, start, stop: None, blocks.split(2, blocks.MIN_BLOCK_ELEMENTS, workers=2))  # parent's pool
    pid = os.fork()
    if pid == 0:                                         # the child: exit 0 only if both blocks ran
        signal.alarm(20)                                 # a pool without threads would wait for ever
        ran = []
        try:
            blocks.run(lambda k, start, stop: ran.append(k), blocks.split(2, blocks.MIN_BLOCK_ELEMENTS, workers=2))
        finally:
            os._exit(0 if sorted(ran) == [0, 1] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_blocks_that_call_blas_run_it_on_the_threads_they_ask_for():
    """``blas_threads``: while the blocks run, each BLAS library loaded runs a call on at
    most that many threads; on return its own setting is back."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})

    before, seen = blas_threads(), []
    blocks.run(lambda k, start, stop: seen.append(blas_threads()), [(0, 1), (1, 2)], blas_threads=1)
    assert seen == [[1], [1]]
    assert blas_threads() == before

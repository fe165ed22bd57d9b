"""Row blocks of a native kernel, run side by side on the process's cores.

The norm and clock kernels outside the fused recurrences
(:mod:`~sophia.graph.engines.fused_norm`, :mod:`~sophia.graph.engines.fused_clock`)
treat their rows one at a time (layer norm, the clock's openness) or their frames one
at a time (batch norm over each frame's batch): a window's T·B rows split into blocks
that share nothing but the sums of the gradients' accumulators. :func:`run` calls a
kernel on each block, one block in the calling thread and the others in a pool; the
kernels are native code that holds no GIL (``ctypes`` releases it), so the blocks run
in parallel. A gradient's float64 accumulators get one row per block
(an array [blocks][width]), summed in block order once the blocks are done: no two
threads write the same memory, and the sums are the same from run to run on a machine.

How many blocks: one per core this process may run on (its affinity), at most
``OMP_NUM_THREADS`` where that is set (oneDNN's threads follow the same variable), and
no more than leaves each block :data:`MIN_BLOCK_ELEMENTS` values: below that a thread's
hand-off costs more than it saves. ``bench/train_speed.py --option_sets`` measures the
effect on the layer-norm, batch-norm and clock option sets; figures in ``bench/README.md``.

Example
-------
>>> import numpy as np
>>> out = np.zeros(8)
>>> def fill(k, start, stop):
...     out[start:stop] = k
>>> spans = split(8, MIN_BLOCK_ELEMENTS, workers=2)
>>> spans
[(0, 4), (4, 8)]
>>> run(fill, spans)
>>> out.tolist()
[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os

MIN_BLOCK_ELEMENTS = 1 << 15     # values a block must hold to be worth a thread


def available() -> int:
    """The cores this process may run on (its affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cores() -> int:
    """The threads a kernel may use: :func:`available`, at most ``OMP_NUM_THREADS``
    where that is set to a positive integer."""
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(available(), int(limit))) if limit.isdigit() and int(limit) > 0 else available()


def split(rows: int, width: int, workers: int | None = None) -> list:
    """The blocks ``[(start, stop), …]`` of ``range(rows)`` for rows of ``width``
    values: contiguous, in order, of near-equal size; one per worker (default
    :func:`cores`) at most, each of at least :data:`MIN_BLOCK_ELEMENTS` values
    (one block where the rows hold fewer)."""
    workers = cores() if workers is None else workers
    n = max(1, min(workers, rows, rows * max(width, 1) // MIN_BLOCK_ELEMENTS))
    bounds = [rows * k // n for k in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


@functools.cache
def _pool(threads: int, pid: int) -> concurrent.futures.ThreadPoolExecutor:
    """The pool of ``threads`` threads of process ``pid`` (a forked child, whose copy of
    its parent's pool has no threads, gets its own)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sophia-kernel")


def run(call, spans, blas_threads: int | None = None) -> None:
    """Call ``call(k, start, stop)`` for each block k of ``spans`` (:func:`split`),
    block 0 in this thread and the others in a thread pool, and wait for all. An
    exception in a block is raised here, after every block has finished.

    ``blas_threads``: where the blocks call BLAS (numpy's ``dot``), the threads each
    call may use while they run side by side (threadpoolctl's limit on the BLAS
    libraries this process has loaded, restored on return); None leaves BLAS as it is.
    Blocks that each asked for every core would share them several times over."""
    if len(spans) == 1:
        call(0, *spans[0])
        return
    with _blas_limit(blas_threads):
        futures = [_pool(len(spans) - 1, os.getpid()).submit(call, k, *span) for k, span in enumerate(spans) if k]
        try:
            call(0, *spans[0])
        finally:
            concurrent.futures.wait(futures)
    for future in futures:
        future.result()


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the BLAS libraries loaded (numpy's, at the least): found once."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def _blas_limit(threads: int | None):
    """A context in which each BLAS call uses at most ``threads`` threads (None: no limit)."""
    return contextlib.nullcontext() if threads is None else _blas_controller().limit(limits=threads)

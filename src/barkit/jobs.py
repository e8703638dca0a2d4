"""Independent jobs (experts, evaluations) run side by side, each in its own process.

A job scheduler for runs that share nothing until their results are combined, like
``make -j``; training one model on several devices goes through accelerate instead. Each
process gets an equal share of the CPU's threads (two torch processes on two cores must each
use one thread, or a step runs many times slower).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def auto_jobs(n: int) -> int:
    """As many jobs at once as there are CPU cores, at most ``n``."""
    return max(1, min(n, os.cpu_count() or 1))


def threads_per_job(jobs: int) -> int:
    """Each of ``jobs`` processes' equal share of the CPU's threads (at least one)."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_at_once(fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], jobs: int, *, desc: str) -> list[T]:
    """``[fn(*args) for args in calls]``, ``jobs`` calls at a time in spawned processes.

    ``fn`` must be importable (a module-level function). Results come back in the order of
    ``calls``. When a call raises, the others still run to their end (each keeps what it
    wrote), then the first error in ``calls`` order is raised.
    """
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    jobs = max(1, min(jobs, len(calls)))
    threads = threads_per_job(jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures: list[Future[T]] = [pool.submit(fn, *args) for args in calls]
        for _ in tqdm(as_completed(futures), total=len(futures), desc=desc):
            pass
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
    return [future.result() for future in futures]

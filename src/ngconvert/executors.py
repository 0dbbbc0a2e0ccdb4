"""Executors run the same picklable tasks serially, on a local process pool, or elsewhere.

An executor's ``run(fn, items)`` yields ``(item, result)`` as tasks finish.  ``fn`` must
be a module-level function; per-run context (the store and plan) is installed once per
worker by :meth:`bind`, not sent with every task.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait

_CONTEXT: dict = {}


def _install(context: dict) -> None:
    _CONTEXT.clear()
    _CONTEXT.update(context)


def context() -> dict:
    return _CONTEXT


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class SerialExecutor:
    workers = 1

    def run(self, fn, items, context: dict):
        _install(context)
        for item in items:
            yield item, fn(item)


class _PoolExecutor:
    workers: int

    def _pool(self, context: dict):
        raise NotImplementedError

    def run(self, fn, items, context: dict):
        items = list(items)
        if not items:
            return
        with self._pool(context) as pool:
            pending = {}
            it = iter(items)
            # keep a bounded number in flight so a huge plan is not all queued at once
            for item in it:
                pending[pool.submit(fn, item)] = item
                if len(pending) >= 4 * self.workers:
                    break
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        item = pending.pop(fut)
                        yield item, fut.result()
                        nxt = next(it, None)
                        if nxt is not None:
                            pending[pool.submit(fn, nxt)] = nxt
            finally:
                for fut in pending:
                    fut.cancel()


class ProcessExecutor(_PoolExecutor):
    """A pool of local worker processes (fork where the platform has it)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or default_workers()

    def _pool(self, context):
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        return ProcessPoolExecutor(self.workers, mp_context=mp.get_context(method),
                                   initializer=_install, initargs=(context,))


class ThreadExecutor(_PoolExecutor):
    """A pool of threads in this process (for sources that cannot leave it)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or default_workers()

    def _pool(self, context):
        _install(context)
        return ThreadPoolExecutor(self.workers)


def make_executor(workers: int | None):
    workers = workers or default_workers()
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)

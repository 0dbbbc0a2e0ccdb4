"""Executors run the same picklable tasks serially, on a local process pool, or on Dask.

An executor's ``run(fn, items, context)`` calls ``fn(context, item)`` for every item and
yields ``(item, result)`` as tasks finish.  ``fn`` must be a module-level function; the
per-run context (the store and plan) is sent once per worker, not with every task: a process
worker gets it from the pool's initializer, a Dask worker as the future scattered once.

Failures: a task that raises is tried again (``task_retries`` times, except for
:class:`UserError`, which names bad input and would fail again); the other tasks go on; when
every task has been tried, :class:`TasksFailed` names the failed tasks and the last error of
the first.  Finished tasks keep their done markers, so ``--resume`` redoes only the rest.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from ..core.errors import UserError
# dask, distributed: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)

TASK_RETRIES = 2


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def task_name(item) -> str:
    name = getattr(item, "name", None)
    return name if isinstance(name, str) else repr(item)


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if not isinstance(e, UserError) else text


class TasksFailed(UserError):
    def __init__(self, failures: list[tuple[object, BaseException]]):
        self.failures = failures
        item, err = failures[0]
        more = f" (and {len(failures) - 1} more task(s))" if len(failures) > 1 else ""
        super().__init__(f"task {task_name(item)} failed: {_one_line(err)}{more}; finished tasks are kept: fix "
                         "the cause and run the same command with --resume")


class _Tracker:
    """Retries and failures, shared by every executor."""

    def __init__(self, retries: int):
        self.retries = retries
        self.attempts: dict[int, int] = {}
        self.failures: list[tuple[object, BaseException]] = []

    def again(self, item, err: BaseException) -> bool:
        """True when the item should be tried again; else it is recorded as failed."""
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise err
        n = self.attempts.get(id(item), 0) + 1
        self.attempts[id(item)] = n
        if not isinstance(err, UserError) and n <= self.retries:
            return True
        self.failures.append((item, err))
        return False

    def finish(self) -> None:
        if self.failures:
            raise TasksFailed(self.failures)


class SerialExecutor:
    workers = 1
    task_retries = TASK_RETRIES

    def run(self, fn, items, context):
        track = _Tracker(self.task_retries)
        for item in items:
            while True:
                try:
                    result = fn(context, item)
                except Exception as e:       # every task error is collected, see the module docstring
                    if track.again(item, e):
                        continue
                    break
                yield item, result
                break
        track.finish()

    def close(self) -> None:
        pass


class _PoolExecutor:
    workers: int
    task_retries = TASK_RETRIES

    def _pool(self, context):
        raise NotImplementedError

    def _submit(self, pool, fn, context, item):
        return pool.submit(fn, context, item)

    def run(self, fn, items, context):
        items = list(items)
        if not items:
            return
        track = _Tracker(self.task_retries)
        interrupted = False
        with self._pool(context) as pool:
            pending = {}
            it = iter(items)
            # keep a bounded number in flight so a huge plan is not all queued at once
            for item in it:
                pending[self._submit(pool, fn, context, item)] = item
                if len(pending) >= 4 * self.workers:
                    break
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        item = pending.pop(fut)
                        try:
                            result = fut.result()
                        except BrokenProcessPool:
                            raise UserError("a worker process died (killed, or out of memory?); finished "
                                            "tasks are kept: run the same command with --resume (with "
                                            "fewer --workers if memory ran out)") \
                                from None
                        except Exception as e:     # collected; see the module docstring
                            if track.again(item, e):
                                pending[self._submit(pool, fn, context, item)] = item
                                continue
                        else:
                            yield item, result
                        nxt = next(it, None)
                        if nxt is not None:
                            pending[self._submit(pool, fn, context, nxt)] = nxt
            except BaseException:
                # Ctrl-C or SIGTERM (or a failure of this loop): end the workers now rather than
                # wait for their tasks (finished tasks keep their done markers).  Futures are not
                # cancelled here: the pool marks them itself when it sees its workers gone (a
                # cancel racing with that makes its manager thread fail with a traceback).
                interrupted = True
                _terminate_workers(pool)
                raise
            finally:
                if not interrupted:
                    for fut in pending:
                        fut.cancel()
        track.finish()

    def close(self) -> None:
        pass


def _terminate_workers(pool) -> None:
    processes = getattr(pool, "_processes", None) or {}
    for proc in list(processes.values()):
        try:
            proc.terminate()
        except (OSError, AttributeError, ValueError):
            pass
    if hasattr(pool, "shutdown"):
        pool.shutdown(wait=False)


def _die_with_parent() -> None:
    """Linux: ask the kernel to kill this worker when the process that started it dies, so a
    ``kill -9`` of a run leaves no orphaned workers behind."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass                      # not Linux: workers end when their pipe to the parent closes


# a process worker's context: set once by the pool's initializer, read only by _in_worker
_WORKER_CONTEXT: list = []


def _worker_init(context, parent: int) -> None:
    import signal

    _die_with_parent()
    # Ctrl-C reaches the whole process group: the parent handles it and ends the workers;
    # SIGTERM (from the parent ending them) ends a worker at once, without a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if os.getppid() != parent:    # the parent died before the request was made
        os._exit(1)
    _WORKER_CONTEXT[:] = [context]


def _in_worker(fn, item):
    """Runs in a process worker: the task with the context the initializer stored."""
    return fn(_WORKER_CONTEXT[0], item)


class ProcessExecutor(_PoolExecutor):
    """A pool of local worker processes (fork where the platform has it)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or default_workers()

    def _pool(self, context):
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        return ProcessPoolExecutor(self.workers, mp_context=mp.get_context(method),
                                   initializer=_worker_init, initargs=(context, os.getpid()))

    def _submit(self, pool, fn, context, item):
        return pool.submit(_in_worker, fn, item)       # the context is in the worker already


class ThreadExecutor(_PoolExecutor):
    """A pool of threads in this process (for sources that cannot leave it)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or default_workers()

    def _pool(self, context):
        return ThreadPoolExecutor(self.workers)


class DaskExecutor:
    """Tasks on a ``dask.distributed`` cluster.  Tasks are small picklable descriptions; the
    run's context (store and plan) is scattered to every worker once and passed to each task
    as that future (Dask hands the task the value).  A worker that dies
    mid-task is survived: the scheduler runs its tasks elsewhere (tasks are idempotent)."""

    is_dask = True

    def __init__(self, client, owns_cluster: bool = False, task_retries: int = TASK_RETRIES):
        self.client = client
        self.owns_cluster = owns_cluster
        self.task_retries = task_retries

    @property
    def workers(self) -> int:
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:        # a scheduler that cannot be asked: plan for one worker
            return 1

    @property
    def dashboard(self) -> str | None:
        try:
            return self.client.dashboard_link
        except Exception:        # no dashboard (bokeh missing)
            return None

    def run(self, fn, items, context):
        from distributed import as_completed

        items = list(items)
        if not items:
            return
        track = _Tracker(self.task_retries)
        [ctx] = self.client.scatter([context], broadcast=True, hash=False)
        limit = max(8, 4 * self.workers)
        it = iter(items)
        owner = {}

        def submit(item):
            fut = self.client.submit(fn, ctx, item, pure=False,
                                     key=f"ngconvert-{task_name(item)}-{uuid.uuid4().hex[:8]}")
            owner[fut.key] = item
            return fut

        first = [submit(item) for _, item in zip(range(limit), it)]
        ac = as_completed(first)
        try:
            for fut in ac:
                item = owner.pop(fut.key)
                if fut.status == "error":
                    err = fut.exception()
                    if track.again(item, err):
                        ac.add(submit(item))
                        continue
                else:
                    yield item, fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    ac.add(submit(nxt))
        finally:
            ac.clear()
        track.finish()

    def close(self) -> None:
        if self.owns_cluster:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()


def make_executor(workers: int | None, executor=None):
    """The executor for a run: ``executor`` when given (ours, or a ``dask.distributed.Client``),
    else serial for one worker and a local process pool otherwise."""
    if executor is not None:
        return as_executor(executor)
    workers = workers or default_workers()
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)


def as_executor(executor):
    if hasattr(executor, "run") and hasattr(executor, "workers"):
        return executor
    if type(executor).__name__ == "Client" and hasattr(executor, "submit"):
        return DaskExecutor(executor)
    raise UserError(f"executor {executor!r} is not an executor or a dask.distributed.Client")


def dask_executor(scheduler: str | None = None, workers: int | None = None, quiet: bool = False):
    """A Dask executor for ``--scheduler ADDRESS`` or ``--dask-workers N`` (a local cluster of
    worker processes, one thread each); prints the dashboard link."""
    import sys

    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError("Dask is not installed: pip install 'dask[distributed]'") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as e:
            raise UserError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({e}); check the "
                            "address and that it is running") from None
        ex = DaskExecutor(client, owns_cluster=False)
    else:
        if workers is not None and workers < 1:
            raise UserError(f"--dask-workers {workers}: give 1 or more")
        import dask

        # the workers' statistical profiler samples the task thread every 10 ms, holding the
        # GIL: about 20% of the run time on this kind of work (measured), so it is off
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1, processes=True,
                                   dashboard_address="127.0.0.1:0", silence_logs=40)
        ex = DaskExecutor(Client(cluster), owns_cluster=True)
    if not quiet:
        link = ex.dashboard
        print(f"ngconvert: Dask cluster with {ex.workers} worker thread(s)"
              + (f"; dashboard: {link}" if link else ""), file=sys.stderr)
    return ex


def check_worker_counts(workers=None, dask_workers=None) -> None:
    """``--workers``/``--dask-workers`` must be 1 or more (``None``: the default)."""
    for flag, n in (("--workers", workers), ("--dask-workers", dask_workers)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise UserError(f"{flag} {n}: give 1 or more worker processes")


class ExecutorScope:
    """``with ExecutorScope(workers, executor, scheduler, dask_workers) as ex``: the executor a
    command asked for, closed (a local Dask cluster shut down) at the end."""

    def __init__(self, workers: int | None = None, executor=None, scheduler: str | None = None,
                 dask_workers: int | None = None, quiet: bool = False):
        check_worker_counts(workers, dask_workers)
        self.args = (workers, executor, scheduler, dask_workers, quiet)
        self.ex = None

    def __enter__(self):
        workers, executor, scheduler, dask_workers, quiet = self.args
        if executor is None and (scheduler or dask_workers):
            self.ex = dask_executor(scheduler, dask_workers, quiet)
        else:
            self.ex = make_executor(workers, executor)
        return self.ex

    def __exit__(self, *exc):
        if self.ex is not None and self.args[1] is None:
            self.ex.close()

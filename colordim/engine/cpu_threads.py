"""Both cores (or as many as torch uses) for a big CPU output: its rows split into parts, one per thread,
where torch's own threads leave the cores free.

A hook runs on the thread that runs the model, between torch's ops. For an output of a few hundred
thousand values and more, the compiled kernel's pass (about 0.7 ns a value on one core) is worth
splitting: each part runs the same kernel, releasing the GIL, on a thread of this small pool, and the
caller adds the parts up (`colordim.engine.cpu_kernel.run_exact_part`, `merge_parts`). Measured on 2 cores, alone:
1 M values 1012 -> 516 us; at 100 k values handing a part over costs what it saves, so plans split only
from `cpu_kernel.PARALLEL_FROM` values on.

But torch's OpenMP threads spin for milliseconds after each op, by default: in a training step the
other cores are taken when a hook runs, and a split call waits for its parts (resnet18, 2 cores: 28 ms
a step in the hooks, 30 split). Told to wait passively (`OMP_WAIT_POLICY=passive`), they leave the
cores free, and the same step spends 18 ms split. So calls split only where torch's threads sleep:
OpenMP told so (`OMP_WAIT_POLICY=passive`, `GOMP_SPINCOUNT=0`, `KMP_BLOCKTIME=0`) or torch built
without OpenMP (`passive()`).

What keeps it safe:
- one split call at a time in the process (a lock), so parts never share scratch with another call;
  calls that do not split keep the GIL as before;
- never more threads than `torch.get_num_threads()`: a user who gave torch one thread gets one here;
- a forked child (a DataLoader worker, multiprocessing) starts with no helpers and a free lock;
- an error in a helper's part is raised in the caller, after every part has finished.
"""
from __future__ import annotations

import os
import threading

__all__ = ["run", "threads", "passive"]

PASSIVE = None  # whether torch's threads sleep between ops: None, worked out from the environment (tests set it)


class _Helper:
    "One daemon thread that runs a task when handed one, and says when it is done."
    def __init__(self):
        self.start, self.done = threading.Lock(), threading.Lock()
        self.start.acquire()
        self.done.acquire()
        self.task, self.error, self.result = None, None, None
        threading.Thread(target=self._loop, name="colordim-part", daemon=True).start()

    def _loop(self):
        while True:
            self.start.acquire()
            function, arguments = self.task
            try:
                self.result = function(*arguments)
            except BaseException as error:  # noqa: BLE001 - handed to the caller, raised there
                self.error = error
            self.task = None
            self.done.release()

    def hand(self, function, arguments) -> None:
        self.task, self.error = (function, arguments), None
        self.start.release()

    def wait(self):
        "Wait for the task; (what it returned, the error it raised or None)."
        self.done.acquire()
        return self.result, self.error


class _Pool:
    def __init__(self):
        self.lock, self.helpers = threading.Lock(), []


_pool = _Pool()


def _after_fork_in_child() -> None:
    "A forked child has none of the parent's threads: no helpers, and a lock nobody holds."
    global _pool
    _pool = _Pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def passive() -> bool:
    """Whether torch's threads sleep between ops, leaving the cores to a split call: OpenMP told to wait
    passively before torch loaded it (these are read once, at its start), or no OpenMP in torch."""
    if PASSIVE is not None:
        return PASSIVE
    import torch
    if not torch.backends.openmp.is_available():
        return True  # torch's own thread pool waits on a condition variable
    environ = os.environ
    return environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive" \
        or environ.get("GOMP_SPINCOUNT", "").strip() == "0" or environ.get("KMP_BLOCKTIME", "").strip() == "0"


def threads() -> int:
    "How many threads a split call may use: torch's intra-op thread count where they sleep between ops, else 1."
    import torch
    return max(1, torch.get_num_threads()) if passive() else 1


def run(tasks) -> list:
    """Run `tasks` ([(function, arguments)]: compiled calls that release the GIL) at once: the first on this
    thread, each other on a helper; when all are done, what each returned, or the first error raised."""
    pool = _pool
    with pool.lock:
        while len(pool.helpers) < len(tasks) - 1:
            pool.helpers.append(_Helper())
        handed = []
        try:
            for helper, (function, arguments) in zip(pool.helpers, tasks[1:]):
                helper.hand(function, arguments)
                handed.append(helper)
            function, arguments = tasks[0]
            first = function(*arguments)
        finally:
            ends = [helper.wait() for helper in handed]  # every part ends before its scratch is reused
        for _, error in ends:
            if error is not None:
                raise error
        return [first, *(result for result, _ in ends)]

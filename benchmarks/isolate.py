"""Run one benchmark measurement in a fresh spawned process, so peak memory (CUDA max allocated,
or the rise in peak RSS on CPU) belongs to that measurement alone."""
from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import sys


def run_isolated(measure, *args) -> dict:
    """Call ``measure(*args, queue)`` in a spawned process; returns the dict it puts on the queue.

    A child that dies without a result (an import error, out of memory) raises here instead of
    leaving the parent waiting. Each result is also printed to stderr as it arrives, so a
    time-boxed run (benchmarks/gpu_check.sh) keeps the rows it measured."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=measure, args=(*args, results))
    proc.start()
    while True:
        try:
            result = results.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive() and results.empty():
                raise RuntimeError(f"{getattr(measure, '__name__', measure)}{args} exited with code "
                                   f"{proc.exitcode} before reporting (its traceback is above)") from None
    proc.join()
    print(f"measured {result}", file=sys.stderr, flush=True)
    return result

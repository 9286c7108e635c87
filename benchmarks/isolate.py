"""Run one benchmark measurement in a fresh spawned process, so peak memory (CUDA max allocated,
or the rise in peak RSS on CPU) belongs to that measurement alone."""
from __future__ import annotations

import multiprocessing as mp


def run_isolated(measure, *args) -> dict:
    """Call ``measure(*args, queue)`` in a spawned process; returns the dict it puts on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result

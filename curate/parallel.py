"""The one small Ray-glue module of the library: a parallel map that uses Ray tasks when Ray is up."""
from __future__ import annotations

from typing import Callable, Iterable


def parallel_map(fn: Callable, items: Iterable, num_cpus: float = 1, max_in_flight: int | None = None,
                 on_result: Callable | None = None, spread: bool = False) -> list:
    """[fn(x) for x in items], run as Ray tasks when ray.is_initialized(), else in this process.

    Results come back in input order. max_in_flight bounds submitted-but-unfinished tasks (memory);
    on_result(index, result) is called as each finishes (progress). spread=True asks Ray to place
    tasks across nodes (network-bound work such as downloads gains from every node's bandwidth).
    """
    items = list(items)
    try:
        import ray
        use_ray = ray.is_initialized()
    except ImportError:
        use_ray = False
    if not use_ray:
        out = []
        for i, x in enumerate(items):
            out.append(fn(x))
            if on_result:
                on_result(i, out[-1])
        return out
    opts = {"scheduling_strategy": "SPREAD"} if spread else {}
    remote = ray.remote(num_cpus=num_cpus, max_retries=3, **opts)(fn)  # retries survive a killed worker
    limit = max_in_flight or max(2, 2 * int(ray.available_resources().get("CPU", 2)))
    results: list = [None] * len(items)
    pending: dict = {}
    nxt = 0
    while nxt < len(items) or pending:
        while nxt < len(items) and len(pending) < limit:
            pending[remote.remote(items[nxt])] = nxt
            nxt += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            results[i] = ray.get(ref)
            if on_result:
                on_result(i, results[i])
    return results

"""Results in order, with the work for the next ones done ahead on threads.

The streaming loops of ndfs read (or make) the next piece while the caller uses
the one it has: an export writes a slab as the next is read, a label scan
counts a piece as the next is read, the demo writes a slab as the next ones
are painted. :func:`in_order` is that loop, with a bounded number of pieces
ahead, so memory stays at a few pieces whatever the size.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def in_order(fn: Callable[[T], R], items: Iterable[T], ahead: int = 1,
             name: str = "ndfs-ahead") -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` for each of ``items``, in their order, with up to ``ahead`` calls running on
    threads while the caller holds the pair yielded last. An error of a call is raised when its pair is
    due; closing the generator early waits for the calls already running."""
    items = iter(items)
    ahead = max(1, int(ahead))
    with ThreadPoolExecutor(ahead, thread_name_prefix=name) as pool:
        window = deque((item, pool.submit(fn, item)) for item in islice(items, ahead))
        while window:
            item, future = window.popleft()
            result = future.result()
            for nxt in islice(items, 1):
                window.append((nxt, pool.submit(fn, nxt)))
            yield item, result

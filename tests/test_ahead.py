"""ndfs.core.ahead.in_order: the streaming loops' read-ahead (export, import, label scans, the demo)."""

import threading
import time

import pytest

from ndfs.core.ahead import in_order


@pytest.mark.parametrize("ahead", [1, 3])
def test_results_come_in_order_with_at_most_ahead_calls_past_the_one_held(ahead):
    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.01 * ((i * 7) % 5))  # later items often finish first
        return i * i

    got = []
    for i, square in in_order(work, range(12), ahead=ahead):
        time.sleep(0.02)  # the caller is slower than the calls: the window fills
        with lock:
            assert max(started) <= i + ahead  # never more than `ahead` items past the one held
        got.append((i, square))
    assert got == [(i, i * i) for i in range(12)]


def test_an_error_is_raised_when_its_item_is_due_and_nothing_after_it_is_yielded():
    def work(i):
        if i == 2:
            raise ValueError("item 2")
        return i

    seen = []
    with pytest.raises(ValueError, match="item 2"):
        for i, _ in in_order(work, range(6), ahead=2):
            seen.append(i)
    assert seen == [0, 1]

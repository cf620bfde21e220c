"""Read ahead in a background thread, bounded in bytes: checkpoint I/O overlaps the SVDs without holding more
than a set amount of matrices in memory."""

import queue
import threading


class _ByteBudget:
    """Lets a reader thread run at most `limit` bytes ahead of the consumer (one item always fits)."""

    def __init__(self, limit: int):
        self.limit, self.used, self.cv = limit, 0, threading.Condition()

    def take(self, n: int, stop: threading.Event) -> bool:
        with self.cv:
            while self.used and self.used + n > self.limit:
                if stop.is_set():
                    return False
                self.cv.wait(0.1)
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self.cv:
            self.used -= n
            self.cv.notify_all()


def prefetch(items, max_bytes: int):
    """Iterate `items` (tuples whose last element may be an ndarray) in a background thread, bounded in bytes."""
    q: queue.Queue = queue.Queue()
    budget, stop = _ByteBudget(max_bytes), threading.Event()

    def produce():
        try:
            for item in items:
                n = getattr(item[-1], "nbytes", 0)
                if not budget.take(n, stop):
                    return
                q.put((item, n))
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put((e, 0))
        q.put((None, 0))

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            item, n = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            budget.give(n)
    finally:
        stop.set()

"""Pipeline stages on threads of their own, joined by bounded queues (decode | process | encode)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Stopped(Exception):
    """The consumer went away; the producer thread ends quietly."""


class Stage:
    """One pipeline stage in its own thread, joined by bounded queues.

    A producer stage (``produce``) calls ``put`` for each item and is iterated by the caller;
    a consumer stage (``sink``) takes items given with ``put`` and sums what ``sink`` returns.
    An exception in the thread is re-raised in the caller.
    """

    _DONE = object()

    def __init__(self, name: str, produce: Callable | None, sink: Callable | None = None, depth: int = 8) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._sink = sink
        self._total = 0
        target = self._run_producer if produce is not None else self._run_consumer
        self._thread = threading.Thread(target=target, args=(produce,) if produce else (), name=name, daemon=True)
        self._thread.start()

    # producer side -------------------------------------------------------------------
    def _run_producer(self, produce: Callable) -> None:
        try:
            produce(self._offer)
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc
        finally:
            self._offer(self._DONE, force=True)

    def _offer(self, item, force: bool = False) -> None:
        while not self._stopped.is_set() or force:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if force and self._stopped.is_set():
                    return
        raise Stopped

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._DONE:
                if self._error is not None and not isinstance(self._error, Stopped):
                    raise self._error
                return
            yield item

    def stop(self) -> None:
        self._stopped.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()

    # consumer side -------------------------------------------------------------------
    def _run_consumer(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if self._error is None:
                try:
                    self._total += self._sink(item)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._error = exc

    def put(self, item) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def finish(self) -> int:
        self._queue.put(self._DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._total

"""Overlap reading, scoring and writing of a streamed prediction: a read-ahead thread and a writing thread.

Reading a chunk (Parquet decoding, CSV parsing) and writing one (Parquet encoding) run mostly in
native code that releases the GIL, so on two cores they proceed while the main thread prepares
and scores the chunk in between. Order is kept, at most ``depth`` chunks wait in between (memory
stays bounded by a few chunks) and an error in either thread is raised in the caller, as it would
have been without the threads.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"


class ReadAhead(Generic[T]):
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the consumer.

    Use as a context manager (or call :meth:`close`), so that the thread stops when the consumer
    stops early.

    Parameters
    ----------
    items : iterable
        What to iterate (e.g. the chunks of :func:`grasp_dl.data.catalog.iter_catalog`); it is
        advanced only in the background thread.
    depth : int
        Items read but not yet taken, at most.

    Raises
    ------
    ValueError
        When ``depth`` is below 1.
    """

    def __init__(self, items: Iterable[T], depth: int = 1) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(items,), name="grasp-dl-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, message: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterable[T]) -> None:
        try:
            for item in items:
                if not self._put((_ITEM, item)):
                    return
            self._put((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((_ERROR, exc))

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == _ITEM:
            return value
        self._done = True
        self._thread.join()
        if kind == _ERROR:
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the background thread and drop what it read ahead."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._done = True

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class WriteBehind:
    """Run ``write(item)`` calls one at a time in a background thread, in order, one call behind the caller.

    :meth:`write` returns once the previous call has finished (so at most two items are held);
    its error, if any, is raised there. Leaving the ``with`` block waits for the last call.

    Parameters
    ----------
    write : callable
        Called with each item, in order (e.g. :meth:`grasp_dl.data.catalog.CatalogChunkWriter.write`).
    """

    def __init__(self, write: Callable[[Any], Any]) -> None:
        self._write = write
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grasp-dl-write-behind")
        self._pending: Future[Any] | None = None

    def write(self, item: Any) -> None:
        """Wait for the previous write, then start writing ``item``.

        Parameters
        ----------
        item : object
            Handed to the write function.
        """
        self.wait()
        self._pending = self._pool.submit(self._write, item)

    def wait(self) -> None:
        """Wait for the write in progress, raising its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the last write and stop the thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing: let the write in progress end, but raise the first error, not its.
        try:
            self.close()
        except Exception:
            pass


@contextlib.contextmanager
def single_scoring_thread(device: torch.device) -> Iterator[None]:
    """Within it, torch scores on one CPU thread when ``device`` is the CPU (restored after).

    The network is small: a second intra-op thread barely shortens a chunk's forward pass but
    spins on the core that the reading and writing threads need.

    Parameters
    ----------
    device : torch.device
        Where the module's weights are; on a GPU nothing changes.
    """
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
